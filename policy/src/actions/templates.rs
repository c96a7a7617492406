//! Checking `%(name)s` templates when the actions file is read, so `-C` and every load refuse
//! what could only fail later, for every connection of a class.
//!
//! Runs wherever the actions file is parsed (the parent at start, on reload and for `-C`; the
//! classifier). No I/O. Each `%` of a template is checked on its own with the same formatter
//! that expands it at run time ([`crate::template::format_template`]), with a stand-in value of
//! the right type for each name, so a malformed `%`, an unclosed `%(` or `%(ip)d` is an error
//! here exactly when it would be one for every connection. Names that are not built-ins are
//! returned; whether a `subst` can ever define them depends on `see` chains, which the
//! resolver knows.

use std::ops::Range;

use crate::template::{alone, format_template, substitutions, ExpandErrorKind, Value, BUILTINS};

/// Built-ins whose value is a number (they format with `%d`); every other name is text.
const NUMERIC: &[&str] = &["remport", "port", "seensince", "lastseen", "lineno"];

/// What [`scan`] found in one template (ranges are byte offsets in the template).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Finding {
    /// A malformed substitution: fails for every connection.
    Bad(Range<usize>, String),
    /// A name that is not a built-in.
    Name(Range<usize>, String),
}

/// Checks every `%` of `template` (see the module comment).
pub(super) fn scan(template: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in substitutions(template) {
        let (i, end) = (r.start, r.end);
        let seg = template.get(i..end).unwrap_or_default();
        let mut name: Option<(Range<usize>, String)> = None;
        let res = format_template(seg, &|n| {
            Ok(if NUMERIC.contains(&n) {
                Value::Int(0)
            } else {
                // One character, so %c is not refused for text that may be one at run time.
                Value::Str("x".to_owned())
            })
        });
        if let Some(close) = seg.find(')') {
            let key = seg.get(2..close).unwrap_or_default();
            if !BUILTINS.contains(&key) {
                name = Some((i + 2..i + close, key.to_owned()));
            }
        }
        match res {
            // The formatter counts characters from the start of what it was given, which here
            // is only this substitution; the caller's column is the real position.
            Err(ExpandErrorKind::BadFormat(m)) => out.push(Finding::Bad(i..end, alone(&m))),
            Err(other) => out.push(Finding::Bad(i..end, format!("{other:?}"))),
            Ok(_) => {
                if let Some((r, n)) = name {
                    out.push(Finding::Name(r, n));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ok(names) or Err(range of the first bad substitution).
    type Want = Result<&'static [&'static str], Range<usize>>;

    #[test]
    fn rows() {
        // label, template, want
        let rows: &[(&str, &str, Want)] = &[
            ("plain", "hello", Ok(&[])),
            ("percent", "100%% sure", Ok(&[])),
            ("builtins", "%(ip)s:%(port)d %(port)05d%(nl)s", Ok(&[])),
            (
                "subst names",
                "%(who)s and %(what)-10s",
                Ok(&["who", "what"]),
            ),
            ("text as number", "x %(ip)d", Err(2..8)),
            ("unclosed", "x %(ip", Err(2..6)),
            ("no conversion", "x %(ip)", Err(2..7)),
            ("lone percent", "50% off", Err(2..4)),
            ("percent at end", "50%", Err(2..3)),
            ("bad conversion", "%(ip)q", Err(0..6)),
            ("c of text", "%(ip)c", Ok(&[])),
            ("subst as number", "%(n)d", Err(0..5)),
        ];
        for (label, t, want) in rows {
            let got = scan(t);
            match want {
                Ok(names) => {
                    let got: Vec<&str> = got
                        .iter()
                        .map(|f| match f {
                            Finding::Name(r, n) => {
                                assert_eq!(&t[r.clone()], n, "{label}");
                                n.as_str()
                            }
                            Finding::Bad(_, m) => panic!("{label}: {m}"),
                        })
                        .collect();
                    assert_eq!(&got, names, "{label}");
                }
                Err(range) => match got.first() {
                    Some(Finding::Bad(r, _)) => assert_eq!(r, range, "{label}"),
                    other => panic!("{label}: {other:?}"),
                },
            }
        }
    }
}
