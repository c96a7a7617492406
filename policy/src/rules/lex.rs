//! The rules language's word splitter: turns a rule's EXPRESSION text into tokens with byte spans.
//!
//! Runs in the parent and the classifier on the administrator's rules text. It never panics;
//! every malformed input (an unterminated quote) is an error with a position.
//!
//! The rules, as in the original portnanny:
//! - unquoted whitespace separates words;
//! - `!`, `(`, `)` and `&&` are operators wherever they appear unquoted, even inside a word
//!   (`(a&&b)` is five tokens); a single `&` is an ordinary character;
//! - `AND`, `NOT` and `EXCEPT` are operators only as whole words: at the start of a token and
//!   followed by whitespace or the end (`ANDOVER` and `AND(` start words);
//! - single quotes quote anything, `''` inside quotes is a literal quote, and quotes do not
//!   break words (`a'&&'b` is the one word `a&&b`); a quoted operator is a plain word;
//! - an unterminated quote is an error.

use std::fmt;
use std::ops::Range;

/// One token of a rule expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tok {
    /// An operand word, quotes removed.
    Word(String),
    /// `AND` or `&&`.
    And,
    /// `!` or `NOT`.
    Not,
    Except,
    LParen,
    RParen,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "'{}'", w.replace('\'', "''")),
            Tok::And => f.write_str("AND"),
            Tok::Not => f.write_str("NOT"),
            Tok::Except => f.write_str("EXCEPT"),
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
        }
    }
}

/// A token and the bytes of the expression text it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned {
    pub tok: Tok,
    pub span: Range<usize>,
}

/// An unterminated quote: `start` is the byte offset of the opening quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LexError {
    pub start: usize,
    pub end: usize,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this quote is never closed (write '' for a quote inside quotes)")
    }
}

/// Python's `\s` without the Unicode flag, which is what the original split on.
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn keyword_at(s: &[u8], pos: usize) -> Option<(Tok, usize)> {
    let rest = s.get(pos..)?;
    match rest.first()? {
        b'(' => return Some((Tok::LParen, 1)),
        b')' => return Some((Tok::RParen, 1)),
        b'!' => return Some((Tok::Not, 1)),
        b'&' if rest.get(1) == Some(&b'&') => return Some((Tok::And, 2)),
        _ => {}
    }
    for (word, tok) in [
        (&b"AND"[..], Tok::And),
        (&b"NOT"[..], Tok::Not),
        (&b"EXCEPT"[..], Tok::Except),
    ] {
        if rest.starts_with(word) && rest.get(word.len()).is_none_or(|&b| is_space(b)) {
            return Some((tok, word.len()));
        }
    }
    None
}

/// The next byte at or after `pos` where an unquoted word stops or a quote starts.
fn next_break(s: &[u8], pos: usize) -> Option<usize> {
    let mut i = pos;
    while let Some(&b) = s.get(i) {
        if is_space(b) || matches!(b, b'(' | b')' | b'!' | b'\'') {
            return Some(i);
        }
        if b == b'&' && s.get(i + 1) == Some(&b'&') {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Reads a quoted section starting at the opening quote `q`; returns the content and the
/// offset just past the closing quote.
fn quoted(text: &str, q: usize) -> Result<(String, usize), LexError> {
    let s = text.as_bytes();
    let mut out = String::new();
    let mut i = q + 1;
    loop {
        let rel = s
            .get(i..)
            .and_then(|r| r.iter().position(|&b| b == b'\''))
            .ok_or(LexError {
                start: q,
                end: text.len(),
            })?;
        let close = i + rel;
        out.push_str(text.get(i..close).unwrap_or(""));
        if s.get(close + 1) == Some(&b'\'') {
            out.push('\'');
            i = close + 2;
        } else {
            return Ok((out, close + 1));
        }
    }
}

/// Splits an expression into tokens.
pub fn tokenize(text: &str) -> Result<Vec<Spanned>, LexError> {
    let s = text.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        while s.get(pos).is_some_and(|&b| is_space(b)) {
            pos += 1;
        }
        if pos >= s.len() {
            return Ok(out);
        }
        if let Some((tok, len)) = keyword_at(s, pos) {
            out.push(Spanned {
                tok,
                span: pos..pos + len,
            });
            pos += len;
            continue;
        }
        let start = pos;
        let mut word = String::new();
        loop {
            match next_break(s, pos) {
                Some(b) if s.get(b) == Some(&b'\'') => {
                    word.push_str(text.get(pos..b).unwrap_or(""));
                    let (q, next) = quoted(text, b)?;
                    word.push_str(&q);
                    pos = next;
                }
                Some(b) => {
                    word.push_str(text.get(pos..b).unwrap_or(""));
                    pos = b;
                    break;
                }
                None => {
                    word.push_str(text.get(pos..).unwrap_or(""));
                    pos = s.len();
                    break;
                }
            }
        }
        if pos == start {
            // Cannot happen (keyword_at handles every break character at the start), but a
            // splitter that stops advancing would loop forever, so refuse instead.
            return Err(LexError {
                start,
                end: start + 1,
            });
        }
        out.push(Spanned {
            tok: Tok::Word(word),
            span: start..pos,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Tok {
        Tok::Word(s.to_owned())
    }

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn known_splits() {
        use Tok::*;
        let rows: Vec<(&str, Vec<Tok>)> = vec![
            ("", vec![]),
            ("a", vec![w("a")]),
            ("a b", vec![w("a"), w("b")]),
            (
                "AND && ( ) EXCEPT ! NOT",
                vec![And, And, LParen, RParen, Except, Not, Not],
            ),
            ("a && b", vec![w("a"), And, w("b")]),
            ("'abc'", vec![w("abc")]),
            ("''", vec![w("")]),
            ("''''", vec![w("'")]),
            ("'abc''def'", vec![w("abc'def")]),
            ("abc'def'ghi", vec![w("abcdefghi")]),
            ("a'b''c'd", vec![w("ab'cd")]),
            ("'a'b", vec![w("ab")]),
            ("a'b'", vec![w("ab")]),
            ("'a b && d e'", vec![w("a b && d e")]),
            ("a''b", vec![w("ab")]),
            ("''ab", vec![w("ab")]),
            ("ab''", vec![w("ab")]),
            ("a&&b", vec![w("a"), And, w("b")]),
            ("aANDb", vec![w("aANDb")]),
            ("a(b", vec![w("a"), LParen, w("b")]),
            ("a)b", vec![w("a"), RParen, w("b")]),
            ("a!b", vec![w("a"), Not, w("b")]),
            ("aEXCEPTb", vec![w("aEXCEPTb")]),
            ("aNOTb", vec![w("aNOTb")]),
            ("a&b", vec![w("a&b")]),
            ("aANb", vec![w("aANb")]),
            ("a'&&'b", vec![w("a&&b")]),
            ("a '&&' b", vec![w("a"), w("&&"), w("b")]),
            ("a'b'c&&d", vec![w("abc"), And, w("d")]),
            (
                "a b&&(c!d e 'f'g)",
                vec![
                    w("a"),
                    w("b"),
                    And,
                    LParen,
                    w("c"),
                    Not,
                    w("d"),
                    w("e"),
                    w("fg"),
                    RParen,
                ],
            ),
            ("ANDOVER", vec![w("ANDOVER")]),
            ("EXCEPTOVER", vec![w("EXCEPTOVER")]),
            ("NOTOVER", vec![w("NOTOVER")]),
            ("&&OVER", vec![And, w("OVER")]),
            ("(OVER", vec![LParen, w("OVER")]),
            (")OVER", vec![RParen, w("OVER")]),
            ("!OVER", vec![Not, w("OVER")]),
            ("AND'OVER'", vec![w("ANDOVER")]),
            ("NOT", vec![Not]),
            ("AND(", vec![w("AND"), LParen]),
            ("'AND'", vec![w("AND")]),
            ("a'  'b", vec![w("a  b")]),
            ("\ta\x0bb ", vec![w("a"), w("b")]),
            ("ip: 1.2.3.4", vec![w("ip:"), w("1.2.3.4")]),
            ("ip:1.2.3.4", vec![w("ip:1.2.3.4")]),
            ("é ü", vec![w("é"), w("ü")]),
        ];
        for (input, want) in rows {
            assert_eq!(toks(input), want, "{input:?}");
        }
    }

    #[test]
    fn spans_cover_raw_text() {
        let t = tokenize("  a'b c'd && (e)").unwrap();
        let spans: Vec<_> = t.iter().map(|t| t.span.clone()).collect();
        assert_eq!(spans, vec![2..9, 10..12, 13..14, 14..15, 15..16]);
    }

    #[test]
    fn unterminated_quotes() {
        for (input, start) in [
            ("'", 0),
            ("'abc", 0),
            ("'abc''", 0),
            ("'abc''def", 0),
            ("'''", 0),
            ("a 'b", 2),
            ("ab'c", 2),
        ] {
            let e = tokenize(input).unwrap_err();
            assert_eq!(e.start, start, "{input}");
            assert_eq!(e.end, input.len(), "{input}");
        }
    }
}
