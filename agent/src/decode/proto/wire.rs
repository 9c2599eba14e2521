//! The protobuf wire format read in place: a message's fields, each a number and a value that
//! borrows the message's bytes. Nothing is allocated; a message is walked again whenever it is
//! read again. Written here rather than taken from prost because prost builds owned messages (a
//! `String` per label name and value, a 488-byte `Metric` per metric), which made decoding a
//! body 1.7 times as slow as parsing the same series as text (BENCHMARKS.md, issue 11); prost
//! still encodes, and the tests and the fuzz target hold this reader to prost's decoding.

use std::borrow::Cow;

/// A field's value by wire type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    /// A group (deprecated), read past; known fields are never groups.
    Group,
}

impl Value<'_> {
    fn wire_name(&self) -> &'static str {
        match self {
            Value::Varint(_) => "varint",
            Value::Fixed64(_) => "64-bit",
            Value::Bytes(_) => "length-delimited",
            Value::Fixed32(_) => "32-bit",
            Value::Group => "group",
        }
    }
}

/// Why a message does not decode: the reason, with the path of fields to it
/// (`Metric.histogram: Histogram.bucket: truncated`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError(pub Cow<'static, str>);

impl WireError {
    pub(super) fn new(reason: &'static str) -> WireError {
        WireError(Cow::Borrowed(reason))
    }

    /// The error inside field `path` (`Message.field`).
    pub(super) fn within(self, path: &str) -> WireError {
        WireError(Cow::Owned(format!("{path}: {}", self.0)))
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Nesting of unknown groups followed, as prost's recursion limit.
const GROUP_DEPTH: usize = 100;

/// Reads a varint at `pos`: its value and where it ends. At most 10 bytes, fitting in 64 bits.
#[inline(always)]
pub(super) fn varint(b: &[u8], pos: usize) -> Result<(u64, usize), &'static str> {
    // Keys, lengths and most values fit in one byte.
    match b.get(pos) {
        Some(&byte) if byte < 0x80 => Ok((u64::from(byte), pos + 1)),
        _ => long_varint(b, pos),
    }
}

fn long_varint(b: &[u8], pos: usize) -> Result<(u64, usize), &'static str> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&byte) = b.get(pos + i) else {
            return Err("truncated varint");
        };
        if i == 9 && byte > 1 {
            return Err("varint longer than 10 bytes or past 64 bits");
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, pos + i + 1));
        }
    }
    Err("varint longer than 10 bytes or past 64 bits")
}

/// One field: its number, its value, and where it is in the message (key to end).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
    pub at: usize,
    pub end: usize,
}

impl<'a> Field<'a> {
    fn wrong(&self, expected: &'static str) -> WireError {
        WireError(Cow::Owned(format!(
            "wire type {}, expected {expected}",
            self.value.wire_name()
        )))
    }

    pub fn varint(&self) -> Result<u64, WireError> {
        match self.value {
            Value::Varint(v) => Ok(v),
            _ => Err(self.wrong("varint")),
        }
    }

    /// `int64` (two's complement in 64 bits).
    pub fn int64(&self) -> Result<i64, WireError> {
        self.varint().map(|v| v as i64)
    }

    /// `int32` and enums: the low 32 bits, as protobuf reads them.
    pub fn int32(&self) -> Result<i32, WireError> {
        self.varint().map(|v| v as i32)
    }

    pub fn uint32(&self) -> Result<u32, WireError> {
        self.varint().map(|v| v as u32)
    }

    pub fn sint32(&self) -> Result<i32, WireError> {
        // The low 32 bits, then zigzag, as protobuf reads a `sint32`.
        self.varint().map(|v| {
            let v = v as u32;
            ((v >> 1) as i32) ^ -((v & 1) as i32)
        })
    }

    pub fn double(&self) -> Result<f64, WireError> {
        match self.value {
            Value::Fixed64(v) => Ok(f64::from_bits(v)),
            _ => Err(self.wrong("64-bit")),
        }
    }

    /// A message or `bytes` field.
    pub fn bytes(&self) -> Result<&'a [u8], WireError> {
        match self.value {
            Value::Bytes(b) => Ok(b),
            _ => Err(self.wrong("length-delimited")),
        }
    }

    pub fn string(&self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| WireError::new("string not UTF-8"))
    }

    /// A repeated `sint64` field's values here: packed, or one unpacked.
    pub fn sint64s(&self, out: &mut Vec<i64>) -> Result<(), WireError> {
        match self.value {
            Value::Bytes(mut b) => {
                while !b.is_empty() {
                    let (v, end) = varint(b, 0).map_err(WireError::new)?;
                    out.push(zigzag(v));
                    b = &b[end..];
                }
                Ok(())
            }
            _ => {
                out.push(zigzag(self.varint()?));
                Ok(())
            }
        }
    }

    /// A repeated `double` field's values here: packed, or one unpacked.
    pub fn doubles(&self, out: &mut Vec<f64>) -> Result<(), WireError> {
        match self.value {
            Value::Bytes(b) => {
                if b.len() % 8 != 0 {
                    return Err(WireError::new("packed doubles not a multiple of 8 bytes"));
                }
                out.extend(b.chunks_exact(8).map(|c| {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(c);
                    f64::from_le_bytes(word)
                }));
                Ok(())
            }
            _ => {
                out.push(self.double()?);
                Ok(())
            }
        }
    }
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The fields of a message, in order; the first malformed one ends the walk with its error.
pub(crate) struct Fields<'a> {
    m: &'a [u8],
    pos: usize,
}

/// The fields of message `m`.
pub(crate) fn fields(m: &[u8]) -> Fields<'_> {
    Fields { m, pos: 0 }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, WireError>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.m.len() {
            return None;
        }
        let at = self.pos;
        match field_at(self.m, at, 0) {
            Ok((number, value, end)) => {
                self.pos = end;
                Some(Ok(Field {
                    number,
                    value,
                    at,
                    end,
                }))
            }
            Err(e) => Some(Err(self.fail(e))),
        }
    }
}

impl Fields<'_> {
    /// Where the walk is: after an error, the offset of the malformed field's key.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// The error of the field at `pos`, which ends the walk.
    #[cold]
    fn fail(&mut self, e: &'static str) -> WireError {
        let e = WireError::new(e);
        let e = match key_number(&self.m[self.pos..]) {
            Some(n) => e.within(&format!("field {n}")),
            None => e,
        };
        // Stays at the field; the next call ends the walk.
        self.m = &self.m[..self.pos];
        e
    }
}

/// The number in a well-formed key at the start of `b`.
fn key_number(b: &[u8]) -> Option<u64> {
    let (key, _) = varint(b, 0).ok()?;
    (key >> 3 != 0 && key <= u64::from(u32::MAX)).then_some(key >> 3)
}

/// The field whose key is at `pos`: number, value, end.
#[inline]
fn field_at(m: &[u8], pos: usize, depth: usize) -> Result<(u32, Value<'_>, usize), &'static str> {
    let (key, at) = varint(m, pos)?;
    let key = u32::try_from(key).map_err(|_| "field key past 32 bits")?;
    let number = key >> 3;
    if number == 0 {
        return Err("field number 0");
    }
    let rest = m.get(at..).unwrap_or_default();
    Ok(match key & 7 {
        0 => {
            let (v, end) = varint(m, at)?;
            (number, Value::Varint(v), end)
        }
        1 => {
            let word = rest.first_chunk::<8>().ok_or("truncated field")?;
            (number, Value::Fixed64(u64::from_le_bytes(*word)), at + 8)
        }
        2 => {
            let (len, at) = varint(m, at)?;
            let end = usize::try_from(len)
                .ok()
                .and_then(|l| at.checked_add(l))
                .filter(|&e| e <= m.len())
                .ok_or("length past the end of the message")?;
            (number, Value::Bytes(&m[at..end]), end)
        }
        3 => (number, Value::Group, skip_group(m, at, number, depth + 1)?),
        4 => return Err("group end without its start"),
        5 => {
            let word = rest.first_chunk::<4>().ok_or("truncated field")?;
            (number, Value::Fixed32(u32::from_le_bytes(*word)), at + 4)
        }
        _ => return Err("invalid wire type"),
    })
}

/// Reads past a group's fields to its end key: where the group ends.
fn skip_group(m: &[u8], mut pos: usize, number: u32, depth: usize) -> Result<usize, &'static str> {
    if depth > GROUP_DEPTH {
        return Err("groups nested too deep");
    }
    loop {
        let (key, at) = varint(m, pos)?;
        if key & 7 == 4 {
            return if key >> 3 == u64::from(number) {
                Ok(at)
            } else {
                Err("group ends with another group's end")
            };
        }
        pos = field_at(m, pos, depth)?.2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_of_at_most_10_bytes_within_64_bits() {
        assert_eq!(varint(&[0x96, 0x01], 0), Ok((150, 2)));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(varint(&max, 0), Ok((u64::MAX, 10)));
        let mut over = max;
        over[9] = 0x02;
        assert!(varint(&over, 0).is_err());
        assert!(varint(&[0x80, 0x80], 0).is_err());
    }

    #[test]
    fn fields_walk_every_wire_type_and_stop_at_the_first_bad_one() {
        // 1: varint 1; 2: fixed64; 3: bytes "ab"; 4: fixed32; 5: group with a varint inside.
        let mut m = vec![0x08, 0x01, 0x11];
        m.extend_from_slice(&1.5f64.to_le_bytes());
        m.extend_from_slice(&[
            0x1a, 0x02, b'a', b'b', 0x25, 1, 0, 0, 0, 0x2b, 0x08, 0x07, 0x2c,
        ]);
        let f: Vec<_> = fields(&m).collect::<Result<_, _>>().unwrap();
        assert_eq!(f.len(), 5);
        assert_eq!(f[1].double(), Ok(1.5));
        assert_eq!(f[2].string(), Ok("ab"));
        assert_eq!(f[3].value, Value::Fixed32(1));
        assert_eq!(f[4].value, Value::Group);
        assert!(f[0].double().unwrap_err().0.contains("wire type varint"));
        // A length past the end, an unmatched group end, a wrong group end.
        for bad in [&[0x1a, 0x05, b'a'][..], &[0x0c], &[0x0b, 0x14]] {
            let r: Result<Vec<_>, _> = fields(bad).collect();
            assert!(r.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repeated_scalars_packed_or_not() {
        let mut out = Vec::new();
        // sint64 -1, 1, -2 packed; then 3 unpacked.
        Field {
            number: 1,
            value: Value::Bytes(&[1, 2, 3]),
            at: 0,
            end: 0,
        }
        .sint64s(&mut out)
        .unwrap();
        Field {
            number: 1,
            value: Value::Varint(6),
            at: 0,
            end: 0,
        }
        .sint64s(&mut out)
        .unwrap();
        assert_eq!(out, [-1, 1, -2, 3]);
        let mut d = Vec::new();
        Field {
            number: 1,
            value: Value::Bytes(&2.0f64.to_le_bytes()),
            at: 0,
            end: 0,
        }
        .doubles(&mut d)
        .unwrap();
        assert_eq!(d, [2.0]);
        assert!(Field {
            number: 1,
            value: Value::Bytes(&[0; 7]),
            at: 0,
            end: 0,
        }
        .doubles(&mut d)
        .is_err());
    }
}
