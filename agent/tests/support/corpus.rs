//! Realistic pod bodies for the promtool test and the benchmark: counters, gauges and histograms
//! with 3 to 6 labels whose values look like real ones (routes, status codes, zones, ids).

use std::fmt::Write as _;

/// Namespace and name of pod `pod` of a node, shaped like a Deployment's pods.
#[allow(dead_code)] // not every user of the corpus names pods
pub fn pod_name(pod: usize) -> (String, String) {
    (
        format!("team-{}", pod % 7),
        format!("checkout-{pod}-5d8f7c9b4-x{pod:04}"),
    )
}

const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const ROUTES: [&str; 8] = [
    "/api/v1/users/{id}",
    "/api/v1/orders",
    "/api/v1/orders/{id}/items",
    "/healthz",
    "/api/v2/search?q=",
    "/static/*path",
    "/api/v1/carts/{cart_id}/checkout",
    "/graphql",
];
const STATUS: [&str; 5] = ["200", "201", "404", "500", "503"];
const ZONES: [&str; 3] = ["eu-west-1a", "eu-west-1b", "eu-west-1c"];
const BUCKETS: [&str; 11] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// A body of about `series` series for pod number `pod`, in text 0.0.4 or OpenMetrics.
pub fn body(pod: usize, series: usize, om: bool) -> String {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ (pod as u64 + 1).wrapping_mul(0x2545_f491));
    let mut out = String::with_capacity(series * 120);
    let per = series / 5;
    let inst = format!(
        "10.{}.{}.{}:8080",
        pod / 65536 % 256,
        pod / 256 % 256,
        pod % 256
    );

    // Counter, 4 labels.
    let c = if om {
        "http_server_requests"
    } else {
        "http_server_requests_total"
    };
    let _ = writeln!(
        out,
        "# HELP {c} Requests served, by method, route and status."
    );
    let _ = writeln!(out, "# TYPE {c} counter");
    for i in 0..per {
        let _ = writeln!(
            out,
            "http_server_requests_total{{method=\"{}\",route=\"{}\",status=\"{}\",shard=\"{i}\"}} {}",
            r.pick(&METHODS),
            r.pick(&ROUTES),
            r.pick(&STATUS),
            r.next() % 1_000_000
        );
    }
    // Gauge, 3 labels.
    let _ = writeln!(out, "# HELP worker_queue_depth Jobs waiting, per queue.");
    let _ = writeln!(out, "# TYPE worker_queue_depth gauge");
    for i in 0..per {
        let _ = writeln!(
            out,
            "worker_queue_depth{{queue=\"q-{i}\",zone=\"{}\",instance=\"{inst}\"}} {}.{}",
            r.pick(&ZONES),
            r.next() % 500,
            r.next() % 100
        );
    }
    // Histogram, 3 labels + le: 13 series per group.
    let h = "http_server_request_duration_seconds";
    let _ = writeln!(out, "# HELP {h} Request latency.");
    let _ = writeln!(out, "# TYPE {h} histogram");
    for g in 0..(per / 13).max(1) {
        let (m, rt) = (r.pick(&METHODS), r.pick(&ROUTES));
        let labels = format!("method=\"{m}\",route=\"{rt}\",group=\"g{g}\"");
        let mut cum = 0;
        for b in BUCKETS {
            cum += r.next() % 100;
            let _ = writeln!(out, "{h}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        cum += r.next() % 10;
        let _ = writeln!(out, "{h}_bucket{{{labels},le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "{h}_sum{{{labels}}} {}.{:03}",
            cum / 7,
            r.next() % 1000
        );
        let _ = writeln!(out, "{h}_count{{{labels}}} {cum}");
    }
    // Gauge, 5 labels.
    let _ = writeln!(out, "# HELP jvm_memory_used_bytes Used memory by pool.");
    let _ = writeln!(out, "# TYPE jvm_memory_used_bytes gauge");
    for i in 0..per {
        let _ = writeln!(
            out,
            "jvm_memory_used_bytes{{area=\"heap\",id=\"pool-{i}\",zone=\"{}\",region=\"eu-west-1\",instance=\"{inst}\"}} {}",
            r.pick(&ZONES),
            r.next() % 4_000_000_000
        );
    }
    // Counter, 6 labels.
    let rc = if om {
        "rpc_client_calls"
    } else {
        "rpc_client_calls_total"
    };
    let _ = writeln!(out, "# HELP {rc} Outgoing RPCs.");
    let _ = writeln!(out, "# TYPE {rc} counter");
    for i in 0..(series - 4 * per) {
        let _ = writeln!(
            out,
            "rpc_client_calls_total{{service=\"svc-{}\",method=\"Get{i}\",code=\"{}\",zone=\"{}\",peer=\"{}\",tls=\"mutual\"}} {}",
            r.next() % 40,
            r.pick(&STATUS),
            r.pick(&ZONES),
            r.next() % 10_000,
            r.next() % 100_000
        );
    }
    if om {
        out.push_str("# EOF\n");
    }
    out
}
