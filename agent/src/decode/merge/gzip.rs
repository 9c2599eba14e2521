//! gzip of a merge's output as several gzip members (RFC 1952, section 2.2: a gzip stream is a
//! sequence of members, each with its own header, deflate data, CRC-32 and length; Go's
//! `gzip.Reader`, which Prometheus uses, `curl --compressed` and Python's `gzip` read them as one
//! stream). A rendering's large blocks are compressed once, when the store keeps the rendering
//! ([`GzipMembers`]); a gzip merge writes the plan as the chunk list does, and sends each picked
//! block that has a stored member as that member, not compressing it again. What is new at every
//! scrape (the headers, small blocks, lines picked one by one, loupe's own series, blocks of
//! renderings made by the merge) is compressed then, into members of its own: one per run of
//! such pieces between two stored members.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use super::render::Rendered;
use super::write::Sink;

/// Level of the members made when a rendering is kept: 6 is zlib's (and Go's) default; the
/// size and time at each level are in BENCHMARKS.md.
pub const MEMBER_LEVEL: u32 = 6;
/// Blocks below this size get no stored member: each member costs 18 bytes of header and
/// trailer and starts its dictionary afresh, so small blocks compress better together at
/// scrape time, with their neighbours (BENCHMARKS.md).
pub const MIN_MEMBER_BLOCK: usize = 2048;
/// Level of what is compressed at scrape time.
pub const SCRAPE_LEVEL: u32 = 6;

/// The gzip members of a rendering's blocks of at least `min_block` bytes, made once and kept
/// beside it (`ingest::Snapshot`). A gzip merge finds a picked block's member by the
/// rendering's lines (the very buffer, held here) and the block's range.
#[derive(Debug)]
pub struct GzipMembers {
    /// The rendering's lines, which the members compress: held so that no other buffer can
    /// take their address while these members exist.
    lines: Bytes,
    /// Every member, one after the other.
    data: Bytes,
    /// Per member: the block's range in `lines`, the member's range in `data`; by block start.
    index: Vec<(Range<u32>, Range<u32>)>,
}

impl GzipMembers {
    /// The members of `rendered`'s blocks, at [`MEMBER_LEVEL`], for blocks of at least
    /// [`MIN_MEMBER_BLOCK`] bytes.
    pub fn new(rendered: &Rendered) -> GzipMembers {
        GzipMembers::with(rendered, MEMBER_LEVEL, MIN_MEMBER_BLOCK)
    }

    /// The members of `rendered`'s blocks of at least `min_block` bytes, at `level` (0-9).
    pub fn with(rendered: &Rendered, level: u32, min_block: usize) -> GzipMembers {
        let lines = rendered.lines.clone();
        let mut blocks: Vec<Range<u32>> = rendered
            .blocks
            .iter()
            .map(|b| b.lines.0..b.lines.1)
            .filter(|r| r.len() >= min_block.max(1))
            .collect();
        blocks.sort_by_key(|r| r.start);
        blocks.dedup();
        let total: usize = blocks.iter().map(|r| r.len()).sum();
        let mut data = Vec::with_capacity(total / 8 + 64);
        let mut deflate = Deflate::new(level);
        let mut index = Vec::with_capacity(blocks.len());
        for block in blocks {
            let start = data.len();
            deflate.write(&lines[block.start as usize..block.end as usize], &mut data);
            deflate.finish(&mut data);
            index.push((block, start as u32..data.len() as u32));
        }
        data.shrink_to_fit();
        GzipMembers {
            lines,
            data: Bytes::from(data),
            index,
        }
    }

    /// Heap bytes held (the lines are the rendering's, not counted).
    pub fn heap_bytes(&self) -> usize {
        self.data.len() + self.index.capacity() * std::mem::size_of::<(Range<u32>, Range<u32>)>()
    }

    /// Bytes of members.
    pub fn compressed_bytes(&self) -> usize {
        self.data.len()
    }

    /// Blocks with a member.
    pub fn members(&self) -> usize {
        self.index.len()
    }

    /// The member of exactly `range` of `lines`, if these members are of `lines`.
    fn find(&self, lines: &Bytes, range: &Range<usize>) -> Option<Bytes> {
        if lines.as_ptr() != self.lines.as_ptr() || lines.len() != self.lines.len() {
            return None;
        }
        let at = self
            .index
            .binary_search_by_key(&range.start, |(block, _)| block.start as usize)
            .ok()?;
        let (block, member) = &self.index[at];
        (block.end as usize == range.end)
            .then(|| self.data.slice(member.start as usize..member.end as usize))
    }
}

/// One gzip member at a time: a raw deflate stream between the member's header and its trailer
/// (CRC-32 and length of what it holds). The deflate state is reset, not made anew, per member.
struct Deflate {
    compress: Compress,
    crc: Crc,
    open: bool,
}

/// The member header: magic, deflate, no flags, no time, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

impl Deflate {
    fn new(level: u32) -> Deflate {
        Deflate {
            compress: Compress::new(Compression::new(level.min(9)), false),
            crc: Crc::new(),
            open: false,
        }
    }

    /// Adds `input` to the open member (opening one first).
    fn write(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        if !self.open {
            out.extend_from_slice(&HEADER);
            self.open = true;
        }
        self.crc.update(input);
        self.run(input, FlushCompress::None, out);
    }

    /// Ends the open member, if one is open.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.open {
            return;
        }
        self.run(&[], FlushCompress::Finish, out);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        self.compress.reset();
        self.crc.reset();
        self.open = false;
    }

    fn run(&mut self, mut input: &[u8], flush: FlushCompress, out: &mut Vec<u8>) {
        loop {
            if out.capacity() - out.len() < 512 {
                out.reserve((input.len() / 4).max(8192));
            }
            let (before_in, before_out) = (self.compress.total_in(), self.compress.total_out());
            let status = self.compress.compress_vec(input, out, flush);
            let consumed = (self.compress.total_in() - before_in) as usize;
            let produced = self.compress.total_out() - before_out;
            input = &input[consumed..];
            match status {
                Ok(Status::StreamEnd) => return,
                Ok(_) => {}
                // Compressing into a Vec with room cannot fail; stop rather than spin.
                Err(_) => return,
            }
            let room = out.capacity() > out.len();
            // Everything taken, with room left: the rest is the deflater's to hold.
            if flush == FlushCompress::None && input.is_empty() && room {
                return;
            }
            if consumed == 0 && produced == 0 && room {
                return;
            }
        }
    }
}

/// The gzip chunk list: stored members as they are, and the members made at this scrape, all
/// ranges of one buffer frozen at the end.
pub(super) struct GzChunks<'m> {
    /// Stored members by the address of the lines they compress.
    stored: HashMap<usize, &'m GzipMembers>,
    /// Plain text the writer appended, not yet compressed.
    text: Vec<u8>,
    /// The members made here.
    made: Vec<u8>,
    pieces: Vec<GzPiece>,
    /// Start of `made` not yet in `pieces`.
    open: usize,
    deflate: Deflate,
}

enum GzPiece {
    Made(Range<usize>),
    Stored(Bytes),
}

impl<'m> GzChunks<'m> {
    pub(super) fn new(stored: &[&'m GzipMembers], level: u32) -> Self {
        GzChunks {
            stored: stored
                .iter()
                .filter(|m| !m.lines.is_empty())
                .map(|m| (m.lines.as_ptr() as usize, *m))
                .collect(),
            text: Vec::new(),
            made: Vec::new(),
            pieces: Vec::new(),
            open: 0,
            deflate: Deflate::new(level),
        }
    }

    /// Compresses the pending text into the open member.
    fn take_text(&mut self) {
        if !self.text.is_empty() {
            self.deflate.write(&self.text, &mut self.made);
            self.text.clear();
        }
    }

    /// Ends the member made here, if any, as a piece.
    fn close_member(&mut self) {
        self.take_text();
        self.deflate.finish(&mut self.made);
        if self.made.len() > self.open {
            self.pieces.push(GzPiece::Made(self.open..self.made.len()));
            self.open = self.made.len();
        }
    }

    pub(super) fn finish(mut self) -> Vec<Bytes> {
        self.close_member();
        if self.pieces.is_empty() {
            // An empty answer is still a gzip stream: one empty member.
            self.made = gzip_member(&[], 0);
            self.pieces.push(GzPiece::Made(0..self.made.len()));
        }
        let made = Bytes::from(self.made);
        self.pieces
            .into_iter()
            .map(|p| match p {
                GzPiece::Made(r) => made.slice(r),
                GzPiece::Stored(b) => b,
            })
            .collect()
    }
}

impl Sink for GzChunks<'_> {
    fn reserve(&mut self, _text: usize, _blocks: usize) {}

    fn text(&mut self) -> &mut Vec<u8> {
        &mut self.text
    }

    fn block(&mut self, lines: &Bytes, range: Range<usize>) {
        let member = self
            .stored
            .get(&(lines.as_ptr() as usize))
            .and_then(|m| m.find(lines, &range));
        match member {
            Some(member) => {
                self.close_member();
                self.pieces.push(GzPiece::Stored(member));
            }
            None => {
                self.take_text();
                self.deflate.write(&lines[range], &mut self.made);
            }
        }
    }
}

/// One gzip member of `data` at `level`, as [`GzipMembers`] and the scrape make them.
pub fn gzip_member(data: &[u8], level: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut deflate = Deflate::new(level);
    deflate.write(data, &mut out);
    deflate.finish(&mut out);
    if out.is_empty() {
        // An empty member: header, an empty final block, the trailer of nothing.
        deflate.open = true;
        out.extend_from_slice(&HEADER);
        deflate.finish(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::super::{prepare, Format, IdentityLabels, Prepared};
    use super::super::{merge, merge_gzip, Source};
    use super::*;
    use std::io::Read as _;

    fn id(pod: &str) -> Option<IdentityLabels<'_>> {
        Some(IdentityLabels {
            namespace: "ns",
            pod,
            container: "c",
            endpoint: "metrics",
        })
    }

    /// A body with a family large enough for a stored member, and small ones.
    fn body(pod: usize) -> String {
        let mut b = String::from("# HELP big A big family.\n# TYPE big counter\n");
        for i in 0..200 {
            b.push_str(&format!(
                "big_total{{path=\"/api/v{i}\",code=\"200\"}} {}\n",
                i * pod
            ));
        }
        b.push_str("# TYPE small gauge\nsmall 1\n# TYPE tiny_seconds histogram\n");
        b.push_str("tiny_seconds_bucket{le=\"1\"} 1\ntiny_seconds_bucket{le=\"+Inf\"} 2\n");
        b.push_str("tiny_seconds_sum 3\ntiny_seconds_count 2\n");
        b
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// The members one after the other, each decompressed alone.
    fn members_of(mut data: &[u8]) -> Vec<Vec<u8>> {
        let mut members = Vec::new();
        while !data.is_empty() {
            let mut d = flate2::bufread::GzDecoder::new(data);
            let mut out = Vec::new();
            d.read_to_end(&mut out).unwrap();
            data = d.into_inner();
            members.push(out);
        }
        members
    }

    /// `merge_gzip` of three pods (stored members for each) and loupe's own series (none), in
    /// `out`: the gzip answer and the plain one.
    fn answers(out: Format, bodies: &[String]) -> (Vec<Bytes>, Vec<u8>, Vec<GzipMembers>) {
        let pods = ["p0", "p1", "p2"];
        let preps: Vec<Prepared> = bodies
            .iter()
            .map(|b| prepare(b.as_bytes(), Format::Text).unwrap())
            .collect();
        let mut sources: Vec<Source<'_>> = bodies
            .iter()
            .zip(&preps)
            .zip(pods)
            .map(|((b, p), pod)| Source::prepared(id(pod), b.as_bytes(), p))
            .collect();
        let rendered: Vec<Rendered> = sources.iter().map(|s| s.render(out)).collect();
        for (s, r) in sources.iter_mut().zip(&rendered) {
            *s = s.with_rendered(Some(r));
        }
        let own = "# TYPE loupe_target_up gauge\nloupe_target_up{pod=\"p0\"} 1\n";
        sources.push(Source::new(None, own.as_bytes(), Format::Text));
        let members: Vec<GzipMembers> = rendered.iter().map(GzipMembers::new).collect();
        let refs: Vec<&GzipMembers> = members.iter().collect();
        let (plain, stats) = merge(&sources, out);
        let (zipped, zstats) = merge_gzip(&sources, &refs, out, SCRAPE_LEVEL);
        assert_eq!(stats, zstats);
        (zipped, plain.concat(), members)
    }

    #[test]
    fn members_decompress_to_the_plain_answer_in_every_format() {
        let bodies: Vec<String> = (0..3).map(body).collect();
        for out in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
            let (zipped, plain, members) = answers(out, &bodies);
            let stream = zipped.concat();
            assert_eq!(gunzip(&stream), plain, "{out:?}");
            // Several members: the stored ones are sent as they were made.
            for m in &members {
                assert_eq!(m.members(), 1, "{out:?}: the big family's block");
                assert!(
                    zipped.iter().any(|c| c.as_ptr() == m.data.as_ptr()),
                    "{out:?}: a stored member is sent as it is"
                );
            }
            let parts = members_of(&stream);
            assert!(parts.len() >= 4, "{out:?}: {} members", parts.len());
            assert_eq!(parts.concat(), plain);
            // Python's gzip reads the same.
            let python = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn();
            let Ok(mut python) = python else {
                eprintln!("python3 not found: skipping its check");
                continue;
            };
            use std::io::Write as _;
            python.stdin.take().unwrap().write_all(&stream).unwrap();
            let done = python.wait_with_output().unwrap();
            assert!(done.status.success(), "{out:?}");
            assert_eq!(done.stdout, plain, "{out:?}: Python's gzip");
        }
    }

    #[test]
    fn without_stored_members_the_scrape_compresses_everything() {
        let bodies: Vec<String> = (0..3).map(body).collect();
        let preps: Vec<Prepared> = bodies
            .iter()
            .map(|b| prepare(b.as_bytes(), Format::Text).unwrap())
            .collect();
        let sources: Vec<Source<'_>> = bodies
            .iter()
            .zip(&preps)
            .zip(["a", "b", "c"])
            .map(|((b, p), pod)| Source::prepared(id(pod), b.as_bytes(), p))
            .collect();
        // Members of other renderings (another format's) are never used.
        let others: Vec<Rendered> = sources.iter().map(|s| s.render(Format::Text)).collect();
        let members: Vec<GzipMembers> = others.iter().map(GzipMembers::new).collect();
        let refs: Vec<&GzipMembers> = members.iter().collect();
        let (plain, _) = merge(&sources, Format::OpenMetrics);
        let (zipped, _) = merge_gzip(&sources, &refs, Format::OpenMetrics, 1);
        assert_eq!(zipped.len(), 1, "one member made at the scrape");
        assert_eq!(gunzip(&zipped.concat()), plain.concat());
        // An empty answer is an empty member, still gzip.
        let (empty, _) = merge_gzip(&[], &[], Format::Text, 6);
        assert_eq!(gunzip(&empty.concat()), b"");
        assert_eq!(gunzip(&gzip_member(b"", 6)), b"");
    }

    #[test]
    fn members_hold_the_large_blocks_only() {
        let b = body(1);
        let p = prepare(b.as_bytes(), Format::Text).unwrap();
        let r = Source::prepared(id("a"), b.as_bytes(), &p).render(Format::Text);
        let all = GzipMembers::with(&r, 6, 1);
        let large = GzipMembers::with(&r, 6, MIN_MEMBER_BLOCK);
        assert_eq!(all.members(), r.blocks.len());
        assert_eq!(large.members(), 1);
        assert!(large.heap_bytes() < r.lines.len() / 4);
        for (block, member) in &all.index {
            let m = &all.data[member.start as usize..member.end as usize];
            assert_eq!(
                gunzip(m),
                &r.lines[block.start as usize..block.end as usize]
            );
        }
    }
}
