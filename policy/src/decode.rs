//! Turning a configuration file's bytes into text.
//!
//! Runs in the parent (at start, on reload and for `-C`) on the administrator's files, before
//! any of the three parsers sees them. No I/O: the caller reads the bytes.
//!
//! portnanny 2 was written in Python 2, which never decoded its files, so old configurations
//! can carry Latin-1 (or any other 8-bit) text in comments. Those bytes are harmless there and
//! are replaced by U+FFFD. Anywhere else a byte that is not UTF-8 could change what a rule or
//! action means (a class name, a message), so it is an error that names file:line:col instead
//! of a guess.

use crate::source::{Diagnostic, Severity, SourceFile};

/// Decodes `bytes` as UTF-8, except that comment lines (first non-blank character `#`, the
/// only comments any of the three languages has) may hold any bytes; those are replaced by
/// U+FFFD. The error is at the first bad byte outside a comment (F002).
pub fn decode(name: &str, bytes: &[u8]) -> Result<String, Diagnostic> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(bytes.len());
    for (idx, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        match std::str::from_utf8(line) {
            Ok(s) => out.push_str(s),
            Err(e) => {
                let comment = line
                    .iter()
                    .find(|&&b| b != b' ' && b != b'\t')
                    .is_some_and(|&b| b == b'#');
                if comment {
                    out.push_str(&String::from_utf8_lossy(line));
                    continue;
                }
                let good = line.get(..e.valid_up_to()).unwrap_or_default();
                let col = String::from_utf8_lossy(good).chars().count() + 1;
                let shown = String::from_utf8_lossy(line);
                let shown = shown.trim_end_matches(['\n', '\r']);
                let lineno = u32::try_from(idx + 1).unwrap_or(u32::MAX);
                let byte = line.get(e.valid_up_to()).copied().unwrap_or_default();
                // The excerpt needs only this line, so the source is that one line.
                let mut d = SourceFile::new(name, shown).diagnostic(
                    Severity::Error,
                    "F002",
                    1,
                    u32::try_from(col).unwrap_or(u32::MAX),
                    1,
                    format!(
                        "byte 0x{byte:02x} is not UTF-8; only comment lines may hold other \
                         encodings (save the file as UTF-8)"
                    ),
                );
                d.line = lineno;
                return Err(d);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows() {
        // label, input, want (Ok text or the error's one-line form)
        let rows: &[(&str, &[u8], Result<&str, &str>)] = &[
            ("utf-8", "a: caf\u{e9}\n".as_bytes(), Ok("a: caf\u{e9}\n")),
            ("latin-1 comment", b"# caf\xe9\na: ALL\n", Ok("# caf\u{fffd}\na: ALL\n")),
            ("indented comment", b"a: ALL\n \t# \xff\xfe\n", Ok("a: ALL\n \t# \u{fffd}\u{fffd}\n")),
            ("no newline", b"# \xe9", Ok("# \u{fffd}")),
            (
                "class name",
                b"# ok \xe9\ncaf\xe9: ALL\n",
                Err("f:2:4: error[F002]: byte 0xe9 is not UTF-8; only comment lines may hold other encodings (save the file as UTF-8)"),
            ),
            (
                "after a multi-byte char",
                "\u{e9}\u{e9} ".as_bytes().iter().chain(b"\xff\n").copied().collect::<Vec<u8>>().leak(),
                Err("f:1:4: error[F002]: byte 0xff is not UTF-8; only comment lines may hold other encodings (save the file as UTF-8)"),
            ),
        ];
        for (label, input, want) in rows {
            let got = decode("f", input).map_err(|d| d.to_string());
            assert_eq!(got.as_deref().map_err(String::as_str), *want, "{label}");
        }
    }

    #[test]
    fn the_excerpt_shows_the_line() {
        let d = decode("f", b"a: ALL\nb\xe9: ALL\n").unwrap_err();
        assert_eq!(d.source_line, "b\u{fffd}: ALL");
        assert!(d.excerpt().ends_with("|  ^"), "{}", d.excerpt());
    }
}
