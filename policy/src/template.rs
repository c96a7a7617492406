//! The `%(name)s` template language of the actions file: the built-in names, the values they
//! take, and the formatter that follows Python's `%` operator as portnanny 2 used it (flags,
//! width, precision, the `s`, `r`, `d`, `i`, `x`, `o`, `c`... conversions).
//!
//! Pure functions over strings; no I/O. Used by `expand` to render a connection's strings and
//! by the actions parser to check templates when a file is read, so both agree on what is
//! malformed.

/// Every built-in substitution name.
pub const BUILTINS: &[&str] = &[
    "ip",
    "remport",
    "localip",
    "port",
    "hnstatus",
    "claimedhn",
    "hostname",
    "identd",
    "seensince",
    "lastseen",
    "connsum",
    "connipsum",
    "class",
    "lineno",
    "label",
    "cr",
    "nl",
    "eol",
    "limit",
];

/// What went wrong with a substitution.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpandErrorKind {
    /// `%(name)...` where name is neither a built-in nor a `subst` name.
    Unknown(String),
    /// A built-in that is not defined for this connection (and no `subst` of that name).
    Undefined(String),
    /// A malformed or unsupported format (`%` alone, a bad conversion, `%(ip)d`...).
    BadFormat(String),
    /// The decision names a directive the class does not have (tables out of step).
    Missing,
    /// The decision names a class index the table does not have.
    NoSuchClass(u32),
}

/// A value a name expands to. Numbers stay numbers so `%(port)d` works as in the original.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl Value {
    pub(crate) fn as_text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(n) => n.to_string(),
        }
    }
}

/// Expands a template with the `%` operator's rules, looking names up with `lookup`.
pub fn format_template(
    template: &str,
    lookup: &dyn Fn(&str) -> Result<Value, ExpandErrorKind>,
) -> Result<String, ExpandErrorKind> {
    let bad = |m: String| Err(ExpandErrorKind::BadFormat(m));
    if !template.contains('%') {
        return Ok(template.to_owned());
    }
    let mut out = String::with_capacity(template.len());
    let chars: Vec<char> = template.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '%' {
            out.push(c);
            i += 1;
            continue;
        }
        let at = i;
        i += 1;
        match chars.get(i) {
            Some('%') => {
                out.push('%');
                i += 1;
                continue;
            }
            Some('(') => {}
            Some(other) => {
                return bad(format!(
                    "'%{other}' at character {}: write %(name)s for a substitution or %% for a \
                     percent sign",
                    at + 1
                ))
            }
            None => {
                return bad(format!(
                    "a lone '%' at the end: write %% for a percent sign (character {})",
                    at + 1
                ))
            }
        }
        // The key runs to the matching ')', counting nested parentheses as Python does.
        let key_start = i + 1;
        let mut depth = 1;
        let mut j = key_start;
        while j < chars.len() {
            match chars[j] {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        if j >= chars.len() {
            return bad(format!("'%(' at character {} has no closing ')'", at + 1));
        }
        let key: String = chars[key_start..j].iter().collect();
        let value = lookup(&key)?;
        i = j + 1;
        let mut spec = Spec::default();
        while let Some(&f) = chars.get(i) {
            match f {
                '-' => spec.left = true,
                '+' => spec.plus = true,
                ' ' => spec.space = true,
                '#' => spec.alt = true,
                '0' => spec.zero = true,
                _ => break,
            }
            i += 1;
        }
        let number = |i: &mut usize| -> Result<Option<usize>, ExpandErrorKind> {
            if chars.get(*i) == Some(&'*') {
                return Err(ExpandErrorKind::BadFormat(format!(
                    "'*' in %({key}) needs a number argument, which substitutions cannot give"
                )));
            }
            let s = *i;
            while chars.get(*i).is_some_and(char::is_ascii_digit) {
                *i += 1;
            }
            if s == *i {
                return Ok(None);
            }
            let digits: String = chars[s..*i].iter().collect();
            // Python refuses widths this large too; the cap keeps a typo from allocating
            // gigabytes in the parent.
            match digits.parse::<usize>() {
                Ok(n) if n <= 4096 => Ok(Some(n)),
                _ => Err(ExpandErrorKind::BadFormat(format!(
                    "width or precision '{digits}' in %({key}) is too large"
                ))),
            }
        };
        spec.width = number(&mut i)?;
        if chars.get(i) == Some(&'.') {
            i += 1;
            spec.precision = Some(number(&mut i)?.unwrap_or(0));
        }
        while matches!(chars.get(i), Some('h' | 'l' | 'L')) {
            i += 1;
        }
        let Some(&conv) = chars.get(i) else {
            return bad(format!(
                "%({key}) at character {} has no conversion letter (as in %({key})s)",
                at + 1
            ));
        };
        i += 1;
        out.push_str(&convert(&key, value, conv, &spec)?);
    }
    Ok(out)
}

#[derive(Default)]
struct Spec {
    left: bool,
    plus: bool,
    space: bool,
    alt: bool,
    zero: bool,
    width: Option<usize>,
    precision: Option<usize>,
}

fn pad(body: String, sign_prefix: &str, spec: &Spec, numeric: bool) -> String {
    let len = body.chars().count() + sign_prefix.chars().count();
    let width = spec.width.unwrap_or(0);
    if len >= width {
        if sign_prefix.is_empty() {
            return body;
        }
        return format!("{sign_prefix}{body}");
    }
    let fill = width - len;
    if spec.left {
        format!("{sign_prefix}{body}{}", " ".repeat(fill))
    } else if spec.zero && numeric {
        format!("{sign_prefix}{}{body}", "0".repeat(fill))
    } else {
        format!("{}{sign_prefix}{body}", " ".repeat(fill))
    }
}

/// Python 2's repr of a byte string.
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::new();
    out.push(quote);
    for b in s.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b if b == quote as u8 => {
                out.push('\\');
                out.push(quote);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push(quote);
    out
}

fn convert(key: &str, value: Value, conv: char, spec: &Spec) -> Result<String, ExpandErrorKind> {
    let need_number = || {
        ExpandErrorKind::BadFormat(format!(
            "%({key}){conv} needs a number, but {key} is text (use %({key})s)"
        ))
    };
    let sign = |n: i64| -> &'static str {
        if n < 0 {
            "-"
        } else if spec.plus {
            "+"
        } else if spec.space {
            " "
        } else {
            ""
        }
    };
    match conv {
        's' | 'r' | 'a' => {
            let mut text = match value {
                Value::Str(s) if conv == 's' => s,
                Value::Str(s) => py_repr(&s),
                Value::Int(n) => n.to_string(),
            };
            if let Some(p) = spec.precision {
                text = text.chars().take(p).collect();
            }
            Ok(pad(text, "", spec, false))
        }
        'd' | 'i' | 'u' | 'x' | 'X' | 'o' => {
            let Value::Int(n) = value else {
                return Err(need_number());
            };
            let mag = n.unsigned_abs();
            let mut digits = match conv {
                'x' => format!("{mag:x}"),
                'X' => format!("{mag:X}"),
                'o' => format!("{mag:o}"),
                _ => mag.to_string(),
            };
            if let Some(p) = spec.precision {
                if digits.len() < p {
                    digits = format!("{}{digits}", "0".repeat(p - digits.len()));
                }
            }
            let mut prefix = sign(n).to_owned();
            if spec.alt {
                match conv {
                    'x' => prefix.push_str("0x"),
                    'X' => prefix.push_str("0X"),
                    // Python 2's alternate octal form is a leading zero.
                    'o' if !digits.starts_with('0') => prefix.push('0'),
                    _ => {}
                }
            }
            Ok(pad(digits, &prefix, spec, true))
        }
        'f' | 'F' => {
            let Value::Int(n) = value else {
                return Err(need_number());
            };
            let p = spec.precision.unwrap_or(6);
            let mut body = format!("{:.*}", p, n.unsigned_abs() as f64);
            if spec.alt && p == 0 {
                body.push('.');
            }
            Ok(pad(body, sign(n), spec, true))
        }
        'c' => {
            let ch = match value {
                Value::Int(n) => u32::try_from(n).ok().and_then(char::from_u32),
                Value::Str(s) if s.chars().count() == 1 => s.chars().next(),
                Value::Str(_) => None,
            };
            match ch {
                Some(ch) => Ok(pad(ch.to_string(), "", spec, false)),
                None => Err(ExpandErrorKind::BadFormat(format!(
                    "%({key})c needs a single character"
                ))),
            }
        }
        other => Err(ExpandErrorKind::BadFormat(format!(
            "unsupported conversion '{other}' in %({key}){other} (use %({key})s)"
        ))),
    }
}

/// Where the substitution starting at the `%` at `at` ends: after `%` and one character
/// when no `(` follows; else after the matching `)`, the flags, width, precision, length
/// letters and one conversion character (Python's `%` syntax); the end of the template for an
/// unclosed `%(`.
pub(crate) fn segment_end(t: &str, at: usize) -> usize {
    let b = t.as_bytes();
    if b.get(at + 1) != Some(&b'(') {
        // '%' plus one whole character (it may be multi-byte), or a lone '%' at the end.
        return t
            .get(at + 1..)
            .and_then(|r| r.chars().next())
            .map_or(t.len(), |c| at + 1 + c.len_utf8());
    }
    let mut depth = 0usize;
    let mut j = at + 1;
    while j < b.len() {
        match b[j] {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        j += 1;
    }
    if j >= b.len() {
        return b.len();
    }
    j += 1;
    while j < b.len() && b"-+ #0".contains(&b[j]) {
        j += 1;
    }
    while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'*') {
        j += 1;
    }
    if b.get(j) == Some(&b'.') {
        j += 1;
        while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'*') {
            j += 1;
        }
    }
    while j < b.len() && b"hlL".contains(&b[j]) {
        j += 1;
    }
    t.get(j..)
        .and_then(|r| r.chars().next())
        .map_or(t.len(), |c| j + c.len_utf8())
}

/// The byte range of every substitution of `t` (`%` to the end of its conversion), `%%` left
/// out: what a checker formats one at a time, to point at the substitution at fault.
pub fn substitutions(t: &str) -> Vec<std::ops::Range<usize>> {
    let b = t.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b.get(i) != Some(&b'%') {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        let end = segment_end(t, i);
        out.push(i..end);
        i = end.max(i + 1);
    }
    out
}

/// The formatter's message about one substitution formatted alone, without the position it
/// counts from that substitution's start (the caller reports the real one).
pub fn alone(message: &str) -> String {
    message
        .replace(" at character 1", "")
        .replace(" (character 1)", "")
}
