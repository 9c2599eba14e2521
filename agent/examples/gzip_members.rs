//! The numbers behind loupe's gzip members (BENCHMARKS.md, issue 14): for a node of `pods` x
//! `series` (default the 100-pod node of `--bench scrape`), the size of the multi-member gzip
//! answer against one gzip stream of the same output (levels 1 and 6), for each member level and
//! smallest block given a stored member, with the cost of making the members (at ingest) and of
//! the gzip scrape's merge (agent CPU):
//!
//!     cargo run --release -p loupe-agent --example gzip_members [pods] [series] [sweep|chosen]

use std::io::Write as _;
use std::time::Duration;

use loupe_agent::decode::{
    merge, merge_gzip, prepare, Format, GzipBlocks, IdentityLabels, Rendered, Source, MEMBER_LEVEL,
    MIN_MEMBER_BLOCK, SCRAPE_LEVEL,
};
use loupe_testkit::bodies::{self, Spec};

/// CPU time of this process (all threads).
fn cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The best of `runs` CPU times of `f`, with its last result.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let c = cpu();
        let r = f();
        best = best.min(cpu() - c);
        out = Some(r);
    }
    (best, out.expect("runs > 0"))
}

fn one_stream(chunks: &[bytes::Bytes], level: u32) -> usize {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    for c in chunks {
        e.write_all(c).expect("write to Vec");
    }
    e.finish().expect("finish").len()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let series: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let sweep = args.next().as_deref() != Some("chosen");
    let runs = if pods > 200 { 3 } else { 10 };
    let bodies: Vec<String> = (0..pods)
        .map(|p| bodies::body(&Spec::pod(p, series, loupe_testkit::Format::Text)))
        .collect();
    let ids: Vec<String> = (0..pods).map(|p| bodies::pod_name(p).1).collect();
    let preps: Vec<_> = bodies
        .iter()
        .map(|b| prepare(b.as_bytes(), Format::Text).expect("valid"))
        .collect();
    let input: usize = bodies.iter().map(String::len).sum();
    println!(
        "{pods} pods x {series} series, {:.1} MB of text bodies",
        input as f64 / 1e6
    );
    for out in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
        let sources: Vec<Source<'_>> = bodies
            .iter()
            .zip(&ids)
            .zip(&preps)
            .map(|((b, pod), p)| {
                let identity = Some(IdentityLabels {
                    namespace: "shop",
                    pod,
                    container: "app",
                    endpoint: ":8080/metrics",
                    ..Default::default()
                });
                Source::prepared(identity, b.as_bytes(), p)
            })
            .collect();
        let rendered: Vec<Rendered> = sources.iter().map(|s| s.render(out)).collect();
        let sources: Vec<Source<'_>> = sources
            .iter()
            .zip(&rendered)
            .map(|(s, r)| s.with_rendered(Some(r)))
            .collect();
        let (plain_cpu, (plain, _)) = best(runs, || merge(&sources, out));
        let size: usize = plain.iter().map(|c| c.len()).sum();
        let lines: usize = rendered.iter().map(|r| r.heap_bytes()).sum();
        let (l1_cpu, l1) = best(runs.min(3), || one_stream(&plain, 1));
        let (l6_cpu, l6) = best(runs.min(3), || one_stream(&plain, 6));
        println!(
            "\n{out:?}: output {:.1} MB (merge {}); one stream: level 1 {} B ({}), level 6 {} B ({})",
            size as f64 / 1e6,
            ms(plain_cpu),
            l1,
            ms(l1_cpu),
            l6,
            ms(l6_cpu)
        );
        let settings: Vec<(u32, usize)> = if sweep {
            [1u32, 4, 6, 9]
                .iter()
                .flat_map(|&l| [0usize, 512, 2048, 8192, 32768].map(|m| (l, m)))
                .collect()
        } else {
            vec![(MEMBER_LEVEL, MIN_MEMBER_BLOCK)]
        };
        println!("| member level | smallest block | members | vs one stream level 6 | making them (ingest, all bodies) | per body | held (x rendering) | gzip scrape CPU |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (level, min_block) in settings {
            let (make_cpu, members) = best(runs.min(3), || {
                rendered
                    .iter()
                    .map(|r| GzipBlocks::with(r, level, min_block))
                    .collect::<Vec<_>>()
            });
            let refs: Vec<&GzipBlocks> = members.iter().collect();
            let (scrape_cpu, (zipped, _)) =
                best(runs, || merge_gzip(&sources, &refs, out, SCRAPE_LEVEL));
            let zsize: usize = zipped.iter().map(|c| c.len()).sum();
            let count: usize = members.iter().map(GzipBlocks::blocks).sum();
            let held: usize = members.iter().map(GzipBlocks::heap_bytes).sum();
            println!(
                "| {level} | {min_block} | {count} | {zsize} B = **{:.3}x** | {} | {:.3} ms | {:.3}x | {} |",
                zsize as f64 / l6 as f64,
                ms(make_cpu),
                make_cpu.as_secs_f64() * 1e3 / pods as f64,
                held as f64 / lines as f64,
                ms(scrape_cpu),
            );
        }
    }
}
