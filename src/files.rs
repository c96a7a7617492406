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

/// The most the parent's policy message to the classifier carries, counted as
/// [`policy_bytes`] counts it: the rules and actions texts and every `ipfile:` list shipped
/// with them. The classifier accepts a frame of at most `privsep::wire::MAX_TRUSTED_FRAME`
/// bytes; 1 MiB of that is left for the rest of the message (the settings, the other length
/// fields). Each file is at most [`MAX_CONFIG_BYTES`], but the lists are many: without this
/// count, `-C` accepted two 16 MiB lists that the daemon then could not send.
pub const MAX_POLICY_BYTES: usize = privsep::wire::MAX_TRUSTED_FRAME - (1 << 20);

// The largest rules file and the largest actions file always fit together: only an `ipfile:`
// list can take the policy over (so the rules and actions files load whatever the lists are).
const _: () = assert!(2 * MAX_CONFIG_BYTES as usize <= MAX_POLICY_BYTES);

/// What one `ipfile:` list adds to the policy message: its name as the rules write it, its
/// text, and two 8-byte length fields.
pub fn ipfile_bytes(name: &str, text: &str) -> usize {
    name.len().saturating_add(text.len()).saturating_add(16)
}

/// The `ipfile:` lists that do not fit in the policy message. They are counted after `base`
/// (the rules and actions texts' length) in the order given, which is the order the rules
/// first name them; a list that would take the total over [`MAX_POLICY_BYTES`] is left out
/// (it holds no address) and the lists after it are still counted. Returns each list left
/// out, by its index in `lists`, with the total it would have made. `-C` and every load of
/// the daemon decide with this one function, so they agree.
pub fn over_policy_budget<'a>(
    base: usize,
    lists: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(usize, usize)> {
    let mut total = base;
    let mut out = Vec::new();
    for (i, (name, text)) in lists.into_iter().enumerate() {
        let with = total.saturating_add(ipfile_bytes(name, text));
        if with > MAX_POLICY_BYTES {
            out.push((i, with));
        } else {
            total = with;
        }
    }
    out
}

/// Why a list was left out (H013), as `-C` prints it and the daemon logs it.
pub fn over_policy_budget_message(name: &str, total: usize) -> String {
    format!(
        "ipfile {name} would take the policy to {total} bytes, over the limit of \
         {MAX_POLICY_BYTES} bytes for the rules file, the actions file and every ipfile \
         together (what the classifier accepts); it holds no address until the policy fits"
    )
}

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

    /// The policy budget at limit and limit + 1: lists are counted in order, one that does not
    /// fit is left out and the ones after it still count.
    #[test]
    fn the_policy_budget_leaves_out_the_list_that_goes_over() {
        let base = MAX_CONFIG_BYTES as usize;
        let room = MAX_POLICY_BYTES - base;
        let exact = "x".repeat(room - ipfile_bytes("a", ""));
        assert_eq!(over_policy_budget(base, [("a", exact.as_str())]), vec![]);
        assert_eq!(
            over_policy_budget(base, [("a", exact.as_str()), ("b", "")]),
            vec![(1, MAX_POLICY_BYTES + ipfile_bytes("b", ""))],
            "limit + 17: the second list does not fit"
        );
        let over = "x".repeat(room - ipfile_bytes("a", "") + 1);
        assert_eq!(
            over_policy_budget(base, [("a", over.as_str()), ("b", "1.2.3.4")]),
            vec![(0, MAX_POLICY_BYTES + 1)],
            "limit + 1 is left out; the next list still fits"
        );
    }

    /// What the budget counts is what the frame carries: a policy message at the budget
    /// encodes within the classifier's frame cap.
    #[test]
    fn a_policy_at_the_budget_fits_the_classifiers_frame() {
        use privsep::proto::{ClassifierSettings, Gen, ParentToClassifier};
        // Rules and actions of 8 MiB each, 1,000 lists, the first one filling the rest.
        let half = MAX_CONFIG_BYTES as usize / 2;
        let names: Vec<String> = (0..1000).map(|i| format!("lists/list-{i:04}")).collect();
        let listed: usize = names.iter().map(|n| ipfile_bytes(n, "")).sum();
        let last = MAX_POLICY_BYTES - 2 * half - listed;
        let mut ipfiles: Vec<(String, String)> =
            names.iter().map(|n| (n.clone(), String::new())).collect();
        ipfiles[0].1 = "#".repeat(last);
        let base = 2 * half;
        assert!(
            over_policy_budget(base, ipfiles.iter().map(|(n, t)| (n.as_str(), t.as_str())))
                .is_empty()
        );
        let msg = ParentToClassifier::Policy {
            gen: Gen(u32::MAX),
            rules: Some("r".repeat(half)),
            actions: Some("a".repeat(half)),
            settings: ClassifierSettings {
                maxthreads: u32::MAX,
                aftermaxthreads: None,
                dropipafter_secs: Some(u64::MAX),
                expireevery_secs: u64::MAX,
                dns_timeout_ms: u32::MAX,
                identd_timeout_ms: u32::MAX,
                answerson_timeout_ms: u32::MAX,
                grouping: policy::grouping::Grouping::default(),
            },
            ipfiles,
        };
        let frame = privsep::wire::encode(&msg).expect("fits");
        assert!(frame.len() <= privsep::wire::MAX_TRUSTED_FRAME + privsep::wire::HEADER);
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
