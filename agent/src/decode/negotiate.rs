//! Content negotiation, following Prometheus' Go client (`expfmt.NegotiateIncludingOpenMetrics`):
//! media ranges sorted by q (stable), the first that names a format we write wins, text 0.0.4
//! otherwise.

use super::Format;

struct MediaRange<'a> {
    mtype: &'a str,
    version: Option<&'a str>,
    proto: Option<&'a str>,
    encoding: Option<&'a str>,
    q: f32,
}

fn parse_range(part: &str) -> Option<MediaRange<'_>> {
    let mut it = part.split(';');
    let mtype = it.next()?.trim();
    if mtype.is_empty() {
        return None;
    }
    let mut r = MediaRange {
        mtype,
        version: None,
        proto: None,
        encoding: None,
        q: 1.0,
    };
    for p in it {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim() {
            k if k.eq_ignore_ascii_case("q") => r.q = v.parse().unwrap_or(0.0),
            k if k.eq_ignore_ascii_case("version") => r.version = Some(v),
            k if k.eq_ignore_ascii_case("proto") => r.proto = Some(v),
            k if k.eq_ignore_ascii_case("encoding") => r.encoding = Some(v),
            _ => {}
        }
    }
    Some(r)
}

fn format_of(r: &MediaRange<'_>) -> Option<Format> {
    let v = r.version.unwrap_or("");
    if r.mtype.eq_ignore_ascii_case("text/plain") && (v.is_empty() || v == "0.0.4") {
        return Some(Format::Text);
    }
    if r.mtype.eq_ignore_ascii_case("application/openmetrics-text")
        && (v.is_empty() || v == "1.0.0" || v == "0.0.1")
    {
        return Some(Format::OpenMetrics);
    }
    // Only the delimited encoding of MetricFamily (client_golang's FmtProtoDelim).
    if r.mtype.eq_ignore_ascii_case(super::proto::MEDIA_TYPE)
        && r.proto == Some("io.prometheus.client.MetricFamily")
        && r.encoding == Some("delimited")
    {
        return Some(Format::Protobuf);
    }
    None
}

pub(crate) fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut ranges: Vec<MediaRange<'_>> = accept
        .split(',')
        .filter_map(parse_range)
        .filter(|r| r.q > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    ranges.iter().find_map(format_of).unwrap_or(Format::Text)
}

pub(crate) fn from_content_type(content_type: Option<&str>) -> Format {
    let mtype = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    // By media type alone, as Prometheus picks its parser.
    if mtype.eq_ignore_ascii_case("application/openmetrics-text") {
        Format::OpenMetrics
    } else if mtype.eq_ignore_ascii_case(super::proto::MEDIA_TYPE) {
        Format::Protobuf
    } else {
        Format::Text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_accept_headers() {
        // Prometheus 2.x default.
        let p2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(p2)), Format::OpenMetrics);
        // Prometheus 3 with escaping params and text/plain 1.0.0 (which we don't write).
        let p3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        assert_eq!(negotiate(Some(p3)), Format::OpenMetrics);
        // scrape_protocols: [PrometheusText0.0.4, OpenMetricsText1.0.0]
        let t = "text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.3";
        assert_eq!(negotiate(Some(t)), Format::Text);
    }

    #[test]
    fn protobuf_when_asked_first() {
        // Prometheus 3 with scrape_native_histograms; Prometheus 2.42 with the feature flag.
        let p3 = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        assert_eq!(negotiate(Some(p3)), Format::Protobuf);
        let p2 = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(p2)), Format::Protobuf);
        assert_eq!(negotiate(Some(super::super::ASK_APPS)), Format::Protobuf);
        // Other encodings or messages are not ours.
        for other in [
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
            "application/vnd.google.protobuf;proto=other.Message;encoding=delimited",
            "application/vnd.google.protobuf",
        ] {
            assert_eq!(negotiate(Some(other)), Format::Text, "{other}");
        }
        assert_eq!(
            from_content_type(Some(super::super::proto::CONTENT_TYPE)),
            Format::Protobuf
        );
    }

    #[test]
    fn fallbacks() {
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("application/json")), Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=\"1.0.0\"")),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0,text/plain")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=2.0.0")),
            Format::Text
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            from_content_type(Some(
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            from_content_type(Some("text/plain; version=0.0.4")),
            Format::Text
        );
        assert_eq!(from_content_type(None), Format::Text);
        for f in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
            assert_eq!(from_content_type(Some(f.content_type())), f);
        }
    }
}
