//! `cargo bench -p loupe-agent --bench merge`: merging a node of 100 pods x 1,000 series
//! (counters, gauges, histograms, 3 to 6 labels) against
//! (a) plain concatenation of the same 100 bodies (what Istio does; the floor for any merger) and
//! (b) parsing each body with prometheus-parse and rendering it back.
//! Goals (BENCHMARKS.md): merge within 3x of (a), at least 10x faster than (b).
//! Every merge is `decode::merge`, the one engine, producing the chunk list a scrape sends
//! (headers, and refcounted slices of rendered blocks): `merge_*` parses and renders every body
//! first; `merge_prepared_*` starts from the bodies' indexes (rendered by the merge);
//! `merge_rendered_chunks_*` is the scrape-time cost with the bodies rendered at ingest (outside
//! the timed loop), what `/metrics` runs; `render_at_ingest_*` is that ingest cost for all 100
//! bodies; `gzip_members_at_ingest_text` is what ingest adds for gzip scrapers (the renderings'
//! blocks compressed as gzip members, all 100 bodies), and `merge_rendered_gzip_text_to_text`
//! the gzip scrape's merge with those members.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loupe_agent::decode::{
    merge, merge_gzip, prepare, validate, Format, GzipBlocks, IdentityLabels, Rendered, Source,
    SCRAPE_LEVEL,
};
use loupe_testkit::bodies::{self, pod_name, Spec};

const PODS: usize = 100;
const SERIES: usize = 1000;

struct Node {
    bodies: Vec<String>,
    ids: Vec<(String, String)>,
}

fn node(om: bool) -> Node {
    Node {
        bodies: (0..PODS)
            .map(|p| bodies::body(&Spec::pod(p, SERIES, loupe_testkit::Format::from_om(om))))
            .collect(),
        ids: (0..PODS).map(pod_name).collect(),
    }
}

fn sources<'a>(n: &'a Node, f: Format) -> Vec<Source<'a>> {
    n.bodies
        .iter()
        .zip(&n.ids)
        .map(|(b, (ns, pod))| {
            let identity = Some(IdentityLabels {
                namespace: ns,
                pod,
                container: "app",
                endpoint: ":8080/metrics",
                ..Default::default()
            });
            Source::new(identity, b.as_bytes(), f)
        })
        .collect()
}

/// Baseline (b): prometheus-parse each body and render its samples back as text.
fn prometheus_parse_roundtrip(bodies: &[String], out: &mut String) {
    for b in bodies {
        let lines = b.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parse");
        for s in &scrape.samples {
            match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => {
                    let _ = writeln!(out, "{}{{{}}} {v}", s.metric, s.labels);
                }
                prometheus_parse::Value::Histogram(hs) => {
                    for h in hs {
                        let _ = writeln!(
                            out,
                            "{}_bucket{{{},le=\"{}\"}} {}",
                            s.metric, s.labels, h.less_than, h.count
                        );
                    }
                }
                prometheus_parse::Value::Summary(qs) => {
                    for q in qs {
                        let _ = writeln!(
                            out,
                            "{}{{{},quantile=\"{}\"}} {}",
                            s.metric, s.labels, q.quantile, q.count
                        );
                    }
                }
            }
        }
    }
}

fn rendered_sources(srcs: &[Source<'_>], out: Format) -> Vec<Rendered> {
    srcs.iter().map(|s| s.render(out)).collect()
}

fn with_rendered<'a>(srcs: &[Source<'a>], rendered: &'a [Rendered]) -> Vec<Source<'a>> {
    srcs.iter()
        .zip(rendered)
        .map(|(s, r)| s.with_rendered(Some(r)))
        .collect()
}

fn bench(c: &mut Criterion) {
    let text = node(false);
    let om = node(true);
    let bytes: usize = text.bodies.iter().map(String::len).sum();
    let series: usize = text
        .bodies
        .iter()
        .map(|b| {
            validate(b.as_bytes(), Format::Text)
                .expect("corpus is valid")
                .samples
        })
        .sum();
    eprintln!("node: {PODS} pods, {series} series, {bytes} bytes of text bodies");

    let mut g = c.benchmark_group("node_100x1000");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(series as u64));

    g.bench_function("a_concatenate", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            for body in &text.bodies {
                out.extend_from_slice(body.as_bytes());
            }
            black_box(out)
        })
    });
    let text_sources = sources(&text, Format::Text);
    let om_sources = sources(&om, Format::OpenMetrics);
    g.bench_function("merge_text_to_text", |b| {
        b.iter(|| {
            let (chunks, st) = merge(black_box(&text_sources), Format::Text);
            assert!(st.rejected.is_empty());
            black_box(chunks)
        })
    });
    let prepared: Vec<_> = text_sources
        .iter()
        .map(|s| prepare(s.body, s.format).expect("corpus is valid"))
        .collect();
    let prepared_sources: Vec<Source<'_>> = text_sources
        .iter()
        .zip(&prepared)
        .map(|(s, p)| Source::prepared(s.identity, s.body, p))
        .collect();
    g.bench_function("merge_prepared_text_to_text", |b| {
        b.iter(|| black_box(merge(black_box(&prepared_sources), Format::Text)))
    });
    let text_rendered = rendered_sources(&prepared_sources, Format::Text);
    let text_rsrcs = with_rendered(&prepared_sources, &text_rendered);
    let rendered_bytes: usize = text_rendered.iter().map(Rendered::heap_bytes).sum();
    eprintln!(
        "rendered at ingest (text): {rendered_bytes} bytes = {:.2}x the bodies",
        rendered_bytes as f64 / bytes as f64
    );
    // The same output whether the merge renders the bodies or takes the stored renderings.
    let x = merge(&prepared_sources, Format::Text).0.concat();
    let y = merge(&text_rsrcs, Format::Text).0.concat();
    assert!(x == y, "stored renderings change the output");
    eprintln!("merged output (text): {} bytes", x.len());
    // The floor of any design that copies the output from somewhere: concatenating 100 bodies
    // of the output's size (the rendered blocks are that, plus their headers).
    let output_sized: Vec<Vec<u8>> = x.chunks(x.len() / PODS + 1).map(<[u8]>::to_vec).collect();
    g.bench_function("a_concatenate_output_sized", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            for body in &output_sized {
                out.extend_from_slice(body);
            }
            black_box(out)
        })
    });
    drop(output_sized);
    eprintln!(
        "chunks (text): {}",
        merge(&text_rsrcs, Format::Text).0.len()
    );
    g.bench_function("merge_rendered_chunks_text_to_text", |b| {
        b.iter(|| black_box(merge(black_box(&text_rsrcs), Format::Text)))
    });
    g.bench_function("render_at_ingest_text", |b| {
        b.iter(|| black_box(rendered_sources(black_box(&prepared_sources), Format::Text)))
    });
    let members: Vec<GzipBlocks> = text_rendered.iter().map(GzipBlocks::new).collect();
    let member_refs: Vec<&GzipBlocks> = members.iter().collect();
    g.bench_function("gzip_members_at_ingest_text", |b| {
        b.iter(|| {
            black_box(
                black_box(&text_rendered)
                    .iter()
                    .map(GzipBlocks::new)
                    .collect::<Vec<_>>(),
            )
        })
    });
    g.bench_function("merge_rendered_gzip_text_to_text", |b| {
        b.iter(|| {
            black_box(merge_gzip(
                black_box(&text_rsrcs),
                &member_refs,
                Format::Text,
                SCRAPE_LEVEL,
            ))
        })
    });
    drop(member_refs);
    drop(members);
    drop(text_rsrcs);
    drop(text_rendered);

    let om_prepared: Vec<_> = om_sources
        .iter()
        .map(|s| prepare(s.body, s.format).expect("corpus is valid"))
        .collect();
    let om_prepared_sources: Vec<Source<'_>> = om_sources
        .iter()
        .zip(&om_prepared)
        .map(|(s, p)| Source::prepared(s.identity, s.body, p))
        .collect();
    let om_rendered = rendered_sources(&om_prepared_sources, Format::OpenMetrics);
    let om_rsrcs = with_rendered(&om_prepared_sources, &om_rendered);
    let x = merge(&om_prepared_sources, Format::OpenMetrics).0.concat();
    let y = merge(&om_rsrcs, Format::OpenMetrics).0.concat();
    assert!(x == y, "stored renderings change the output");
    g.bench_function("merge_prepared_om_to_om", |b| {
        b.iter(|| black_box(merge(black_box(&om_prepared_sources), Format::OpenMetrics)))
    });
    g.bench_function("merge_rendered_chunks_om_to_om", |b| {
        b.iter(|| black_box(merge(black_box(&om_rsrcs), Format::OpenMetrics)))
    });
    g.bench_function("render_at_ingest_om", |b| {
        b.iter(|| {
            black_box(rendered_sources(
                black_box(&om_prepared_sources),
                Format::OpenMetrics,
            ))
        })
    });
    drop(om_rsrcs);
    drop(om_rendered);

    g.bench_function("merge_om_to_om", |b| {
        b.iter(|| black_box(merge(black_box(&om_sources), Format::OpenMetrics)))
    });
    g.bench_function("merge_om_to_text", |b| {
        b.iter(|| black_box(merge(black_box(&om_sources), Format::Text)))
    });
    g.bench_function("validate_text", |b| {
        b.iter(|| {
            for s in &text_sources {
                black_box(validate(s.body, Format::Text).ok());
            }
        })
    });
    g.bench_function("validate_om", |b| {
        b.iter(|| {
            for s in &om_sources {
                black_box(validate(s.body, Format::OpenMetrics).ok());
            }
        })
    });
    g.bench_function("b_prometheus_parse_and_render", |b| {
        b.iter(|| {
            let mut out = String::new();
            prometheus_parse_roundtrip(&text.bodies, &mut out);
            black_box(out)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
