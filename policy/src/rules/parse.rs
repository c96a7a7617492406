//! The rules expression grammar (chumsky 0.13) over the tokens of [`super::lex`].
//!
//! Runs in the parent and the classifier on the administrator's rules text; never panics.
//!
//! Precedence, high to low, as in the original portnanny:
//! `( … )`, `!`/`NOT`, or-list (juxtaposition), `AND`/`&&`, `EXCEPT`.
//! `NOT` applies to one operand or bracket (`! c d` is `(!c) d`); `EXCEPT` nests to the right
//! (`a EXCEPT b EXCEPT c` is `a EXCEPT (b EXCEPT c)`). An operand is `MATCHER: ARG` (a word
//! ending in `:` followed by any word), or one bare word. A word ending in `:` that holds another
//! `:` is not a matcher name but a bare operand (an IPv6 address such as `2001:db8::`).
//!
//! Syntax errors become "expected X, found Y" with the expected set sorted and deduplicated.

use std::ops::Range;

use chumsky::error::{Rich, RichPattern};
use chumsky::input::{Input as _, ValueInput};
use chumsky::prelude::*;

use super::ast::{Expr, Operand};
use super::lex::{Spanned, Tok};

/// A syntax error at a byte range of the expression text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub span: Range<usize>,
    pub message: String,
}

/// Whether a word names a matcher that takes an argument (`ip:`), by shape alone.
pub fn is_matcher_word(w: &str) -> bool {
    w.ends_with(':') && w.bytes().filter(|&b| b == b':').count() == 1
}

fn span_of(s: SimpleSpan) -> Range<usize> {
    s.into_range()
}

fn parser<'t, I>() -> impl Parser<'t, I, Expr, extra::Err<Rich<'t, Tok>>>
where
    I: ValueInput<'t, Token = Tok, Span = SimpleSpan>,
{
    let expr = recursive(|expr| {
        let matcher = select! {
            Tok::Word(w) = e if is_matcher_word(&w) => (w, span_of(e.span())),
        };
        let argument = select! {
            Tok::Word(w) = e => (w, span_of(e.span())),
        }
        .labelled("an argument");
        let with_arg = matcher
            .then(argument)
            .map(|((name, name_span), (arg, arg_span))| {
                Expr::Operand(Operand::WithArg {
                    name,
                    name_span,
                    arg,
                    arg_span,
                })
            });
        let bare = select! {
            Tok::Word(w) = e if !is_matcher_word(&w) => {
                Expr::Operand(Operand::Bare { word: w, span: span_of(e.span()) })
            },
        };
        let operand = with_arg.or(bare).labelled("an operand");
        let bracketed = expr.delimited_by(just(Tok::LParen), just(Tok::RParen));
        let term = recursive(|term| {
            just(Tok::Not)
                .ignore_then(term)
                .map(|t| Expr::Not(Box::new(t)))
                .or(operand)
                .or(bracketed)
        });
        let orlist = term
            .repeated()
            .at_least(1)
            .collect::<Vec<Expr>>()
            .map(|mut v| {
                if v.len() == 1 {
                    v.pop().map_or(Expr::Or(Vec::new()), |e| e)
                } else {
                    Expr::Or(v)
                }
            });
        let andl = orlist
            .separated_by(just(Tok::And))
            .at_least(1)
            .collect::<Vec<Expr>>()
            .map(|mut v| {
                if v.len() == 1 {
                    v.pop().map_or(Expr::And(Vec::new()), |e| e)
                } else {
                    Expr::And(v)
                }
            });
        andl.separated_by(just(Tok::Except))
            .at_least(1)
            .collect::<Vec<Expr>>()
            .map(|v| {
                // Right-associative: a EXCEPT (b EXCEPT c).
                let mut it = v.into_iter().rev();
                let last = it.next().unwrap_or(Expr::Or(Vec::new()));
                it.fold(last, |acc, left| {
                    Expr::Except(Box::new(left), Box::new(acc))
                })
            })
    });
    expr.then_ignore(end())
}

fn describe_pattern(p: &RichPattern<'_, Tok>) -> String {
    match p {
        RichPattern::Token(t) => t.to_string(),
        RichPattern::Label(l) => l.to_string(),
        RichPattern::Identifier(s) => format!("'{s}'"),
        RichPattern::Any => "anything".to_owned(),
        RichPattern::SomethingElse => "something else".to_owned(),
        RichPattern::EndOfInput => "the end of the rule".to_owned(),
        _ => "something else".to_owned(),
    }
}

/// "expected A, B or C": sorted, deduplicated, and collapsed when long.
fn expected_list(mut items: Vec<String>) -> String {
    items.sort();
    items.dedup();
    const SHOWN: usize = 6;
    match items.len() {
        0 => "something else".to_owned(),
        1 => items.remove(0),
        n if n <= SHOWN => {
            let last = items.pop().unwrap_or_default();
            format!("{} or {last}", items.join(", "))
        }
        n => format!("{} or {} more", items[..SHOWN].join(", "), n - SHOWN),
    }
}

/// Parses a token list. `text_len` is the length of the expression text (the span of
/// "end of rule").
pub fn parse_tokens(tokens: &[Spanned], text_len: usize) -> Result<Expr, Vec<SyntaxError>> {
    let pairs: Vec<(Tok, SimpleSpan)> = tokens
        .iter()
        .map(|t| (t.tok.clone(), SimpleSpan::from(t.span.clone())))
        .collect();
    let eoi = SimpleSpan::from(text_len..text_len);
    let result = parser().parse(pairs.as_slice().split_token_span(eoi));
    result.into_result().map_err(|errs| {
        errs.into_iter()
            .map(|e| {
                let span = e.span().into_range();
                let expected = expected_list(e.expected().map(describe_pattern).collect());
                let found = e
                    .found()
                    .map_or_else(|| "the end of the rule".to_owned(), Tok::to_string);
                // Name the matcher when its argument is what is missing.
                let after = tokens
                    .iter()
                    .rev()
                    .find(|t| t.span.end <= span.start)
                    .and_then(|t| match &t.tok {
                        Tok::Word(w) if is_matcher_word(w) => Some((w.clone(), t.span.clone())),
                        _ => None,
                    });
                let (span, message) = match after {
                    Some((m, mspan)) if expected == "an argument" => {
                        let bare = m.trim_end_matches(':');
                        if super::matchers::BARE_MATCHERS.contains(&bare) {
                            let msg = format!("{bare} takes no argument; write it without the ':'");
                            (mspan, msg)
                        } else {
                            (span, format!("expected an argument for {m}, found {found}"))
                        }
                    }
                    _ => (span, format!("expected {expected}, found {found}")),
                };
                SyntaxError { span, message }
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::super::lex::tokenize;
    use super::*;

    /// The original's canonical printing, enough to check the tree's shape.
    fn show(e: &Expr) -> String {
        match e {
            Expr::Operand(Operand::WithArg { name, arg, .. }) => format!("{name} {arg}"),
            Expr::Operand(Operand::Bare { word, .. }) => word.clone(),
            Expr::Not(x) => format!("!({})", show(x)),
            Expr::Or(v) => v.iter().map(show).collect::<Vec<_>>().join(" "),
            Expr::And(v) => {
                // Nest to the right as the original prints it.
                let mut it = v.iter().rev();
                let last = it.next().map(show).unwrap_or_default();
                it.fold(last, |acc, l| format!("({}) AND ({acc})", show(l)))
            }
            Expr::Except(a, b) => format!("({}) EXCEPT ({})", show(a), show(b)),
        }
    }

    fn parse(s: &str) -> Result<Expr, Vec<SyntaxError>> {
        parse_tokens(&tokenize(s).unwrap(), s.len())
    }

    #[test]
    fn precedence_and_associativity() {
        let rows = [
            ("c", "c"),
            ("c d", "c d"),
            ("(c)", "c"),
            ("!c", "!(c)"),
            ("! (c d)", "!(c d)"),
            ("! c d", "!(c) d"),
            ("a: b", "a: b"),
            ("!a: b", "!(a: b)"),
            ("(c d !d)", "c d !(d)"),
            ("NOT c", "!(c)"),
            ("!!c", "!(!(c))"),
            ("d EXCEPT c", "(d) EXCEPT (c)"),
            ("d EXCEPT d EXCEPT d", "(d) EXCEPT ((d) EXCEPT (d))"),
            ("! (d EXCEPT c)", "!((d) EXCEPT (c))"),
            (
                "( d EXCEPT c ) EXCEPT a: b",
                "((d) EXCEPT (c)) EXCEPT (a: b)",
            ),
            ("d EXCEPT !a: b", "(d) EXCEPT (!(a: b))"),
            ("d AND c", "(d) AND (c)"),
            ("d c AND c", "(d c) AND (c)"),
            ("d c AND c EXCEPT a: A", "((d c) AND (c)) EXCEPT (a: A)"),
            ("c EXCEPT d AND c", "(c) EXCEPT ((d) AND (c))"),
            ("d&&c", "(d) AND (c)"),
            ("c AND c AND c", "(c) AND ((c) AND (c))"),
            (
                "(c EXCEPT d) AND !a: b d",
                "((c) EXCEPT (d)) AND (!(a: b) d)",
            ),
            ("c && c EXCEPT c && d", "((c) AND (c)) EXCEPT ((c) AND (d))"),
            ("c && c d EXCEPT !c", "((c) AND (c d)) EXCEPT (!(c))"),
            ("'AND' c", "AND c"),
            ("fe80:: x", "fe80:: x"),
        ];
        for (input, want) in rows {
            let e = parse(input).unwrap_or_else(|e| panic!("{input}: {e:?}"));
            assert_eq!(show(&e), want, "{input}");
        }
    }

    #[test]
    fn syntax_errors() {
        let rows: &[(&str, Range<usize>, &str)] = &[
            (
                "",
                0..0,
                "expected '(', NOT or an operand, found the end of the rule",
            ),
            (
                "!",
                1..1,
                "expected '(', NOT or an operand, found the end of the rule",
            ),
            (
                "a:",
                2..2,
                "expected an argument for a:, found the end of the rule",
            ),
            (
                "(",
                1..1,
                "expected '(', NOT or an operand, found the end of the rule",
            ),
            (
                "( c d",
                5..5,
                "expected '(', ')', AND, EXCEPT, NOT or an operand, found the end of the rule",
            ),
            (")", 0..1, "expected '(', NOT or an operand, found ')'"),
            ("a: !", 3..4, "expected an argument for a:, found NOT"),
            (
                "c AND",
                5..5,
                "expected '(', NOT or an operand, found the end of the rule",
            ),
            (
                "c EXCEPT",
                8..8,
                "expected '(', NOT or an operand, found the end of the rule",
            ),
            ("AND c", 0..3, "expected '(', NOT or an operand, found AND"),
            (
                "c )",
                2..3,
                "expected '(', AND, EXCEPT, NOT, an operand or the end of the rule, found ')'",
            ),
        ];
        let mut bad = Vec::new();
        for (input, span, msg) in rows {
            let errs = parse(input).expect_err(input);
            assert_eq!(errs.len(), 1, "{input}: {errs:?}");
            if (&errs[0].span, errs[0].message.as_str()) != (span, *msg) {
                bad.push(format!(
                    "{input:?} {:?} {:?}",
                    errs[0].span, errs[0].message
                ));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
