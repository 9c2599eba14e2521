//! Byte sizes of the generated bodies the benchmarks and the test app use (for BENCHMARKS.md and
//! to compare generator changes): `cargo run -p loupe-testkit --example sizes`.

use loupe_testkit::bodies::{body, Spec};
use loupe_testkit::Format;

fn main() {
    for format in [Format::Text, Format::OpenMetrics] {
        let bytes: usize = (0..100)
            .map(|p| body(&Spec::pod(p, 1000, format)).len())
            .sum();
        println!("pods 100 x 1000 series, {format:?}: {bytes} bytes");
        let bytes: usize = (0..6).map(|p| body(&Spec::pod(p, 200, format)).len()).sum();
        println!("pods 6 x 200 series, {format:?}: {bytes} bytes");
    }
    // `--bench flow`: the test app's body at just over 20 MiB.
    println!(
        "flow 163200 series: {} bytes",
        body(&Spec::app(163_200)).len()
    );
    for n in [1, 10, 50, 100, 300, 1234, 160_000] {
        let text = body(&Spec::app(n)).len();
        let om = body(&Spec::app(n).format(Format::OpenMetrics)).len();
        println!("app {n} series: text {text} bytes, OpenMetrics {om} bytes");
    }
}
