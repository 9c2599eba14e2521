//! Byte-level lexing, the parser's lowest layer and shared with the merge: character classes,
//! blanks, names, number grammars, label blocks, escapes and the series hash. Everything works on
//! offsets into the body; nothing here allocates except the caller's reusable scratch vectors.

/// Character class table: bit 0 = metric name start, 1 = metric name char, 2 = label name start,
/// 3 = label name char.
const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let alpha = b.is_ascii_alphabetic() || b == b'_';
        let digit = b.is_ascii_digit();
        let mut v = 0;
        if alpha || b == b':' {
            v |= 1 | 2;
        }
        if digit {
            v |= 2;
        }
        if alpha {
            v |= 4 | 8;
        }
        if digit {
            v |= 8;
        }
        t[c] = v;
        c += 1;
    }
    t
}

static CLASS: [u8; 256] = classes();

#[inline]
pub(crate) fn is_name_start(b: u8) -> bool {
    CLASS[b as usize] & 1 != 0
}
#[inline]
pub(crate) fn is_name_char(b: u8) -> bool {
    CLASS[b as usize] & 2 != 0
}
#[inline]
pub(crate) fn is_label_start(b: u8) -> bool {
    CLASS[b as usize] & 4 != 0
}
#[inline]
pub(crate) fn is_label_char(b: u8) -> bool {
    CLASS[b as usize] & 8 != 0
}

/// Byte-slice equality without a call into libc's memcmp: the slices compared on the hot path
/// (label names, family names) are short, where the call costs more than the comparison.
#[inline]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i + 8 <= a.len() {
        let x = u64::from_ne_bytes([
            a[i],
            a[i + 1],
            a[i + 2],
            a[i + 3],
            a[i + 4],
            a[i + 5],
            a[i + 6],
            a[i + 7],
        ]);
        let y = u64::from_ne_bytes([
            b[i],
            b[i + 1],
            b[i + 2],
            b[i + 3],
            b[i + 4],
            b[i + 5],
            b[i + 6],
            b[i + 7],
        ]);
        if x != y {
            return false;
        }
        i += 8;
    }
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Index of the end of the metric name starting at `i` (== `i` if none).
#[inline]
pub(crate) fn scan_name(b: &[u8], i: usize) -> usize {
    let mut j = i;
    if j < b.len() && is_name_start(b[j]) {
        j += 1;
        while j < b.len() && is_name_char(b[j]) {
            j += 1;
        }
    }
    j
}

/// Index of the end of the label name starting at `i` (== `i` if none).
#[inline]
pub(crate) fn scan_label_name(b: &[u8], i: usize) -> usize {
    let mut j = i;
    if j < b.len() && is_label_start(b[j]) {
        j += 1;
        while j < b.len() && is_label_char(b[j]) {
            j += 1;
        }
    }
    j
}

/// Index of the end of the metric name starting at `i` and ending before `end` (== `i` if none).
/// When the name starts with `known` (a name already checked) only the rest is classified.
#[inline]
pub(crate) fn scan_name_from(b: &[u8], i: usize, end: usize, known: Option<&[u8]>) -> usize {
    match known {
        Some(n) if end - i >= n.len() && bytes_eq(&b[i..i + n.len()], n) => {
            let mut j = i + n.len();
            while j < end && is_name_char(b[j]) {
                j += 1;
            }
            j
        }
        _ => scan_name(&b[..end], i),
    }
}

/// A blank between tokens: text 0.0.4 allows spaces and tabs where OpenMetrics has one space.
#[inline]
pub(crate) fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Index of the first byte at or after `i` that is not blank (`end` if none).
#[inline]
pub(crate) fn skip_blanks(b: &[u8], mut i: usize, end: usize) -> usize {
    while i < end && is_blank(b[i]) {
        i += 1;
    }
    i
}

fn digits(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && s[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// OpenMetrics `realnumber`: `[sign] (digits ["." digits] | "." digits) [e [sign] digits]`.
pub(crate) fn is_realnumber(s: &[u8]) -> bool {
    let mut i = 0;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        i += 1;
    }
    let int_end = digits(s, i);
    let mut have = int_end > i;
    i = int_end;
    if i < s.len() && s[i] == b'.' {
        let frac_end = digits(s, i + 1);
        have |= frac_end > i + 1;
        i = frac_end;
    }
    if !have {
        return false;
    }
    if i < s.len() && (s[i] == b'e' || s[i] == b'E') {
        i += 1;
        if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
            i += 1;
        }
        let e = digits(s, i);
        if e == i {
            return false;
        }
        i = e;
    }
    i == s.len()
}

/// OpenMetrics `number`: a realnumber, `[sign] inf|infinity` or `nan` (case-insensitive). The text
/// format's values (Go `ParseFloat` minus hex and underscores) are the same set.
pub(crate) fn is_number(s: &[u8]) -> bool {
    if is_realnumber(s) {
        return true;
    }
    let t = match s.first() {
        Some(b'+') | Some(b'-') => &s[1..],
        _ => s,
    };
    t.eq_ignore_ascii_case(b"inf")
        || t.eq_ignore_ascii_case(b"infinity")
        || (t.len() == s.len() && t.eq_ignore_ascii_case(b"nan"))
}

/// Text-format timestamp: an integer number of milliseconds.
pub(crate) fn is_int(s: &[u8]) -> bool {
    let i = usize::from(matches!(s.first(), Some(b'+') | Some(b'-')));
    i < s.len() && s[i..].iter().all(u8::is_ascii_digit)
}

/// Parses a token already checked by [`is_number`].
pub(crate) fn to_f64(s: &[u8]) -> f64 {
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// Parses a `le` or `quantile` label value (raw, already unescaped-safe: numbers have no escapes).
/// OpenMetrics allows only `+Inf` as the infinite spelling there.
pub(crate) fn bound_value(s: &[u8], strict: bool) -> Option<f64> {
    if is_realnumber(s) {
        return Some(to_f64(s));
    }
    if s == b"+Inf" || (!strict && is_number(s)) {
        return Some(to_f64(s));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Hashing: a small Fx-style hash over 8-byte words, with a murmur finaliser so that per-label
// hashes can be summed into an order-independent label-set hash.

const K: u64 = 0x517c_c1b7_2722_0a95;

#[inline]
fn mix(h: u64, w: u64) -> u64 {
    (h.rotate_left(5) ^ w).wrapping_mul(K)
}

#[inline]
pub(crate) fn hash_bytes(mut h: u64, b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = mix(h, w);
    }
    let mut t = 0u64;
    for (k, &x) in chunks.remainder().iter().enumerate() {
        t |= u64::from(x) << (8 * k);
    }
    mix(h, t ^ ((b.len() as u64) << 59))
}

#[inline]
pub(crate) fn fmix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Hash of one label pair, to be summed (order-independent) over a label set.
#[inline]
pub(crate) fn pair_hash(name: &[u8], raw_value: &[u8]) -> u64 {
    fmix(hash_bytes(hash_bytes(0x9e37_79b9, name), raw_value))
}

/// Hash of a sample name, to be added to its label set's hash.
#[inline]
pub(crate) fn name_hash(name: &[u8]) -> u64 {
    fmix(hash_bytes(0x2545_f491, name))
}

// ---------------------------------------------------------------------------------------------
// Label blocks.

/// One label of a label block: byte ranges (absolute in the body) of its name and raw value
/// (between the quotes, escapes left as they are).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Label {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

impl Label {
    pub fn name<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        &b[self.name.0 as usize..self.name.1 as usize]
    }
    pub fn value<'a>(&self, b: &'a [u8]) -> &'a [u8] {
        &b[self.value.0 as usize..self.value.1 as usize]
    }
}

/// What lexing a label block found beyond the labels themselves.
#[derive(Default, Clone, Copy)]
pub(crate) struct BlockInfo {
    /// Blanks, a trailing comma or another spelling that only the text format allows.
    pub noncanonical: bool,
    /// A label value has an escape other than `\\`, `\"`, `\n` (OpenMetrics keeps it literally).
    pub odd_escape: bool,
}

/// Labels allowed on one line. The duplicate-name check is quadratic, so a hostile body could
/// otherwise make a single line cost seconds; real expositions have a handful.
pub(crate) const MAX_LABELS: usize = 1024;

/// A lexing error: byte offset and reason.
pub(crate) type LexError = (usize, &'static str);

/// Lexes the label block whose `{` is at `b[i]`; returns the index after its `}`. `strict`
/// selects OpenMetrics (no blanks, no trailing comma, unknown escapes kept) over text 0.0.4
/// (blanks and a trailing comma allowed, unknown escapes rejected as Go's expfmt does).
pub(crate) fn lex_labels(
    b: &[u8],
    i: usize,
    strict: bool,
    out: &mut Vec<Label>,
    info: &mut BlockInfo,
) -> Result<usize, LexError> {
    out.clear();
    let mut j = i + 1;
    let skip = |j: &mut usize, info: &mut BlockInfo| {
        while *j < b.len() && (b[*j] == b' ' || b[*j] == b'\t') {
            *j += 1;
            info.noncanonical = true;
        }
    };
    loop {
        if !strict {
            skip(&mut j, info);
        }
        match b.get(j) {
            Some(b'}') => {
                if !out.is_empty() {
                    if strict {
                        return Err((j, "trailing comma in label set"));
                    }
                    info.noncanonical = true;
                }
                return Ok(j + 1);
            }
            None | Some(b'\n') => return Err((j, "unterminated label set")),
            _ => {}
        }
        let ne = scan_label_name(b, j);
        if ne == j {
            return Err((j, "invalid label name"));
        }
        let name = (j as u32, ne as u32);
        j = ne;
        if !strict {
            skip(&mut j, info);
        }
        if b.get(j) != Some(&b'=') {
            return Err((j, "expected '=' after label name"));
        }
        j += 1;
        if !strict {
            skip(&mut j, info);
        }
        if b.get(j) != Some(&b'"') {
            return Err((j, "expected '\"' to start label value"));
        }
        let vs = j + 1;
        j = scan_label_value(b, vs, strict, info)?;
        if out.len() >= MAX_LABELS {
            return Err((name.0 as usize, "more than 1024 labels on one line"));
        }
        let name_bytes = &b[name.0 as usize..name.1 as usize];
        if out.iter().any(|l| bytes_eq(l.name(b), name_bytes)) {
            return Err((name.0 as usize, "duplicate label name"));
        }
        out.push(Label {
            name,
            value: (vs as u32, j as u32),
        });
        j += 1;
        if !strict {
            skip(&mut j, info);
        }
        match b.get(j) {
            Some(b',') => {
                j += 1;
                if strict && b.get(j) == Some(&b'}') {
                    return Err((j, "trailing comma in label set"));
                }
            }
            Some(b'}') => return Ok(j + 1),
            _ => return Err((j, "expected ',' or '}' after label value")),
        }
    }
}

/// Index of the `"` that ends the label value starting at `b[i]` (after its opening quote).
/// Unknown escapes are kept in OpenMetrics (`strict`, noted in `info`) and rejected in text.
#[inline]
fn scan_label_value(
    b: &[u8],
    mut j: usize,
    strict: bool,
    info: &mut BlockInfo,
) -> Result<usize, LexError> {
    loop {
        // Jump to the next quote or backslash; `b` ends at the line's end.
        j = memchr::memchr2(b'"', b'\\', &b[j..]).map_or(b.len(), |k| j + k);
        match b.get(j) {
            Some(b'"') => return Ok(j),
            Some(b'\\') => {
                match b.get(j + 1) {
                    Some(b'\\') | Some(b'"') | Some(b'n') => {}
                    Some(b'\n') | None => return Err((j, "unterminated label value")),
                    Some(_) => {
                        if !strict {
                            return Err((j, "invalid escape sequence in label value"));
                        }
                        info.odd_escape = true;
                    }
                }
                j += 2;
            }
            Some(b'\n') | None => return Err((j, "unterminated label value")),
            Some(_) => j += 1,
        }
    }
}

/// Lexes the label block that starts at `b[i]`, if one does (see [`lex_labels`]): returns the
/// index after it (`i` without one) and whether the line can't be copied as it is (a spelling
/// only text allows, or an escape to re-escape).
#[inline]
pub(crate) fn label_block(
    b: &[u8],
    i: usize,
    end: usize,
    strict: bool,
    out: &mut Vec<Label>,
) -> Result<(usize, bool), LexError> {
    out.clear();
    if i < end && b[i] == b'{' {
        let mut info = BlockInfo::default();
        let after = lex_labels(&b[..end], i, strict, out, &mut info)?;
        return Ok((after, info.noncanonical || info.odd_escape));
    }
    Ok((i, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        for ok in [
            "1", "-1", "+1", "1.", ".5", "1.5e3", "1E+05", "0001", "NaN", "nan", "+Inf", "-inf",
            "Infinity",
        ] {
            assert!(is_number(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", ".", "e5", "1e", "0x1", "1_2", "0x1p-3", "a", "+NaN", "1 ", "1.1.1", "--1",
        ] {
            assert!(!is_number(bad.as_bytes()), "{bad}");
        }
        assert!(!is_realnumber(b"Inf"));
        assert!(is_int(b"-123") && !is_int(b"1.5") && !is_int(b"-"));
    }

    #[test]
    fn label_block_with_specials_in_values() {
        let b = br##"{a="x,y=z}",b="q\"#\\",c="\n"} 1"##;
        let mut v = Vec::new();
        let mut info = BlockInfo::default();
        let end = lex_labels(b, 0, true, &mut v, &mut info).unwrap();
        assert_eq!(&b[end..], b" 1");
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].value(b), b"x,y=z}");
        assert_eq!(v[1].value(b), br##"q\"#\\"##);
        assert!(!info.noncanonical && !info.odd_escape);
    }

    #[test]
    fn label_block_errors() {
        let mut v = Vec::new();
        let mut info = BlockInfo::default();
        for bad in [
            &br#"{a="1",}"#[..],
            br#"{a="1",,b="2"}"#,
            br#"{a="1"b="2"}"#,
            br#"{a=1}"#,
            br#"{a="1}"#,
            br#"{1="1"}"#,
            br#"{a="1",a="2"}"#,
        ] {
            assert!(lex_labels(bad, 0, true, &mut v, &mut info).is_err());
        }
        // Text allows blanks and a trailing comma, but not unknown escapes.
        assert!(lex_labels(br#"{ a = "1" , }"#, 0, false, &mut v, &mut info).is_ok());
        assert!(info.noncanonical);
        assert!(lex_labels(br#"{a="\z"}"#, 0, false, &mut v, &mut info).is_err());
    }

    #[test]
    fn label_count_is_bounded() {
        let mut line = String::from("{");
        for i in 0..=MAX_LABELS {
            line += &format!("l{i}=\"\",");
        }
        line.pop();
        line.push('}');
        let mut v = Vec::new();
        let mut info = BlockInfo::default();
        let e = lex_labels(line.as_bytes(), 0, true, &mut v, &mut info).unwrap_err();
        assert!(e.1.contains("1024"));
    }

    #[test]
    fn label_hash_is_order_independent() {
        let a = pair_hash(b"a", b"1").wrapping_add(pair_hash(b"b", b"2"));
        let b = pair_hash(b"b", b"2").wrapping_add(pair_hash(b"a", b"1"));
        assert_eq!(a, b);
        assert_ne!(pair_hash(b"a", b"1"), pair_hash(b"a1", b""));
    }
}
