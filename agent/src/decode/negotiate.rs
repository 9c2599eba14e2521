//! Content negotiation, following Prometheus' Go client (`expfmt.NegotiateAccept`): media
//! ranges sorted by q (stable), the first that names a format we write wins, text 0.0.4
//! otherwise. The escaping scheme is the one the last range read up to the winner names with
//! `escaping=` (unknown values ignored), `underscores` if none: as expfmt carries it along
//! its loop.

use super::{Answer, Escaping, Format};

struct MediaRange<'a> {
    mtype: &'a str,
    version: Option<&'a str>,
    proto: Option<&'a str>,
    encoding: Option<&'a str>,
    escaping: Option<Escaping>,
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
        escaping: None,
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
            k if k.eq_ignore_ascii_case("escaping") => r.escaping = Escaping::from_name(v),
            _ => {}
        }
    }
    Some(r)
}

/// The format a range names, and whether it is text 1.0.0.
fn format_of(r: &MediaRange<'_>) -> Option<(Format, bool)> {
    let v = r.version.unwrap_or("");
    if r.mtype.eq_ignore_ascii_case("text/plain") && (v.is_empty() || v == "0.0.4" || v == "1.0.0")
    {
        return Some((Format::Text, v == "1.0.0"));
    }
    if r.mtype.eq_ignore_ascii_case("application/openmetrics-text")
        && (v.is_empty() || v == "1.0.0" || v == "0.0.1")
    {
        return Some((Format::OpenMetrics, false));
    }
    // Only the delimited encoding of MetricFamily (client_golang's FmtProtoDelim).
    if r.mtype.eq_ignore_ascii_case(super::proto::MEDIA_TYPE)
        && r.proto == Some("io.prometheus.client.MetricFamily")
        && r.encoding == Some("delimited")
    {
        return Some((Format::Protobuf, false));
    }
    None
}

pub(crate) fn negotiate(accept: Option<&str>) -> Answer {
    let mut answer = Answer {
        format: Format::Text,
        escaping: Escaping::default(),
        text_1: false,
    };
    let Some(accept) = accept else {
        return answer;
    };
    let mut ranges: Vec<MediaRange<'_>> = accept
        .split(',')
        .filter_map(parse_range)
        .filter(|r| r.q > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    for r in &ranges {
        if let Some(e) = r.escaping {
            answer.escaping = e;
        }
        if let Some((format, text_1)) = format_of(r) {
            return Answer {
                format,
                text_1,
                ..answer
            };
        }
    }
    answer
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
        assert_eq!(negotiate(Some(p2)).format, Format::OpenMetrics);
        // Prometheus 3 with escaping params and text/plain 1.0.0.
        let p3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        assert_eq!(negotiate(Some(p3)).format, Format::OpenMetrics);
        // scrape_protocols: [PrometheusText0.0.4, OpenMetricsText1.0.0]
        let t = "text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.3";
        assert_eq!(negotiate(Some(t)).format, Format::Text);
    }

    #[test]
    fn protobuf_when_asked_first() {
        // Prometheus 3 with scrape_native_histograms; Prometheus 2.42 with the feature flag.
        let p3 = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        assert_eq!(negotiate(Some(p3)).format, Format::Protobuf);
        let p2 = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(p2)).format, Format::Protobuf);
        assert_eq!(
            negotiate(Some(super::super::ASK_APPS)).format,
            Format::Protobuf
        );
        // Other encodings or messages are not ours.
        for other in [
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
            "application/vnd.google.protobuf;proto=other.Message;encoding=delimited",
            "application/vnd.google.protobuf",
        ] {
            assert_eq!(negotiate(Some(other)).format, Format::Text, "{other}");
        }
        assert_eq!(
            from_content_type(Some(super::super::proto::CONTENT_TYPE)),
            Format::Protobuf
        );
    }

    #[test]
    fn fallbacks() {
        assert_eq!(negotiate(None).format, Format::Text);
        assert_eq!(negotiate(Some("*/*")).format, Format::Text);
        assert_eq!(negotiate(Some("application/json")).format, Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text; version=\"1.0.0\"")).format,
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0,text/plain")).format,
            Format::Text
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=2.0.0")).format,
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

    fn answer(accept: Option<&str>) -> (Format, Escaping, bool, String) {
        let a = negotiate(accept);
        (a.format, a.escaping, a.text_1, a.content_type())
    }

    #[test]
    fn escaping_and_content_types_as_expfmt() {
        use Escaping::*;
        let om = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        let text = "text/plain; version=0.0.4; charset=utf-8";
        let text1 = "text/plain; version=1.0.0; charset=utf-8";
        let pb = super::super::proto::CONTENT_TYPE;
        let cases: [(Option<&str>, Format, Escaping, bool, String); 13] = [
            // What loupe asks apps with.
            (Some(super::super::ASK_APPS), Format::Protobuf, AllowUtf8, false, format!("{pb}; escaping=allow-utf-8")),
            // Prometheus 3's default, and with native histograms (its protobuf range names no
            // scheme: underscores, as client_golang answers).
            (Some("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
                Format::OpenMetrics, AllowUtf8, false, format!("{om}; escaping=allow-utf-8")),
            (Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"),
                Format::Protobuf, Underscores, false, format!("{pb}; escaping=underscores")),
            // Prometheus 2.42's default, and with native histograms.
            (Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                Format::OpenMetrics, Underscores, false, format!("{om}; escaping=underscores")),
            (Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                Format::Protobuf, Underscores, false, format!("{pb}; escaping=underscores")),
            (None, Format::Text, Underscores, false, format!("{text}; escaping=underscores")),
            (Some("*/*"), Format::Text, Underscores, false, format!("{text}; escaping=underscores")),
            (Some("text/plain;version=1.0.0;escaping=allow-utf-8"), Format::Text, AllowUtf8, true, format!("{text1}; escaping=allow-utf-8")),
            (Some("text/plain;version=1.0.0;escaping=dots"), Format::Text, Dots, true, format!("{text1}; escaping=dots")),
            (Some("application/openmetrics-text;version=1.0.0;escaping=values"), Format::OpenMetrics, Values, false, format!("{om}; escaping=values")),
            (Some("text/plain;version=0.0.4;escaping=underscores"), Format::Text, Underscores, false, format!("{text}; escaping=underscores")),
            // Unknown schemes are ignored; a scheme carries on to a later range that matches.
            (Some("text/plain;escaping=bogus"), Format::Text, Underscores, false, format!("{text}; escaping=underscores")),
            (Some("application/json;escaping=dots,text/plain;q=0.5"), Format::Text, Dots, false, format!("{text}; escaping=dots")),
        ];
        for (accept, format, escaping, text_1, ct) in cases {
            assert_eq!(answer(accept), (format, escaping, text_1, ct), "{accept:?}");
        }
    }
}
