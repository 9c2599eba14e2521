//! `ProcIndex::scan` on a node-sized process table: 10,000 processes, 250 pods with 3 containers
//! each, cgroup v1 hybrid files (one line per controller, the longest realistic case). The tree is
//! a fake /proc in a temp dir (regular files, so this measures loupe's own cost, not procfs's);
//! the second bench scans this machine's real /proc for comparison.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use loupe_agent::resolve::cgroup::ProcIndex;

const PROCESSES: u32 = 10_000;
const CONTAINERS: u32 = 750;

struct FakeProc(PathBuf);

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fake_proc() -> FakeProc {
    let root = std::env::temp_dir().join(format!("loupe-bench-proc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for pid in 1..=PROCESSES {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("pid dir");
        let path = if pid % 4 == 0 {
            let c = (pid / 4) % CONTAINERS;
            format!(
                "/kubepods/burstable/pod{:08x}-0000-4000-8000-000000000000/{c:064x}",
                c / 3
            )
        } else {
            "/system.slice/some.service".to_string()
        };
        let mut text = String::new();
        for (i, controller) in [
            "cpu",
            "cpuacct",
            "cpuset",
            "memory",
            "devices",
            "freezer",
            "blkio",
            "pids",
            "name=systemd",
        ]
        .iter()
        .enumerate()
        {
            text.push_str(&format!("{}:{controller}:{path}\n", 9 - i));
        }
        text.push_str("0::/\n");
        std::fs::write(dir.join("cgroup"), text).expect("cgroup file");
    }
    FakeProc(root)
}

fn bench(c: &mut Criterion) {
    let fake = fake_proc();
    let index = ProcIndex::scan(&fake.0).expect("scan");
    assert_eq!(index.containers(), CONTAINERS as usize);
    c.bench_function("proc_index_scan_10000_processes", |b| {
        b.iter(|| ProcIndex::scan(&fake.0).expect("scan"))
    });
    c.bench_function("proc_index_scan_real_proc", |b| {
        b.iter(|| ProcIndex::scan(Path::new("/proc")).expect("scan"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
