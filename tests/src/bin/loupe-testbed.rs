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
use std::sync::atomic::{AtomicBool, Ordering};

use loupe_tests::envoy::{scrape_from_host, ClientAuth};
use loupe_tests::loupe::pods_yaml;
use loupe_tests::testbed::{Mesh, SIDECAR_PORT};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("attached") => attached(args.get(1).map(String::as_str).unwrap_or("lo")),
        Some("tcx-hold") => tcx_hold(args.get(1).map(String::as_str).unwrap_or("lo")),
        Some("up") => match up(&args[1..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loupe-testbed up: {e}");
                1
            }
        },
        _ => {
            eprintln!(
                "usage: loupe-testbed up --pods N --pods-file FILE [--series S] | attached DEV | tcx-hold DEV"
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

/// Attaches the probe program, says `ATTACHED`, and holds it until stdin closes.
fn tcx_hold(dev: &str) -> i32 {
    match loupe_tests::attached::hold_tcx_probe(dev) {
        Ok(link) => {
            println!("ATTACHED");
            let _ = std::io::stdout().flush();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            drop(link);
            0
        }
        Err(e) => {
            eprintln!("loupe-testbed tcx-hold: {e}");
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
    catch_stop_signals()?;

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
                Ok(body) => println!("  scrape from the host, {what}: OK, {} bytes", body.len()),
                Err(loupe_tests::Error::Command { stderr, .. }) => {
                    println!("  scrape from the host, {what}: refused ({stderr})")
                }
                Err(e) => println!("  scrape from the host, {what}: refused ({e})"),
            }
        }
    }
    if let Some(first) = mesh.pods.first() {
        let c = &mesh.certs;
        println!(
            "try it: curl --cacert {} --cert {} --key {} --resolve {}:{SIDECAR_PORT}:{} https://{}:{SIDECAR_PORT}/metrics",
            c.ca.cert.display(),
            c.client.cert.display(),
            c.client.key.display(),
            loupe_tests::certs::SERVER_NAME,
            first.pod.pod_ip,
            loupe_tests::certs::SERVER_NAME,
        );
    }
    std::fs::write(&pods_file, pods_yaml(&mesh.specs()))
        .map_err(|e| format!("writing {pods_file}: {e}"))?;
    println!("pods file written to {pods_file}");
    println!("READY");
    let _ = std::io::stdout().flush();
    wait_stop_signal();
    println!("loupe-testbed: stopping, removing pods");
    drop(mesh);
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Catches SIGINT/SIGTERM/SIGHUP with a handler that only sets a flag. A handler (unlike a blocked
/// mask) is not inherited across exec, so the pods' processes keep the default dispositions.
fn catch_stop_signals() -> Result<(), String> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let prev = unsafe { libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t) };
        if prev == libc::SIG_ERR {
            return Err(format!("installing a handler for signal {sig}"));
        }
    }
    Ok(())
}

fn wait_stop_signal() {
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
