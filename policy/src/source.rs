//! Source text, positions and diagnostics shared by all three configuration languages.
//!
//! Runs in the parent (at start, on reload and for `-C`) and in the classifier (which re-parses the
//! rules text the parent sends). The bytes are the administrator's files: trusted, but every error
//! must name file, line and column so a typo is found in seconds.
//!
//! The reader implements the file format common to nanny.conf, rules and actions: comment lines
//! (first non-blank character `#`), blank lines, and continuation lines (a line that starts with
//! a space or tab is glued to the previous logical line with one space, after trimming the end of
//! the previous text and the start of the new one). Comments may sit inside a continuation.

use std::fmt;

/// How bad a diagnostic is. Errors stop a file from loading; warnings never do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One error or warning, anchored to a physical position in a named file.
///
/// `code` is stable so tests and documentation can refer to it: `F…` for the shared file format,
/// `C…` nanny.conf, `R…` rules, `A…` actions, `W…` cross-file warnings from check mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub file: String,
    /// 1-based physical line.
    pub line: u32,
    /// 1-based column (in characters) on that line.
    pub col: u32,
    /// How many characters the caret under the excerpt covers (at least 1).
    pub width: u32,
    pub message: String,
    /// The physical line the position points into, for excerpts.
    pub source_line: String,
}

impl Diagnostic {
    /// The multi-line form used by `-C`: the one-line summary, then the offending line with a
    /// caret under the text.
    pub fn excerpt(&self) -> String {
        let gutter = self.line.to_string();
        let pad = " ".repeat(gutter.len());
        let lead: String = self
            .source_line
            .chars()
            .take(self.col.saturating_sub(1) as usize)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!(
            "{self}\n{pad} |\n{gutter} | {}\n{pad} | {lead}{}",
            self.source_line,
            "^".repeat(self.width.max(1) as usize)
        )
    }
}

impl fmt::Display for Diagnostic {
    /// The one-line form used in syslog: `file:line:col: error[R012]: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}[{}]: {}",
            self.file, self.line, self.col, self.severity, self.code, self.message
        )
    }
}

impl std::error::Error for Diagnostic {}

/// Where a run of a logical line's text came from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Piece {
    /// Byte offset in the logical text where this piece starts.
    start: usize,
    /// Physical line number (1-based).
    line: u32,
    /// Byte offset in the physical line of the piece's first byte.
    phys_start: usize,
}

/// One logical line: a line plus its continuations, with enough bookkeeping to turn any byte
/// offset in `text` back into a physical line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalLine {
    /// Physical line number where the logical line starts (what portnanny calls the line number).
    pub lineno: u32,
    pub text: String,
    pieces: Vec<Piece>,
}

/// A named source file, split into physical lines once so diagnostics can quote them.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    lines: Vec<String>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: &str) -> SourceFile {
        SourceFile {
            name: name.into(),
            lines: text.lines().map(str::to_owned).collect(),
        }
    }

    /// The physical line `n` (1-based), or "" past the end.
    pub fn physical_line(&self, n: u32) -> &str {
        n.checked_sub(1)
            .and_then(|i| self.lines.get(i as usize))
            .map_or("", String::as_str)
    }

    /// Splits the file into logical lines, or returns the diagnostic for a file whose first
    /// non-comment line is indented (a continuation of nothing).
    pub fn logical_lines(&self) -> Result<Vec<LogicalLine>, Diagnostic> {
        let mut out: Vec<LogicalLine> = Vec::new();
        for (idx, raw) in self.lines.iter().enumerate() {
            let lineno = u32::try_from(idx + 1).unwrap_or(u32::MAX);
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = line.trim_start_matches([' ', '\t']);
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indented = trimmed.len() != line.len();
            match out.last_mut() {
                Some(prev) if indented => {
                    let kept = prev.text.trim_end().len();
                    prev.text.truncate(kept);
                    // Pieces are in start order, so only trailing ones can lie past the cut;
                    // popping them keeps a long continuation linear (retain was quadratic).
                    while prev.pieces.last().is_some_and(|p| p.start > kept) {
                        prev.pieces.pop();
                    }
                    prev.text.push(' ');
                    prev.pieces.push(Piece {
                        start: prev.text.len(),
                        line: lineno,
                        phys_start: line.len() - trimmed.len(),
                    });
                    prev.text.push_str(trimmed);
                }
                None if indented => {
                    return Err(self.diagnostic(
                        Severity::Error,
                        "F001",
                        lineno,
                        1,
                        1,
                        "the first line is indented, which makes it a continuation of nothing"
                            .to_owned(),
                    ));
                }
                _ => out.push(LogicalLine {
                    lineno,
                    text: line.to_owned(),
                    pieces: vec![Piece {
                        start: 0,
                        line: lineno,
                        phys_start: 0,
                    }],
                }),
            }
        }
        Ok(out)
    }

    /// A diagnostic at a byte range of a logical line.
    pub fn diag_at(
        &self,
        severity: Severity,
        code: &'static str,
        ll: &LogicalLine,
        range: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, col) = self.position(ll, range.start);
        let width = ll
            .text
            .get(range.clone())
            .map_or(1, |s| s.chars().count().max(1));
        self.diagnostic(
            severity,
            code,
            line,
            col,
            u32::try_from(width).unwrap_or(1),
            message.into(),
        )
    }

    /// A diagnostic at a physical line and column.
    pub fn diagnostic(
        &self,
        severity: Severity,
        code: &'static str,
        line: u32,
        col: u32,
        width: u32,
        message: String,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            code,
            file: self.name.clone(),
            line,
            col,
            width,
            message,
            source_line: self.physical_line(line).to_owned(),
        }
    }

    /// Physical (line, 1-based character column) of a byte offset in a logical line.
    pub fn position(&self, ll: &LogicalLine, offset: usize) -> (u32, u32) {
        let piece = ll
            .pieces
            .iter()
            .rev()
            .find(|p| p.start <= offset)
            .or(ll.pieces.first());
        let Some(piece) = piece else {
            return (ll.lineno, 1);
        };
        let phys = self.physical_line(piece.line);
        let byte = piece.phys_start + (offset - piece.start);
        let col = phys
            .get(..byte.min(phys.len()))
            .map_or(byte, |s| s.chars().count());
        (piece.line, u32::try_from(col + 1).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<(u32, String)> {
        SourceFile::new("f", text)
            .logical_lines()
            .unwrap()
            .into_iter()
            .map(|l| (l.lineno, l.text))
            .collect()
    }

    #[test]
    fn comments_blanks_and_continuations() {
        let text = "# c\n\na: b\n\tc   \n   # inner comment\n  d\ne: f\n";
        assert_eq!(
            lines(text),
            vec![(3, "a: b c d".to_owned()), (7, "e: f".to_owned())]
        );
    }

    #[test]
    fn trailing_space_kept_when_not_continued() {
        assert_eq!(lines("a  \n"), vec![(1, "a  ".to_owned())]);
    }

    #[test]
    fn indented_first_line_is_an_error() {
        let err = SourceFile::new("rules", "# x\n  a: b\n")
            .logical_lines()
            .unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.code, "F001");
        assert!(err.to_string().starts_with("rules:2:1: error[F001]:"));
    }

    #[test]
    fn offsets_map_back_to_physical_positions() {
        let src = SourceFile::new("r", "cls: ip: 1.2.3.4\n\t  hostname: x\n");
        let ll = &src.logical_lines().unwrap()[0];
        let off = ll.text.find("hostname").unwrap();
        assert_eq!(src.position(ll, off), (2, 4));
        assert_eq!(src.position(ll, 5), (1, 6));
        let d = src.diag_at(Severity::Error, "R000", ll, off..off + 9, "bad");
        assert_eq!(d.to_string(), "r:2:4: error[R000]: bad");
        assert!(d.excerpt().ends_with("\t  ^^^^^^^^^"));
    }
}

/// What every parser returns: the value when there were no errors, and every diagnostic
/// (errors and warnings) found on the way, in file order.
#[derive(Clone, Debug)]
pub struct Parsed<T> {
    pub value: Option<T>,
    pub diagnostics: Vec<Diagnostic>,
}

impl<T> Parsed<T> {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}
