//! What a grammar makes of one line: its kind and its tokens, as offsets into the body. The two
//! grammars ([`super::text`], [`super::openmetrics`]) know their format's syntax and nothing of
//! families; the validator ([`super::validate`]) knows families and nothing of syntax.

use super::index::MType;
use super::lex::Label;
use super::Rejection;
use crate::decode::Format;

/// The syntax of one exposition format, line by line.
pub(super) trait Grammar {
    const FORMAT: Format;

    /// Reads the line `b[start..end]` (without its `\n`) up to a sample's name. `known_name` is
    /// the current family's name: most sample lines start with it, and comparing it word by
    /// word is faster than classifying every byte of the name.
    fn line<'a>(
        b: &'a [u8],
        start: usize,
        end: usize,
        known_name: Option<&[u8]>,
    ) -> Result<Line<'a>, Rejection>;

    /// Reads the rest of a sample line, after its name; the labels go to `scratch.labels`.
    fn sample(
        b: &[u8],
        name: SampleName,
        end: usize,
        scratch: &mut Scratch,
    ) -> Result<SampleLine, Rejection>;
}

/// One line of a body.
pub(super) enum Line<'a> {
    /// Nothing to record: a blank line or a comment (text only).
    Skip,
    /// `# EOF` (OpenMetrics only).
    Eof,
    /// HELP, TYPE or UNIT.
    Metadata(Metadata<'a>),
    /// A sample line: its name is read, the rest is read by [`Grammar::sample`] once the
    /// validator has placed the name in a family (errors come in that order).
    Sample(SampleName),
}

/// A HELP, TYPE or UNIT line.
pub(super) struct Metadata<'a> {
    /// Where the line starts: errors about its place in the body point there.
    pub line_start: usize,
    pub name: &'a [u8],
    pub kind: MetadataKind<'a>,
}

/// A metadata line's argument with the grammar's verdict on it. The verdict is carried rather
/// than reported so that the validator first checks the line's place in the body.
pub(super) enum MetadataKind<'a> {
    /// Raw (escaped) text; `bad_escape` is where an escape the format lacks starts.
    Help {
        text: &'a [u8],
        bad_escape: Option<usize>,
    },
    /// `mtype` is `None` when the word (at `at`) is no type of the format.
    Type { mtype: Option<MType>, at: usize },
    /// `valid` is false when the unit (at `at`) is not made of metric name characters.
    Unit {
        unit: &'a [u8],
        at: usize,
        valid: bool,
    },
}

/// Where a sample line's name is.
#[derive(Clone, Copy)]
pub(super) struct SampleName {
    pub start: usize,
    pub end: usize,
    /// Blanks come before the name (text only).
    pub indented: bool,
}

/// The tokens of one sample line, as offsets into the body.
pub(super) struct SampleLine {
    pub start: usize,
    /// The line's end (its `\n`, excluded).
    pub end: usize,
    pub name_end: usize,
    /// Index after the label block's `}`; `name_end` when there is none.
    pub labels_end: usize,
    pub value: (usize, usize),
    pub timestamp: Option<(usize, usize)>,
    /// An exemplar follows the value (OpenMetrics only).
    pub exemplar: bool,
    /// The line can't be copied as it is ([`super::SLOW`]).
    pub slow: bool,
}

/// Vectors the grammars fill per line, reused from line to line so that no sample allocates.
pub(super) struct Scratch {
    pub labels: Vec<Label>,
    pub exemplar_labels: Vec<Label>,
}

impl Scratch {
    pub(super) fn new() -> Scratch {
        Scratch {
            labels: Vec::with_capacity(16),
            exemplar_labels: Vec::new(),
        }
    }
}
