//! What the capture program costs traffic it does not watch: a pod's app serves plain HTTP on one
//! port while loupe watches another port of the same pod. Reports, per capture method, the
//! program's own time per packet (the kernel's BPF statistics, `run_time_ns / run_cnt`, which
//! include their own clock reads and the caches a ping-pong leaves cold; and the kernel's test run
//! of the program on one such packet a million times over, less the same run on a frame the
//! program lets go at its first test, which is the program's own work) and the
//! load generator's requests per second without the program and with it, in paired rounds (the
//! order rotates, so drift cancels), in two cases:
//! - **nowhere**: no pod on the node watches the app's port number: the fast path lets the
//!   packet go after reading its ports;
//! - **elsewhere**: another pod has that port number watched, so the program goes on to parse
//!   the packet and look the namespace and ports up (what every unwatched packet cost before the
//!   fast path);
//! - **here, not a GET of /metrics**: the app's port itself is watched (for `/metrics`) and the
//!   load is the app's API on it: the program reads every request line, finds it is not a watched
//!   GET, and skips the exchange (the test-run columns do not apply: they run outside any pod).
//!
//!     cargo run --release -p loupe-agent --example probe_cost [SECONDS_PER_ROUND] [ROUNDS]
//!
//! Needs root (eBPF, a network namespace). The load is one keep-alive client and one server
//! thread on the pod's loopback, small requests and replies: the most packets per second, where
//! a per-packet cost shows most.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loupe_agent::capture::probe::{
    AttachMode, MethodChoice, Probe, ProbeConfig, CAPTURE_PROGRAM_NAMES,
};
use loupe_agent::resolve::netns::Netns;

const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n";
/// The port loupe watches in the pod; nothing is sent to it.
const WATCHED_PORT: u16 = 9090;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let round = Duration::from_secs_f64(seconds);

    let netns = pod_namespace();
    let listener = netns
        .run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .expect("enter the pod namespace")
        .expect("bind the app's port");
    let app = listener.local_addr().expect("app address");
    std::thread::spawn(move || serve(listener));
    // The statistics are on while this descriptor is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF statistics");

    println!(
        "probe_cost: {rounds} paired rounds of {seconds} s, load on port {} while port {WATCHED_PORT} is watched",
        app.port()
    );
    let other_pod = pod_namespace();
    println!(
        "| method | app's port number watched | ns per run (statistics) | runs | ns per run (test run) | of which the program's work | requests/s without the program | with it | change |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for method in [
        MethodChoice::Shared,
        MethodChoice::PerNamespace,
        MethodChoice::PerNamespaceFlat,
    ] {
        let config = ProbeConfig {
            ring_bytes: 1 << 20,
            attach_mode: AttachMode::Auto,
            method,
        };
        let mut probe = match Probe::load(&config) {
            Ok(probe) => probe,
            Err(e) => {
                println!("| {method:?} | not loaded here: {e} | | | | | |");
                continue;
            }
        };
        for case in [Case::Nowhere, Case::Elsewhere, Case::Here] {
            let (mut without, mut with) = (Vec::new(), Vec::new());
            let (mut run_ns, mut runs) = (0u64, 0u64);
            for i in 0..rounds {
                for attached in [i % 2 == 0, i % 2 != 0] {
                    if !attached {
                        without.push(load(&netns, app, round));
                        continue;
                    }
                    let cookie = probe.attach(&netns).expect("attach");
                    probe
                        .watch_port(cookie, WATCHED_PORT, &["/metrics"])
                        .expect("watch");
                    if case == Case::Here {
                        probe
                            .watch_port(cookie, app.port(), &["/metrics"])
                            .expect("watch the app's port");
                    }
                    let other = probe.attach(&other_pod).expect("attach the other pod");
                    if case == Case::Elsewhere {
                        probe
                            .watch_port(other, app.port(), &["/metrics"])
                            .expect("watch elsewhere");
                    }
                    let before = program_stats();
                    with.push(load(&netns, app, round));
                    let after = program_stats();
                    run_ns += after.0 - before.0;
                    runs += after.1 - before.1;
                    probe.detach(cookie);
                    probe.detach(other);
                }
            }
            let other = probe.attach(&other_pod).expect("attach the other pod");
            if case == Case::Elsewhere {
                probe
                    .watch_port(other, app.port(), &["/metrics"])
                    .expect("watch elsewhere");
            }
            let alone = probe
                .time_per_packet(&tcp_packet(40000, app.port()), 1_000_000)
                .expect("test run");
            // The same run on a frame the program lets go at its first test (ARP): what running
            // any program costs here, harness included.
            let mut arp = tcp_packet(40000, app.port());
            arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            let floor = probe.time_per_packet(&arp, 1_000_000).expect("test run");
            probe.detach(other);
            let (without, with) = (median(&mut without), median(&mut with));
            let (alone, work) = match case {
                Case::Here => ("-".to_string(), "-".to_string()),
                _ => (
                    alone.as_nanos().to_string(),
                    (alone.as_nanos() as i128 - floor.as_nanos() as i128).to_string(),
                ),
            };
            println!(
                "| {} ({}) | {} | {:.1} | {runs} | {alone} | {work} | {without:.0} | {with:.0} | {:+.1}% |",
                probe.method(),
                match method {
                    MethodChoice::Shared => "bpf_loop",
                    MethodChoice::PerNamespaceFlat => "one or two records",
                    _ => "bpf_loop",
                },
                case.label(),
                run_ns as f64 / runs.max(1) as f64,
                (with / without - 1.0) * 100.0,
            );
        }
    }
}

/// Where the app's port number is watched while the load runs on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Nowhere,
    Elsewhere,
    Here,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Nowhere => "nowhere",
            Case::Elsewhere => "elsewhere",
            Case::Here => "here, not a GET of /metrics",
        }
    }
}

/// A new network namespace with `lo` up; it lives as long as the handle.
fn pod_namespace() -> Netns {
    std::thread::spawn(|| {
        // SAFETY: unshare only moves this short-lived thread into a new namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        // A child forked from this thread starts in its namespace.
        let status = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip link set lo up: {status}");
        Netns::open(Path::new("/proc/thread-self/ns/net")).expect("open the namespace")
    })
    .join()
    .expect("namespace thread")
}

/// An Ethernet frame as `lo` carries it: IPv4 from 127.0.0.1 to itself, a TCP ACK without payload.
fn tcp_packet(source_port: u16, destination_port: u16) -> Vec<u8> {
    let mut packet = vec![0u8; 12];
    packet.extend_from_slice(&0x0800u16.to_be_bytes());
    packet.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    packet.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    packet.extend_from_slice(&source_port.to_be_bytes());
    packet.extend_from_slice(&destination_port.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    packet
}

/// Answers every request on every connection with [`REPLY`].
fn serve(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut writer = stream.try_clone().expect("clone stream");
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => {
                        if writer.write_all(REPLY).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                }
            }
        });
    }
}

/// Requests per second one keep-alive client gets from the app within `round`.
fn load(netns: &Netns, app: SocketAddr, round: Duration) -> f64 {
    let mut stream = netns
        .run(|| TcpStream::connect(app))
        .expect("enter the pod namespace")
        .expect("connect to the app");
    stream.set_nodelay(true).expect("nodelay");
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(round);
            stop.store(true, Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    let mut reply = vec![0u8; REPLY.len()];
    let mut requests = 0u64;
    while !stop.load(Ordering::Relaxed) {
        stream.write_all(REQUEST).expect("send request");
        stream.read_exact(&mut reply).expect("read reply");
        requests += 1;
    }
    let elapsed = started.elapsed();
    timer.join().expect("timer");
    requests as f64 / elapsed.as_secs_f64()
}

/// Total run time (ns) and runs of loupe's loaded capture programs.
fn program_stats() -> (u64, u64) {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| {
            p.name_as_str()
                .is_some_and(|n| CAPTURE_PROGRAM_NAMES.contains(&n))
        })
        .fold((0, 0), |(ns, runs), p| {
            (ns + p.run_time().as_nanos() as u64, runs + p.run_count())
        })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
