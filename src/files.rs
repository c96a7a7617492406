//! Reading the administrator's configuration files: nanny.conf, rules and actions.
//!
//! Runs in the parent (at start, on reload and for `-C`), as root. The files are trusted but
//! can be anything a path can name: the reader must not hang the single-threaded parent (a
//! FIFO blocks in open(2) without O_NONBLOCK) nor fill its memory (`/dev/zero`, a runaway
//! generator). So a file is opened with O_NONBLOCK|O_CLOEXEC, the OPEN descriptor is
//! fstat'ed (what was opened, not what the path named a moment earlier) and must be a regular
//! file, and at most [`MAX_CONFIG_BYTES`] are read. The bytes are decoded by
//! `policy::decode`, which names file:line:col for a byte that is not UTF-8.

use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use policy::Diagnostic;

/// The largest configuration file read: far beyond any real file (100,000 `ip:` rules are
/// 2 MB), small enough that a wrong path cannot exhaust the parent's memory.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

// A policy this size must fit in the parent-to-classifier frame (privsep's wire mirrors it).
const _: () = assert!(privsep::wire::MAX_POLICY_FILE as u64 >= MAX_CONFIG_BYTES);

/// Why a file could not be used.
#[derive(Debug)]
pub enum FileError {
    /// Opening, fstat or reading failed, or the file is not a regular file or is too big.
    Io { name: String, what: String },
    /// A byte that is not UTF-8 outside a comment.
    Decode(Diagnostic),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io { name, what } => write!(f, "{name}: {what}"),
            FileError::Decode(d) => d.fmt(f),
        }
    }
}

/// Opens and reads a regular file of at most [`MAX_CONFIG_BYTES`]; also returns the open
/// descriptor's metadata after the read, so a caller can tell whether the file changed.
pub fn read_bytes(path: &Path, name: &str) -> Result<(Vec<u8>, Metadata), FileError> {
    let io = |what: String| FileError::Io {
        name: name.to_owned(),
        what,
    };
    // ORDER: O_NONBLOCK on open, because opening a FIFO for reading blocks until a writer
    // appears; the type check needs the open descriptor (no race with a rename).
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io(format!("cannot open: {e}")))?;
    let meta = fstat(&file).map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(io(format!(
            "not a regular file ({}); only regular files are read",
            kind(&meta)
        )));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(io(too_big(meta.len())));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte over the cap tells a file that grew while being read from one that fits.
    (&file)
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(io(too_big(bytes.len() as u64)));
    }
    let after = fstat(&file).map_err(io)?;
    Ok((bytes, after))
}

/// Reads a configuration file as text (see the module comment for what is refused).
pub fn read_text(path: &Path, name: &str) -> Result<String, FileError> {
    let (bytes, _) = read_bytes(path, name)?;
    policy::decode::decode(name, &bytes).map_err(FileError::Decode)
}

fn fstat(file: &File) -> Result<Metadata, String> {
    file.metadata().map_err(|e| format!("cannot fstat: {e}"))
}

fn too_big(len: u64) -> String {
    format!("too big ({len} bytes or more; the limit is {MAX_CONFIG_BYTES} bytes)")
}

fn kind(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// A relative rulefile/actionfile is taken relative to the directory of nanny.conf, so a
/// configuration works the same whatever the current directory.
pub fn resolve_relative(conf_path: &std::path::Path, file: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(file);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match conf_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("pn-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"# caf\xe9\na: ALL\n").unwrap();
        let rows: &[(&Path, Result<&str, &str>)] = &[
            (
                &fifo,
                Err("f: not a regular file (a FIFO); only regular files are read"),
            ),
            (
                Path::new("/dev/zero"),
                Err("f: not a regular file (a character device); only regular files are read"),
            ),
            (
                &dir,
                Err("f: not a regular file (a directory); only regular files are read"),
            ),
            (&plain, Ok("# caf?\na: ALL\n")),
        ];
        for (path, want) in rows {
            let got = read_text(path, "f").map_err(|e| e.to_string());
            assert_eq!(
                got.as_deref().map_err(String::as_str),
                *want,
                "{}",
                path.display()
            );
        }
        let missing = read_text(&dir.join("nope"), "f").unwrap_err().to_string();
        assert!(missing.starts_with("f: cannot open: "), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_size_cap_is_enforced_at_limit_plus_one() {
        let dir = std::env::temp_dir().join(format!("pn-files-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("big");
        let file = File::create(&f).unwrap();
        // Sparse: no real disk use.
        file.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let e = read_text(&f, "big").unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "big: too big ({} bytes or more; the limit is {MAX_CONFIG_BYTES} bytes)",
                MAX_CONFIG_BYTES + 1
            )
        );
        file.set_len(MAX_CONFIG_BYTES).unwrap();
        assert!(read_bytes(&f, "big").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
