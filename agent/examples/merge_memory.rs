//! Peak memory of merging a node of 1,000 pods x 1,000 series (1M series), for BENCHMARKS.md:
//!
//!     cargo run --release -p loupe-agent --example merge_memory [pods] [series]
//!
//! The input bodies are built first (the store holds them anyway); then the process' peak RSS is
//! reset (`/proc/self/clear_refs`, 5) and the merge runs; the peak RSS growth during the merge is
//! compared with the size of the output (goal: at most 1.5x). Before each reset the allocator
//! gives freed memory back (`malloc_trim`), so a run does not reuse pages an earlier run left
//! resident and look smaller than it is.

use loupe_agent::decode::{merge, prepare, Format, IdentityLabels, Source};
use loupe_testkit::bodies::{self, Spec};

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc/self/status")
}

/// Gives freed heap back to the kernel, then resets the peak RSS; returns the RSS to measure from.
fn reset_peak() -> u64 {
    // SAFETY: malloc_trim only releases free memory of glibc's heap; nothing refers to it.
    unsafe { libc::malloc_trim(0) };
    std::fs::write("/proc/self/clear_refs", "5").expect("reset peak RSS via /proc/self/clear_refs");
    status_kib("VmHWM:").min(status_kib("VmRSS:"))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let series: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    for out in [Format::Text, Format::OpenMetrics] {
        let bodies: Vec<String> = (0..pods)
            .map(|p| {
                let format = loupe_testkit::Format::from_om(p % 2 == 1);
                bodies::body(&Spec::pod(p, series, format))
            })
            .collect();
        let ids: Vec<String> = (0..pods).map(|p| bodies::pod_name(p).1).collect();
        let sources: Vec<Source<'_>> = bodies
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(p, (b, pod))| {
                let identity = Some(IdentityLabels {
                    namespace: "shop",
                    pod,
                    container: "app",
                    endpoint: ":8080/metrics",
                    ..Default::default()
                });
                let format = if p % 2 == 1 {
                    Format::OpenMetrics
                } else {
                    Format::Text
                };
                Source::new(identity, b.as_bytes(), format)
            })
            .collect();
        let input: usize = bodies.iter().map(String::len).sum();
        std::fs::write("/proc/self/clear_refs", "5")
            .expect("reset peak RSS via /proc/self/clear_refs");
        let before = status_kib("VmHWM:");
        let rss_before = status_kib("VmRSS:");
        let t = std::time::Instant::now();
        let (chunks, st) = merge(&sources, out);
        let elapsed = t.elapsed();
        let after = status_kib("VmHWM:");
        assert!(st.rejected.is_empty());
        let grew = (after - before.min(rss_before)) * 1024;
        let output: usize = chunks.iter().map(|c| c.len()).sum();
        println!(
            "{out:?} out: {pods} pods x {series} series, input {:.1} MiB, output {:.1} MiB, \
             peak RSS growth during merge {:.1} MiB = {:.2}x output, merge took {:.0?}, \
             duplicates {}, conflicts {}",
            input as f64 / 1048576.0,
            output as f64 / 1048576.0,
            grew as f64 / 1048576.0,
            grew as f64 / output as f64,
            elapsed,
            st.duplicate_series,
            st.family_conflicts,
        );
        drop(chunks);

        // The same with indexes prepared when the bodies arrived (kept by the store).
        let prepared: Vec<_> = sources
            .iter()
            .map(|s| prepare(s.body, s.format).expect("corpus is valid"))
            .collect();
        let index: usize = prepared.iter().map(|p| p.index_bytes()).sum();
        let psources: Vec<Source<'_>> = sources
            .iter()
            .zip(&prepared)
            .map(|(s, p)| Source::prepared(s.identity, s.body, p))
            .collect();
        // What a scrape sends for bodies without renderings (the fallback): the chunk list over
        // renderings made by the merge, which live as long as the list.
        let before = reset_peak();
        let t = std::time::Instant::now();
        let (chunks, _) = merge(&psources, out);
        let elapsed = t.elapsed();
        let grew = (status_kib("VmHWM:") - before) * 1024;
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        println!(
            "{out:?} out, prepared: index held beside the bodies {:.1} MiB ({:.2}x input), {} \
             chunks, peak RSS growth during merge {:.1} MiB = {:.2}x output, merge took {:.0?}",
            index as f64 / 1048576.0,
            index as f64 / input as f64,
            chunks.len(),
            grew as f64 / 1048576.0,
            grew as f64 / total as f64,
            elapsed,
        );
        drop(chunks);

        // The same with the bodies rendered when they arrived (kept by the store).
        let t = std::time::Instant::now();
        let rendered: Vec<_> = psources.iter().map(|s| s.render(out)).collect();
        let render_time = t.elapsed();
        let held: usize = rendered.iter().map(|r| r.heap_bytes()).sum();
        let rsources: Vec<Source<'_>> = psources
            .iter()
            .zip(&rendered)
            .map(|(s, r)| s.with_rendered(Some(r)))
            .collect();
        // What the store holds per series for one format (issue 10's goal: at most 400 B).
        let n = (pods * series) as f64;
        println!(
            "{out:?} out, held per series: body {:.0} B + index {:.0} B + rendering {:.0} B = \
             {:.0} B",
            input as f64 / n,
            index as f64 / n,
            held as f64 / n,
            (input + index + held) as f64 / n,
        );
        // What a scrape sends: the chunk list, slices of the renderings, no output buffer.
        let before = reset_peak();
        let t = std::time::Instant::now();
        let (chunks, _) = merge(&rsources, out);
        let elapsed = t.elapsed();
        let grew = (status_kib("VmHWM:") - before) * 1024;
        let list = chunks.capacity() * std::mem::size_of::<bytes::Bytes>();
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        assert_eq!(total, output, "the chunks are the output");
        println!(
            "{out:?} out, rendered: renderings held beside the bodies {:.1} MiB ({:.2}x input, \
             made in {render_time:.0?}); {} chunks (list {:.1} MiB), peak RSS growth during \
             merge {:.1} MiB = {:.3}x output, merge took {:.0?}",
            held as f64 / 1048576.0,
            held as f64 / input as f64,
            chunks.len(),
            list as f64 / 1048576.0,
            grew as f64 / 1048576.0,
            grew as f64 / output as f64,
            elapsed,
        );
        // What a scrape with gzip (Prometheus' default) adds: compressing the chunks.
        let t = std::time::Instant::now();
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(output / 4),
            flate2::Compression::fast(),
        );
        for c in &chunks {
            std::io::Write::write_all(&mut gz, c).expect("gzip into a Vec");
        }
        let zipped = gz.finish().expect("gzip into a Vec");
        println!(
            "{out:?} out, gzip of the chunks (fast): {:.1} MiB in {:.0?}",
            zipped.len() as f64 / 1048576.0,
            t.elapsed()
        );
    }
}
