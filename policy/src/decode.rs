//! Turning a configuration file's bytes into text.
//!
//! Runs in the parent (at start, on reload and for `-C`) on the administrator's files, before
//! any of the three parsers sees them. No I/O: the caller reads the bytes.
//!
//! portnanny 2 was written in Python 2, which never decoded its files, so old configurations
//! can carry Latin-1 (or any other 8-bit) text in comments. Those bytes are harmless there and
//! are replaced by `?`, one for one: never by U+FFFD, whose three bytes per input byte could
//! make the text bigger than the file, past the size caps the file was read under (the
//! policy frame's budget counts the text). Anywhere else a byte that is not UTF-8 could change what a rule or
//! action means (a class name, a message), so it is an error that names file:line:col instead
//! of a guess.

use crate::source::{Diagnostic, Severity, SourceFile};

/// Decodes `bytes` as UTF-8, except that comment lines (first non-blank character `#`, the
/// only comments any of the three languages has) may hold any bytes; each byte that is not
/// UTF-8 there becomes `?`, so the text is never longer than `bytes`. The error is at the
/// first bad byte outside a comment (F002).
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
                    for chunk in line.utf8_chunks() {
                        out.push_str(chunk.valid());
                        out.extend(chunk.invalid().iter().map(|_| '?'));
                    }
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
            ("latin-1 comment", b"# caf\xe9\na: ALL\n", Ok("# caf?\na: ALL\n")),
            ("indented comment", b"a: ALL\n \t# \xff\xfe\n", Ok("a: ALL\n \t# ??\n")),
            ("no newline", b"# \xe9", Ok("# ?")),
            (
                "utf-8 kept around a bad byte",
                "# \u{e9}t\u{e9} ".as_bytes().iter().chain(b"\xe9t\xe9\r\n").copied().collect::<Vec<u8>>().leak(),
                Ok("# \u{e9}t\u{e9} ?t?\r\n"),
            ),
            ("a truncated sequence", b"# \xe2\x82\n", Ok("# ??\n")),
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

    /// The decoded text is never longer than the file: a comment of 8-bit bytes used to grow
    /// threefold (U+FFFD is three bytes), past the size cap the file was read under.
    #[test]
    fn decoding_never_grows_the_text() {
        let mut bytes = b"a: ALL\n".to_vec();
        for _ in 0..1000 {
            bytes.extend_from_slice(b"# ");
            bytes.extend((0x80u8..=0xff).chain(0xc0..=0xc3));
            bytes.push(b'\n');
        }
        let text = decode("f", &bytes).unwrap();
        assert_eq!(text.len(), bytes.len());
        assert!(text.lines().skip(1).all(|l| l.starts_with("# ?")));
    }

    #[test]
    fn the_excerpt_shows_the_line() {
        let d = decode("f", b"a: ALL\nb\xe9: ALL\n").unwrap_err();
        assert_eq!(d.source_line, "b\u{fffd}: ALL");
        assert!(d.excerpt().ends_with("|  ^"), "{}", d.excerpt());
    }
}
