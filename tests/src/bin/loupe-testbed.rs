//! Testbed from the command line, for the demo and for looking around by hand.
//!
//! `loupe-testbed up --pods N --pods-file FILE [--series S]`: creates N meshed pods (network
//! namespace, metrics-app on 127.0.0.1, strict-mTLS Envoy on the veth address), shows that a
//! plaintext and a wrong-certificate scrape from the host fail and the mesh certificate works,
//! writes loupe's pods file, prints `READY`, and keeps everything until SIGINT/SIGTERM, then removes
//! it all.
//!
//! `loupe-testbed attached DEV`: lists the BPF programs attached to DEV (TCX and tc filters) in the
//! current network namespace (run it with `ip netns exec`).

use std::io::Write;

use loupe_tests::envoy::{scrape_from_host, ClientAuth};
use loupe_tests::loupe::pods_yaml;
use loupe_tests::testbed::{Mesh, SIDECAR_PORT};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("attached") => attached(args.get(1).map(String::as_str).unwrap_or("lo")),
        Some("up") => match up(&args[1..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loupe-testbed up: {e}");
                1
            }
        },
        _ => {
            eprintln!(
                "usage: loupe-testbed up --pods N --pods-file FILE [--series S] | attached DEV"
            );
            2
        }
    };
    std::process::exit(code);
}

fn attached(dev: &str) -> i32 {
    match loupe_tests::attached::query_here(dev) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            0
        }
        Err(e) => {
            eprintln!("loupe-testbed attached: {e}");
            1
        }
    }
}

fn up(args: &[String]) -> Result<(), String> {
    let mut pods = 3usize;
    let mut series = "200".to_string();
    let mut pods_file = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--pods" => pods = value.parse().map_err(|_| format!("bad --pods {value:?}"))?,
            "--series" => series = value.clone(),
            "--pods-file" => pods_file = Some(value.clone()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let pods_file = pods_file.ok_or("--pods-file is required")?;
    // Block SIGINT/SIGTERM in this thread before anything else; sigwait below takes them.
    // Children start with an empty signal mask (std resets it on spawn).
    let set = block_stop_signals()?;

    let mesh = Mesh::new(pods, &["--series", &series]).map_err(|e| e.to_string())?;
    for mp in &mesh.pods {
        let p = &mp.pod;
        println!(
            "pod {}/{}: netns {} ({}), app on 127.0.0.1:8080, Envoy (strict mTLS) on {}:{SIDECAR_PORT}",
            mp.spec.namespace,
            mp.spec.name,
            p.name,
            p.netns_path().display(),
            p.pod_ip
        );
        for (what, auth) in [
            ("plaintext", ClientAuth::Plaintext),
            ("TLS, no client cert", ClientAuth::NoCert),
            ("TLS, foreign CA's client cert", ClientAuth::ForeignCert),
            ("TLS, mesh client cert", ClientAuth::MeshCert),
        ] {
            match scrape_from_host(p, &mesh.certs, SIDECAR_PORT, "/metrics", auth) {
                Ok(body) => println!("  scrape from host, {what}: OK, {} bytes", body.len()),
                Err(e) => println!(
                    "  scrape from host, {what}: FAILED ({})",
                    e.to_string().lines().last().unwrap_or("").trim()
                ),
            }
        }
    }
    std::fs::write(&pods_file, pods_yaml(&mesh.specs()))
        .map_err(|e| format!("writing {pods_file}: {e}"))?;
    println!("pods file written to {pods_file}");
    println!("READY");
    let _ = std::io::stdout().flush();
    wait_signal(&set)?;
    println!("loupe-testbed: stopping, removing pods");
    drop(mesh);
    Ok(())
}

fn block_stop_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!("blocking signals: error {rc}"));
        }
        Ok(set)
    }
}

fn wait_signal(set: &libc::sigset_t) -> Result<(), String> {
    let mut sig = 0;
    // SAFETY: `set` was initialised by block_stop_signals and its signals are blocked here.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 {
        return Err(format!("sigwait: error {rc}"));
    }
    Ok(())
}
