//! Which part of the node target a `/metrics` request reads: the whole node, or the pods of
//! some namespaces (`?namespace=A&namespace=B`), so that a team's Prometheus can scrape exactly
//! its own pods on every node.

/// More namespaces than this in one request is refused: a bound on the reviews one request costs.
pub const MAX_NAMESPACES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum View {
    /// Every pod, and loupe's own series.
    Node,
    /// These namespaces' pods only (sorted, no duplicates), with their `loupe_target_*` series.
    Namespaces(Vec<String>),
}

impl View {
    /// The view a query string asks for; other parameters are ignored. `Err`: why it is refused.
    pub fn of_query(query: Option<&str>) -> Result<View, String> {
        let mut namespaces = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name != "namespace" {
                continue;
            }
            let value = percent_decoded(value).ok_or("a namespace is not percent-encoded text")?;
            if !is_dns_label(&value) {
                return Err(format!(
                    "namespace '{}' is not a Kubernetes namespace name",
                    value.escape_debug()
                ));
            }
            namespaces.push(value);
            if namespaces.len() > MAX_NAMESPACES {
                return Err(format!(
                    "more than {MAX_NAMESPACES} namespaces in one request"
                ));
            }
        }
        if namespaces.is_empty() {
            return Ok(View::Node);
        }
        namespaces.sort();
        namespaces.dedup();
        Ok(View::Namespaces(namespaces))
    }

    pub fn shows(&self, namespace: &str) -> bool {
        match self {
            View::Node => true,
            View::Namespaces(names) => names
                .binary_search_by(|n| n.as_str().cmp(namespace))
                .is_ok(),
        }
    }
}

/// RFC 1123 label: what a namespace name is.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn percent_decoded(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_read_sorted_and_checked() {
        assert_eq!(View::of_query(None), Ok(View::Node));
        assert_eq!(View::of_query(Some("x=1")), Ok(View::Node));
        assert_eq!(
            View::of_query(Some("namespace=web&namespace=shop&namespace=web")),
            Ok(View::Namespaces(vec!["shop".into(), "web".into()]))
        );
        assert_eq!(
            View::of_query(Some("namespace=%73hop")),
            Ok(View::Namespaces(vec!["shop".into()]))
        );
        for bad in [
            "namespace=",
            "namespace=Shop",
            "namespace=a%2Fb",
            "namespace=%zz",
            "namespace=-a",
        ] {
            assert!(View::of_query(Some(bad)).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_NAMESPACES)
            .map(|i| format!("namespace=n{i}"))
            .collect();
        assert!(View::of_query(Some(&many.join("&"))).is_err());
        let view = View::of_query(Some("namespace=shop")).unwrap();
        assert!(view.shows("shop") && !view.shows("web"));
        assert!(View::Node.shows("web"));
    }
}
