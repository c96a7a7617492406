//! Aligned text tables for `nannyctl`'s human output.
//!
//! Runs in `nannyctl`. Cells come from the daemon's replies, which are outside input: every
//! control character is escaped ([`clean`]) so a label or a rule's text cannot move the cursor
//! or clear the operator's terminal.

/// How a column is aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table: a header row, then rows of the same width.
#[derive(Clone, Debug)]
pub struct Table {
    heads: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns as (header, alignment).
    pub fn new(cols: &[(&'static str, Align)]) -> Table {
        Table {
            heads: cols.iter().map(|c| c.0).collect(),
            align: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells are cleaned, missing ones are blank, extra ones dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut r: Vec<String> = cells
            .into_iter()
            .take(self.heads.len())
            .map(|c| clean(&c))
            .collect();
        r.resize(self.heads.len(), String::new());
        self.rows.push(r);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, two spaces between columns, no trailing blanks, one `\n` per line.
    pub fn render(&self) -> String {
        let n = self.heads.len();
        let mut width: Vec<usize> = self.heads.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let heads: Vec<String> = self.heads.iter().map(|h| (*h).to_owned()).collect();
        for r in std::iter::once(&heads).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                let w = width.get(i).copied().unwrap_or(0);
                let pad = w.saturating_sub(c.chars().count());
                let last = i + 1 == n;
                if i > 0 {
                    line.push_str("  ");
                }
                match self.align.get(i) {
                    Some(Align::Right) => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(c);
                    }
                    _ => {
                        line.push_str(c);
                        if !last {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `s` with control characters (and the Unicode line and bidi controls) escaped.
pub fn clean(s: &str) -> String {
    let risky = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !s.chars().any(risky) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if risky(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_without_trailing_blanks() {
        let mut t = Table::new(&[
            ("ID", Align::Right),
            ("PEER", Align::Left),
            ("CLASS", Align::Left),
        ]);
        t.row(vec!["7".into(), "127.0.0.1:4000".into(), "web".into()]);
        t.row(vec!["1234".into(), "10.0.0.1:5".into(), "-".into()]);
        t.row(vec!["9".into()]);
        assert_eq!(
            t.render(),
            "  ID  PEER            CLASS\n\
             \x20  7  127.0.0.1:4000  web\n\
             1234  10.0.0.1:5      -\n\
             \x20  9\n"
        );
        let empty = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        assert!(empty.is_empty());
        assert_eq!(empty.render(), "A  B\n");
    }

    #[test]
    fn control_characters_from_the_daemon_are_escaped() {
        assert_eq!(clean("plain text é"), "plain text é");
        assert_eq!(clean("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(clean("x\ny\tz"), "x\\ny\\tz");
        assert_eq!(clean("r\u{202e}l"), "r\\u{202e}l");
        let mut t = Table::new(&[("LABEL", Align::Left), ("N", Align::Right)]);
        t.row(vec!["\x07bell".into(), "1".into()]);
        assert_eq!(t.render(), "LABEL      N\n\\u{7}bell  1\n");
    }
}
