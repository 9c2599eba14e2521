//! gzip of a merge's output from pieces compressed apart: one gzip member (RFC 1952) whose
//! deflate stream is the concatenation of raw deflate segments, each ended by a sync flush (an
//! empty stored block, byte-aligned, never final) and made by a deflater started afresh, so that
//! none refers back past its own start; the CRC-32 of the whole is combined from the segments'
//! (pigz builds its output the same way). A rendering's large blocks are compressed once, when
//! the store keeps the rendering ([`GzipBlocks`]); a gzip merge writes the plan as the chunk list
//! does, and sends each picked block that has a stored segment as that segment, not compressing
//! it again. What is new at every scrape (the gzip header and trailer, the family headers, small
//! blocks, lines picked one by one, loupe's own series, blocks of renderings made by the merge) is
//! compressed then, one segment per run of such pieces between two stored segments.
//!
//! Why one member and not one member per piece (RFC 1952 2.2 allows several): Go's
//! `gzip.Reader` (Prometheus) and Python read every member, but curl (`--compressed`, by design:
//! curl/curl#22156), browsers, reqwest and OkHttp stop after the first; a stream of segments is
//! one ordinary member to all of them, and 18 bytes of header and trailer per piece smaller.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use super::render::Rendered;
use super::write::Sink;

/// Level of the segments made when a rendering is kept: 6 is zlib's (and Go's) default; the
/// size and time at each level are in BENCHMARKS.md.
pub const MEMBER_LEVEL: u32 = 6;
/// Blocks below this size get no stored segment: each starts its dictionary afresh, so small
/// blocks compress better together at scrape time, with their neighbours (BENCHMARKS.md).
pub const MIN_MEMBER_BLOCK: usize = 2048;
/// Level of what is compressed at scrape time.
pub const SCRAPE_LEVEL: u32 = 6;

/// The deflate segments of a rendering's blocks of at least `min_block` bytes, made once and
/// kept beside it (`ingest::Snapshot`). A gzip merge finds a picked block's segment by the
/// rendering's lines (the very buffer, held here) and the block's range.
#[derive(Debug)]
pub struct GzipBlocks {
    /// The rendering's lines, which the segments compress: held so that no other buffer can
    /// take their address while these exist.
    lines: Bytes,
    /// Every segment, one after the other.
    data: Bytes,
    /// Per segment: the block's range in `lines`, the segment's range in `data`; by block start.
    index: Vec<(Range<u32>, Range<u32>)>,
    /// Per segment (as `index`): the CRC-32 and length of the block.
    crcs: Vec<Crc>,
}

impl GzipBlocks {
    /// The segments of `rendered`'s blocks, at [`MEMBER_LEVEL`], for blocks of at least
    /// [`MIN_MEMBER_BLOCK`] bytes.
    pub fn new(rendered: &Rendered) -> GzipBlocks {
        GzipBlocks::with(rendered, MEMBER_LEVEL, MIN_MEMBER_BLOCK)
    }

    /// The segments of `rendered`'s blocks of at least `min_block` bytes, at `level` (0-9).
    pub fn with(rendered: &Rendered, level: u32, min_block: usize) -> GzipBlocks {
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
        let mut crcs = Vec::with_capacity(blocks.len());
        for block in blocks {
            let start = data.len();
            deflate.write(&lines[block.start as usize..block.end as usize], &mut data);
            if let Some(crc) = deflate.end_segment(&mut data) {
                index.push((block, start as u32..data.len() as u32));
                crcs.push(crc);
            }
        }
        data.shrink_to_fit();
        GzipBlocks {
            lines,
            data: Bytes::from(data),
            index,
            crcs,
        }
    }

    /// Heap bytes held (the lines are the rendering's, not counted).
    pub fn heap_bytes(&self) -> usize {
        self.data.len()
            + self.index.capacity() * std::mem::size_of::<(Range<u32>, Range<u32>)>()
            + self.crcs.capacity() * std::mem::size_of::<Crc>()
    }

    /// Bytes of segments.
    pub fn compressed_bytes(&self) -> usize {
        self.data.len()
    }

    /// Blocks with a segment.
    pub fn blocks(&self) -> usize {
        self.index.len()
    }

    /// The segment of exactly `range` of `lines`, with its CRC, if these are of `lines`.
    fn find(&self, lines: &Bytes, range: &Range<usize>) -> Option<(Bytes, &Crc)> {
        if lines.as_ptr() != self.lines.as_ptr() || lines.len() != self.lines.len() {
            return None;
        }
        let at = self
            .index
            .binary_search_by_key(&range.start, |(block, _)| block.start as usize)
            .ok()?;
        let (block, segment) = &self.index[at];
        (block.end as usize == range.end).then(|| {
            (
                self.data
                    .slice(segment.start as usize..segment.end as usize),
                &self.crcs[at],
            )
        })
    }
}

/// One raw deflate segment at a time, with the CRC-32 of what it holds. The deflate state is
/// reset, not made anew, per segment.
struct Deflate {
    compress: Compress,
    crc: Crc,
    open: bool,
}

/// The member header: magic, deflate, no flags, no time, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
/// An empty final deflate block (fixed Huffman codes, end of block): ends the segments.
const LAST_BLOCK: [u8; 2] = [3, 0];

impl Deflate {
    fn new(level: u32) -> Deflate {
        Deflate {
            compress: Compress::new(Compression::new(level.min(9)), false),
            crc: Crc::new(),
            open: false,
        }
    }

    /// Adds `input` to the open segment (opening one first).
    fn write(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        self.open = true;
        self.crc.update(input);
        self.run(input, FlushCompress::None, out);
    }

    /// Ends the open segment, if one is open, with a sync flush; returns its CRC.
    fn end_segment(&mut self, out: &mut Vec<u8>) -> Option<Crc> {
        if !self.open {
            return None;
        }
        self.run(&[], FlushCompress::Sync, out);
        self.compress.reset();
        self.open = false;
        Some(std::mem::take(&mut self.crc))
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
            // Everything taken (and flushed, if asked), with room left.
            if input.is_empty() && room {
                return;
            }
            if consumed == 0 && produced == 0 && room {
                return;
            }
        }
    }
}

/// The gzip chunk list: the header, stored segments as they are, the segments made at this
/// scrape, and the trailer, all but the stored ones ranges of one buffer frozen at the end.
pub(super) struct GzChunks<'m> {
    /// Stored segments by the address of the lines they compress.
    stored: HashMap<usize, &'m GzipBlocks>,
    /// Plain text the writer appended, not yet compressed.
    text: Vec<u8>,
    /// The header, the segments made here, the trailer.
    made: Vec<u8>,
    pieces: Vec<GzPiece>,
    /// Start of `made` not yet in `pieces`.
    open: usize,
    deflate: Deflate,
    /// CRC-32 and length of everything so far.
    crc: Crc,
}

enum GzPiece {
    Made(Range<usize>),
    Stored(Bytes),
}

impl<'m> GzChunks<'m> {
    pub(super) fn new(stored: &[&'m GzipBlocks], level: u32) -> Self {
        GzChunks {
            stored: stored
                .iter()
                .filter(|m| !m.lines.is_empty())
                .map(|m| (m.lines.as_ptr() as usize, *m))
                .collect(),
            text: Vec::new(),
            made: HEADER.to_vec(),
            pieces: Vec::new(),
            open: 0,
            deflate: Deflate::new(level),
            crc: Crc::new(),
        }
    }

    /// Compresses the pending text into the open segment.
    fn take_text(&mut self) {
        if !self.text.is_empty() {
            self.deflate.write(&self.text, &mut self.made);
            self.text.clear();
        }
    }

    /// Ends the segment made here, if any, and what `made` holds as a piece.
    fn close_segment(&mut self) {
        self.take_text();
        if let Some(crc) = self.deflate.end_segment(&mut self.made) {
            self.crc.combine(&crc);
        }
        if self.made.len() > self.open {
            self.pieces.push(GzPiece::Made(self.open..self.made.len()));
            self.open = self.made.len();
        }
    }

    pub(super) fn finish(mut self) -> Vec<Bytes> {
        self.take_text();
        if let Some(crc) = self.deflate.end_segment(&mut self.made) {
            self.crc.combine(&crc);
        }
        self.made.extend_from_slice(&LAST_BLOCK);
        self.made.extend_from_slice(&self.crc.sum().to_le_bytes());
        self.made
            .extend_from_slice(&self.crc.amount().to_le_bytes());
        self.pieces.push(GzPiece::Made(self.open..self.made.len()));
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
        let stored = self
            .stored
            .get(&(lines.as_ptr() as usize))
            .and_then(|m| m.find(lines, &range));
        match stored {
            Some((segment, crc)) => {
                self.close_segment();
                self.crc.combine(crc);
                self.pieces.push(GzPiece::Stored(segment));
            }
            None => {
                self.take_text();
                self.deflate.write(&lines[range], &mut self.made);
            }
        }
    }
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
            ..Default::default()
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

    /// The gzip members one after the other, each decompressed alone.
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
    fn answers(out: Format, bodies: &[String]) -> (Vec<Bytes>, Vec<u8>, Vec<GzipBlocks>) {
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
        let members: Vec<GzipBlocks> = rendered.iter().map(GzipBlocks::new).collect();
        let refs: Vec<&GzipBlocks> = members.iter().collect();
        let (plain, stats) = merge(&sources, out);
        let (zipped, zstats) = merge_gzip(&sources, &refs, out, SCRAPE_LEVEL);
        assert_eq!(stats, zstats);
        (zipped, plain.concat(), members)
    }

    #[test]
    fn one_member_decompresses_to_the_plain_answer_in_every_format() {
        let bodies: Vec<String> = (0..3).map(body).collect();
        for out in [Format::Text, Format::OpenMetrics, Format::Protobuf] {
            let (zipped, plain, members) = answers(out, &bodies);
            let stream = zipped.concat();
            assert_eq!(gunzip(&stream), plain, "{out:?}");
            // The stored segments are sent as they were made.
            for m in &members {
                assert_eq!(m.blocks(), 1, "{out:?}: the big family's block");
                assert!(
                    zipped.iter().any(|c| c.as_ptr() == m.data.as_ptr()),
                    "{out:?}: a stored member is sent as it is"
                );
            }
            // One gzip member: a reader that stops after the first (curl) reads it all.
            let parts = members_of(&stream);
            assert_eq!(parts.len(), 1, "{out:?}");
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
        let members: Vec<GzipBlocks> = others.iter().map(GzipBlocks::new).collect();
        let refs: Vec<&GzipBlocks> = members.iter().collect();
        let (plain, _) = merge(&sources, Format::OpenMetrics);
        let (zipped, _) = merge_gzip(&sources, &refs, Format::OpenMetrics, 1);
        assert_eq!(zipped.len(), 1, "all made at the scrape");
        assert_eq!(gunzip(&zipped.concat()), plain.concat());
        // An empty answer is still gzip.
        let (empty, _) = merge_gzip(&[], &[], Format::Text, 6);
        assert_eq!(gunzip(&empty.concat()), b"");
    }

    #[test]
    fn segments_hold_the_large_blocks_only() {
        let b = body(1);
        let p = prepare(b.as_bytes(), Format::Text).unwrap();
        let r = Source::prepared(id("a"), b.as_bytes(), &p).render(Format::Text);
        let all = GzipBlocks::with(&r, 6, 1);
        let large = GzipBlocks::with(&r, 6, MIN_MEMBER_BLOCK);
        assert_eq!(all.blocks(), r.blocks.len());
        assert_eq!(large.blocks(), 1);
        assert!(large.heap_bytes() < r.lines.len() / 4);
        for ((block, segment), crc) in all.index.iter().zip(&all.crcs) {
            let mut raw = all.data[segment.start as usize..segment.end as usize].to_vec();
            raw.extend_from_slice(&LAST_BLOCK);
            let mut plain = Vec::new();
            flate2::read::DeflateDecoder::new(&raw[..])
                .read_to_end(&mut plain)
                .unwrap();
            let want = &r.lines[block.start as usize..block.end as usize];
            assert_eq!(plain, want);
            let mut c = Crc::new();
            c.update(want);
            assert_eq!((crc.sum(), crc.amount()), (c.sum(), c.amount()));
        }
    }
}
