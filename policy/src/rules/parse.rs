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
                // at_least(1): a one-item list is just its item (as the original did).
                if v.len() == 1 {
                    v.pop().unwrap_or(Expr::Or(Vec::new()))
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
                    v.pop().unwrap_or(Expr::And(Vec::new()))
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

/// How deeply brackets, NOT and EXCEPT may nest. Parsing, compiling and evaluating recurse once
/// per level, and the classifier evaluates on threads with small stacks; real rules use a few
/// levels, so a low limit turns a hostile or broken file into an error instead of a stack
/// overflow.
pub const MAX_DEPTH: usize = 32;

/// The first token at which nesting exceeds [`MAX_DEPTH`]. Depth counts open brackets, NOTs
/// applying to what follows, and EXCEPTs so far (EXCEPT nests to the right).
fn too_deep(tokens: &[Spanned]) -> Option<Range<usize>> {
    let mut parens: usize = 0;
    let mut nots: usize = 0;
    let mut excepts: usize = 0;
    for t in tokens {
        match t.tok {
            Tok::LParen => parens += 1,
            Tok::RParen => parens = parens.saturating_sub(1),
            Tok::Not => nots += 1,
            Tok::Except => excepts += 1,
            Tok::Word(_) => nots = 0,
            Tok::And => {}
        }
        if parens + nots + excepts > MAX_DEPTH {
            return Some(t.span.clone());
        }
    }
    None
}

/// The or-list of an expression without operators, built directly: the common case (one-line
/// rules, long address lists) and the same tree the grammar gives, without setting up a
/// parser per line. None when the expression has an operator or a matcher word lacks its
/// argument; the grammar then handles it (and words the error).
fn plain_or_list(tokens: &[Spanned]) -> Option<Expr> {
    let mut items = Vec::with_capacity(tokens.len());
    let mut it = tokens.iter();
    while let Some(t) = it.next() {
        let Tok::Word(w) = &t.tok else {
            return None;
        };
        if is_matcher_word(w) {
            let a = it.next()?;
            let Tok::Word(arg) = &a.tok else {
                return None;
            };
            items.push(Expr::Operand(Operand::WithArg {
                name: w.clone(),
                name_span: t.span.clone(),
                arg: arg.clone(),
                arg_span: a.span.clone(),
            }));
        } else {
            items.push(Expr::Operand(Operand::Bare {
                word: w.clone(),
                span: t.span.clone(),
            }));
        }
    }
    match items.len() {
        0 => None,
        1 => items.pop(),
        _ => Some(Expr::Or(items)),
    }
}

/// Parses a token list. `text_len` is the length of the expression text (the span of
/// "end of rule").
pub fn parse_tokens(tokens: &[Spanned], text_len: usize) -> Result<Expr, Vec<SyntaxError>> {
    if let Some(e) = plain_or_list(tokens) {
        return Ok(e);
    }
    grammar_parse(tokens, text_len)
}

/// Parses a token list with the chumsky grammar.
fn grammar_parse(tokens: &[Spanned], text_len: usize) -> Result<Expr, Vec<SyntaxError>> {
    if let Some(span) = too_deep(tokens) {
        return Err(vec![SyntaxError {
            span,
            message: format!(
                "the expression nests too deeply (more than {MAX_DEPTH} levels of brackets, NOT \
                 and EXCEPT)"
            ),
        }]);
    }
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
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // Run on a small stack, like a classifier evaluation thread, in a debug build.
        let ok = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let fine = format!("{}a{}", "!(".repeat(16), ")".repeat(16));
                assert!(parse(&fine).is_ok());
                let limit = format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
                assert!(parse(&limit).is_ok());
                for bad in [
                    format!("{}a{}", "(".repeat(100_000), ")".repeat(100_000)),
                    format!("{}a", "!".repeat(100_000)),
                    vec!["a"; 100_000].join(" EXCEPT "),
                ] {
                    let errs = parse(&bad).expect_err("too deep");
                    assert!(errs[0].message.contains("nests too deeply"), "{errs:?}");
                }
                // Long flat lists are not deep.
                assert!(parse(&vec!["a"; 100_000].join(" ")).is_ok());
                assert!(parse(&vec!["a"; 100_000].join(" AND ")).is_ok());
                assert!(parse(&vec!["!a"; 10_000].join(" ")).is_ok());
            })
            .expect("spawn")
            .join();
        assert!(ok.is_ok());
    }

    #[test]
    fn plain_or_lists_equal_the_grammar() {
        for input in [
            "a",
            "a b c",
            "ip: 1.2.3.4",
            "ip: 1.2.3.4 10. .x.com re: 'a b'",
            "ip: ip: x",
            "'AND' x",
            "fe80:: x",
        ] {
            let toks = tokenize(input).unwrap();
            let fast = plain_or_list(&toks).expect("plain");
            assert_eq!(Ok(fast), grammar_parse(&toks, input.len()), "{input}");
        }
        for input in ["", "a AND b", "!a", "(a)", "ip:", "a ip:"] {
            let toks = tokenize(input).unwrap();
            assert_eq!(plain_or_list(&toks), None, "{input}");
        }
    }

    proptest::proptest! {
        #[test]
        fn plain_or_lists_equal_the_grammar_on_random_words(
            words in proptest::collection::vec(
                proptest::sample::select(vec!["ip:", "re:", "a", "10.", "'AND'", "x:", "::1", "ALL", "NOT", "&&", "(", ")"]),
                0..12,
            )
        ) {
            let input = words.join(" ");
            let toks = tokenize(&input).unwrap();
            if let Some(fast) = plain_or_list(&toks) {
                proptest::prop_assert_eq!(Ok(fast), grammar_parse(&toks, input.len()));
            }
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
