//! Parsing changed policy files off the poll loop: one short-lived thread per reload, so a
//! large or pathological file never stalls accepting, verdicts or reaping.
//!
//! Runs in the parent. The thread parses text the parent already read (the administrator's
//! files) with the policy crate, which does no I/O, then resolves the actions file's host parts
//! (classhost.rs: user and group lookups, `chdir` directories, msgfiles read with O_CLOEXEC),
//! so a slow NSS lookup never stalls the loop either; it touches no other descriptor, no
//! global state and no log, and hands its result back over a channel, waking the loop
//! through one end of a socketpair that the loop polls. The parent stays otherwise
//! single-threaded: while a loader runs, the parent may still fork services and workers,
//! which is safe because their children run only async-signal-safe code before exec.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread::JoinHandle;

use policy::Diagnostic;

use super::classhost::HostCtx;
use super::reload::{self, LoadError, LoadedActions, RuleNames};

/// The loader thread's stack: the parsers recurse on nested expressions.
const LOADER_STACK: usize = 16 << 20;

/// A file read for a reload: its name, and its text or why it could not be read.
pub type ReadFile = (String, Result<String, String>);

pub type RulesResult = Result<(String, RuleNames, Vec<Diagnostic>), LoadError>;
pub type ActionsResult = Result<(String, LoadedActions, Vec<Diagnostic>), LoadError>;

/// What the loader made of the files that changed (None: that file did not change).
#[derive(Debug)]
pub struct Parsed {
    pub rules: Option<(String, RulesResult)>,
    pub actions: Option<(String, ActionsResult)>,
}

/// A parse in progress.
#[derive(Debug)]
pub struct Loader {
    wake: UnixStream,
    rx: mpsc::Receiver<Parsed>,
    thread: Option<JoinHandle<()>>,
}

fn parse(
    rules: Option<ReadFile>,
    actions: Option<ReadFile>,
    substitutions: bool,
    host: &HostCtx,
) -> Parsed {
    Parsed {
        rules: rules.map(|(name, res)| {
            let r = res
                .map_err(LoadError::Read)
                .and_then(|text| reload::load_rules(&name, &text).map(|(c, w)| (text, c, w)));
            (name, r)
        }),
        actions: actions.map(|(name, res)| {
            let r = res.map_err(LoadError::Read).and_then(|text| {
                reload::load_actions(&name, &text, substitutions, host).map(|(a, w)| (text, a, w))
            });
            (name, r)
        }),
    }
}

impl Loader {
    /// Starts parsing. When no thread can be started, parses right here (the loop stalls for
    /// this one reload, which is what it did before there was a loader).
    pub fn start(
        rules: Option<ReadFile>,
        actions: Option<ReadFile>,
        substitutions: bool,
        host: &HostCtx,
    ) -> Result<Loader, Box<Parsed>> {
        let Ok((wake, mut ping)) = UnixStream::pair() else {
            return Err(Box::new(parse(rules, actions, substitutions, host)));
        };
        let host2 = host.clone();
        let (tx, rx) = mpsc::channel();
        // The closure owns the texts; if spawning fails they come back through this slot.
        let job = std::sync::Arc::new(std::sync::Mutex::new(Some((rules, actions))));
        let job2 = std::sync::Arc::clone(&job);
        let spawned = std::thread::Builder::new()
            .name("loader".into())
            .stack_size(LOADER_STACK)
            .spawn(move || {
                let taken = job2.lock().ok().and_then(|mut j| j.take());
                if let Some((rules, actions)) = taken {
                    let _ = tx.send(parse(rules, actions, substitutions, &host2));
                }
                let _ = ping.write_all(&[1]);
            });
        match spawned {
            Ok(thread) => {
                let _ = wake.set_nonblocking(true);
                Ok(Loader {
                    wake,
                    rx,
                    thread: Some(thread),
                })
            }
            Err(_) => {
                let taken = job.lock().ok().and_then(|mut j| j.take());
                let (rules, actions) = taken.unwrap_or((None, None));
                Err(Box::new(parse(rules, actions, substitutions, host)))
            }
        }
    }

    /// The descriptor that becomes readable when the result is ready.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The result, once the thread has finished (None: not yet).
    pub fn try_finish(&mut self) -> Option<Parsed> {
        let mut b = [0u8; 8];
        match (&self.wake).read(&mut b) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(_) => {}
        }
        let parsed = self.rx.try_recv().ok();
        if let Some(t) = self.thread.take() {
            // It has written its wake-up byte: only its return is left.
            let _ = t.join();
        }
        // A thread that died without a result (a parser bug) reloads nothing.
        Some(parsed.unwrap_or(Parsed {
            rules: None,
            actions: None,
        }))
    }
}
