//! `loupe capture`: a one-off look at what the probe sees in one pod. It loads the probe, attaches
//! in the pod's network namespace, watches one port, and prints every reply observed there (the
//! request, status, size, and whether the body is a valid exposition), then detaches: the way to
//! check, on a node, that a pod's replies can be observed at all. Beside a running agent it
//! attaches a second TCX program on the pod's `lo`; in the netlink fallback it would replace the
//! agent's filter there (attaching removes filters of the same name, left by crashed runs).

use crate::capture::flow::{self, FlowLimits, FlowTable};
use crate::capture::probe::{Probe, ProbeConfig};
use crate::capture::Exchange;
use crate::cli::CaptureArgs;
use crate::decode::{self, Format};
use crate::resolve::netns::Netns;
use std::process::ExitCode;
use std::time::Instant;
use tokio::signal::unix::{signal, SignalKind};

/// Prints every observed reply until `args.seconds` pass or a signal arrives; exit status 1 when
/// the namespace cannot be watched.
pub async fn run(args: &CaptureArgs) -> ExitCode {
    match watch(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loupe capture: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn watch(args: &CaptureArgs) -> Result<(), String> {
    let netns = match (&args.netns, args.pid) {
        (Some(path), _) => Netns::open(path),
        (None, Some(pid)) => Netns::of_pid(pid),
        (None, None) => return Err("--netns or --pid is required".into()),
    }
    .map_err(|e| e.to_string())?;
    let config = ProbeConfig {
        ring_bytes: args.ring_bytes,
        ..Default::default()
    };
    let mut probe = Probe::load(&config).map_err(|e| {
        format!(
            "cannot load the eBPF probe: {}",
            crate::telemetry::with_causes(&e)
        )
    })?;
    let cookie = probe
        .attach(&netns)
        .map_err(|e| format!("attaching in {}: {e}", netns.path().display()))?;
    probe
        .watch_port(cookie, args.port, &args.path)
        .map_err(|e| format!("watching port {}: {e}", args.port))?;
    let mut segments = probe.segments().map_err(|e| e.to_string())?;
    println!(
        "watching GETs of {} on port {} in {} for {:?} (Ctrl-C stops)",
        args.path.join(", "),
        args.port,
        netns.path().display(),
        args.seconds
    );

    let before = discards();
    let mut table = FlowTable::new(FlowLimits::default());
    let mut exchanges = Vec::new();
    let mut seen = 0usize;
    let started = Instant::now();
    let deadline = tokio::time::sleep(args.seconds);
    tokio::pin!(deadline);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            segment = segments.next() => {
                let segment = segment.map_err(|e| format!("reading captured segments: {e}"))?;
                table.push(segment, Instant::now(), &mut exchanges);
                for exchange in exchanges.drain(..) {
                    seen += 1;
                    println!("{}", describe(&exchange, started));
                }
            }
            _ = &mut deadline => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    let (events, bytes) = probe.dropped();
    let (skipped_packets, skipped_bytes) = probe.skipped();
    let lost: Vec<String> = discards()
        .iter()
        .zip(before)
        .filter(|((_, now), (_, then))| now > then)
        .map(|((name, now), (_, then))| format!("{name} {}", now - then))
        .collect();
    println!(
        "{seen} replies observed; discarded: {}; ring buffer drops: {events} records, {bytes} bytes; skipped (not a GET of the path): {skipped_packets} packets, {skipped_bytes} bytes",
        if lost.is_empty() { "none".into() } else { lost.join(", ") }
    );
    // Dropping the probe detaches it from the namespace.
    drop(segments);
    drop(probe);
    Ok(())
}

/// One line per reply: when, the request, the status, the body and what the codec says of it.
fn describe(exchange: &Exchange, started: Instant) -> String {
    let at = exchange.completed_at.saturating_duration_since(started);
    let format = Format::from_content_type(exchange.content_type.as_deref());
    let verdict = match (exchange.status, decode::validate(&exchange.body, format)) {
        (200, Ok(summary)) => format!(
            "valid {format:?}: {} samples in {} families",
            summary.samples, summary.families
        ),
        (200, Err(e)) => format!("rejected: {e}"),
        (status, _) => format!("not stored (HTTP status {status})"),
    };
    format!(
        "{:>8.3}s {} {} {} -> {}, {} bytes, {}: {verdict}",
        at.as_secs_f64(),
        exchange.flow.client,
        exchange.method,
        exchange.path,
        exchange.status,
        exchange.body.len(),
        exchange
            .content_type
            .as_deref()
            .unwrap_or("no content type"),
    )
}

/// The reassembly's discard counters, named without their prefix.
fn discards() -> Vec<(&'static str, u64)> {
    [
        &flow::RESPONSES_DISCARDED_GAP,
        &flow::RESPONSES_DISCARDED_MALFORMED,
        &flow::RESPONSES_DISCARDED_TOO_LARGE,
        &flow::RESPONSES_DISCARDED_TRUNCATED,
        &flow::RESPONSES_DISCARDED_UNMATCHED,
    ]
    .iter()
    .map(|c| {
        let name = c.name.trim_start_matches("loupe_responses_discarded_");
        (name.trim_end_matches("_total"), c.get())
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::FlowKey;
    use bytes::Bytes;
    use std::time::Duration;

    fn exchange(status: u16, body: &'static [u8]) -> Exchange {
        Exchange {
            flow: FlowKey {
                netns: 1,
                client: "127.0.0.1:40000".parse().unwrap(),
                server: "127.0.0.1:8080".parse().unwrap(),
            },
            method: "GET".into(),
            path: "/metrics".into(),
            status,
            content_type: Some("text/plain; version=0.0.4".into()),
            body: Bytes::from_static(body),
            completed_at: Instant::now(),
        }
    }

    #[test]
    fn a_reply_is_described_with_the_codecs_verdict() {
        let start = Instant::now() - Duration::from_secs(1);
        let good = describe(&exchange(200, b"# TYPE a gauge\na 1\nb 2\n"), start);
        assert!(good.contains("GET /metrics -> 200, 23 bytes"), "{good}");
        assert!(
            good.ends_with("valid Text: 2 samples in 2 families"),
            "{good}"
        );
        let bad = describe(&exchange(200, b"a{ 1\n"), start);
        assert!(bad.contains("rejected: line 1"), "{bad}");
        let error = describe(&exchange(503, b"busy"), start);
        assert!(error.ends_with("not stored (HTTP status 503)"), "{error}");
    }
}
