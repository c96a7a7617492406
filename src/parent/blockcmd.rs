//! Running `blockcmd` / `unblockcmd` (the route, firewall and KILL_RUN_CMD jobs of PortSentry):
//! one command at a time, in the order they were queued, each with a time limit, its output and
//! exit status logged.
//!
//! Runs in the parent (root: firewall commands need it). The command lines are the
//! administrator's; the values substituted into them are the parent's own (a validated address,
//! a port number, a mode word, times), and the line is split into words BEFORE substitution, so
//! no value can add an argument or reach a shell unless the administrator wrote `sh -c`.
//! Commands start from an empty environment (PATH only), in a process group of their own,
//! with stdin on /dev/null and stdout and stderr on one pipe that the poll loop reads.

use std::collections::VecDeque;
use std::io::Read;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use policy::template::{format_template, ExpandErrorKind, Value};

use crate::log;

/// How long one command may run before its process group is killed.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// Output logged per command; the rest is counted, not logged (a chatty command must not
/// flood the log).
const MAX_OUTPUT: usize = 16 * 1024;

/// Commands waiting to run, at most; beyond, new ones are refused and logged (a stuck firewall
/// command must not make the queue grow without end).
const MAX_QUEUED: usize = 4096;

/// The PATH commands get.
const CMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The values a command line may name: `%(ip)s %(port)s %(mode)s %(until)s %(seconds)s`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vars {
    pub ip: IpAddr,
    pub port: u16,
    pub mode: String,
    /// Unix seconds the block ends (0 when it does not).
    pub until: Option<u64>,
    /// Seconds the block lasts from now (0 when it does not end: nftables' "no timeout").
    pub seconds: Option<u64>,
}

/// The argv of `line` for `v`: words split first, then each expanded.
pub fn render(line: &str, v: &Vars) -> Result<Vec<String>, String> {
    let lookup = |name: &str| -> Result<Value, ExpandErrorKind> {
        Ok(match name {
            "ip" => Value::Str(v.ip.to_string()),
            "port" => Value::Int(i64::from(v.port)),
            "mode" => Value::Str(if v.mode.is_empty() {
                "-".to_owned()
            } else {
                v.mode.clone()
            }),
            // 0 for a block without end, as `-C` documents it (nftables: no timeout).
            "until" => Value::Int(v.until.map_or(0, |u| i64::try_from(u).unwrap_or(i64::MAX))),
            "seconds" => Value::Int(i64::try_from(v.seconds.unwrap_or(0)).unwrap_or(i64::MAX)),
            other => return Err(ExpandErrorKind::Unknown(other.to_owned())),
        })
    };
    let argv = line
        .split_whitespace()
        .map(|w| format_template(w, &lookup))
        .collect::<Result<Vec<String>, ExpandErrorKind>>()
        .map_err(|e| format!("{e:?}"))?;
    if argv.is_empty() {
        return Err("empty command".to_owned());
    }
    Ok(argv)
}

/// One command to run; `what` names it in log lines ("blockcmd 2 for 192.0.2.7").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub argv: Vec<String>,
    pub what: String,
}

#[derive(Debug)]
struct Running {
    pid: Pid,
    job: Job,
    out: std::fs::File,
    partial: Vec<u8>,
    logged: usize,
    dropped: usize,
    deadline: Instant,
}

/// The queue and the one running command.
#[derive(Debug)]
pub struct Runner {
    queue: VecDeque<Job>,
    running: Option<Running>,
    timeout: Duration,
}

impl Default for Runner {
    fn default() -> Runner {
        Runner::new(CMD_TIMEOUT)
    }
}

impl Runner {
    /// A runner that kills each command after `timeout`.
    pub fn new(timeout: Duration) -> Runner {
        Runner {
            queue: VecDeque::new(),
            running: None,
            timeout,
        }
    }

    /// Queues `jobs` and starts the first if nothing runs.
    pub fn push(&mut self, jobs: impl IntoIterator<Item = Job>) {
        for j in jobs {
            if self.queue.len() >= MAX_QUEUED {
                log::err(&format!(
                    "{}: not run, {MAX_QUEUED} block commands already wait",
                    j.what
                ));
                continue;
            }
            self.queue.push_back(j);
        }
        self.start_next();
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_none() && self.queue.is_empty()
    }

    /// The running command's pid.
    pub fn running_pid(&self) -> Option<Pid> {
        self.running.as_ref().map(|r| r.pid)
    }

    /// The running command's output pipe, for the loop's epoll set, and the command's pid
    /// (which names that pipe while the command is unreaped).
    pub fn fd(&self) -> Option<(BorrowedFd<'_>, Pid)> {
        self.running.as_ref().map(|r| (r.out.as_fd(), r.pid))
    }

    /// When the running command is killed.
    pub fn deadline(&self) -> Option<Instant> {
        self.running.as_ref().map(|r| r.deadline)
    }

    /// Reads and logs what the running command wrote.
    pub fn on_output(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match r.out.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => r.take(buf.get(..n).unwrap_or_default()),
            }
        }
    }

    /// Kills a command past its time (its whole process group); the reaper ends it.
    pub fn check_timeout(&mut self, now: Instant) {
        if let Some(r) = &self.running {
            if now >= r.deadline {
                log::err(&format!(
                    "{}: still running after {:.1} s; killing it",
                    r.job.what,
                    self.timeout.as_secs_f64()
                ));
                let _ = killpg(r.pid, Signal::SIGKILL);
            }
        }
    }

    /// A child was reaped: if it was the running command, log how it ended and start the next.
    /// Returns false if `pid` is not ours.
    pub fn on_exit(&mut self, pid: Pid, st: WaitStatus) -> bool {
        if self.running.as_ref().is_none_or(|r| r.pid != pid) {
            return false;
        }
        if let Some(mut r) = self.running.take() {
            r.on_output_end();
            match st {
                WaitStatus::Exited(_, 0) => log::info(&format!("{}: done", r.job.what)),
                WaitStatus::Exited(_, c) => log::err(&format!("{}: exit status {c}", r.job.what)),
                WaitStatus::Signaled(_, s, _) => {
                    log::err(&format!("{}: killed by {}", r.job.what, s.as_str()))
                }
                _ => {}
            }
        }
        self.start_next();
        true
    }

    fn start_next(&mut self) {
        while self.running.is_none() {
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            match spawn(&job) {
                Ok((pid, out)) => {
                    log::debug(
                        1,
                        &format!("{}: pid={pid} {}", job.what, job.argv.join(" ")),
                    );
                    self.running = Some(Running {
                        pid,
                        job,
                        out: std::fs::File::from(out),
                        partial: Vec::new(),
                        logged: 0,
                        dropped: 0,
                        deadline: Instant::now() + self.timeout,
                    });
                }
                Err(e) => log::err(&format!(
                    "{}: cannot run {}: {e}",
                    job.what,
                    log::escape(job.argv.first().map_or("", String::as_str))
                )),
            }
        }
    }
}

impl Running {
    fn take(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            self.log_line(&line);
        }
        if self.partial.len() > 4096 {
            let line = std::mem::take(&mut self.partial);
            self.log_line(&line);
        }
    }

    fn log_line(&mut self, line: &[u8]) {
        if self.logged >= MAX_OUTPUT {
            self.dropped += line.len();
            return;
        }
        self.logged += line.len();
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        log::info(&format!("{}: {}", self.job.what, log::escape(text)));
    }

    fn on_output_end(&mut self) {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match self.out.read(&mut buf) {
                Ok(n) if n > 0 => self.take(buf.get(..n).unwrap_or_default()),
                _ => break,
            }
        }
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.log_line(&line);
        }
        if self.dropped > 0 {
            log::info(&format!(
                "{}: {} more bytes of output not logged",
                self.job.what, self.dropped
            ));
        }
    }
}

/// Starts one command: its own process group, an empty environment but PATH, stdin /dev/null,
/// stdout and stderr on one non-blocking pipe returned with the pid. The child is reaped by the
/// parent's reaper, never waited for here.
fn spawn(job: &Job) -> std::io::Result<(Pid, OwnedFd)> {
    let (prog, args) = job
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &rd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let wr2 = wr.try_clone()?;
    let child = Command::new(prog)
        .args(args)
        .env_clear()
        .env("PATH", CMD_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(wr))
        .stderr(Stdio::from(wr2))
        .process_group(0)
        .spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // Dropping a Child neither waits nor kills: the parent's SIGCHLD reaper collects it.
    drop(child);
    Ok((pid, rd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            ip: "192.0.2.7".parse().unwrap(),
            port: 31337,
            mode: "stcp".into(),
            until: Some(1_700_000_600),
            seconds: Some(600),
        }
    }

    #[test]
    fn words_are_split_before_substitution() {
        let argv = render(
            "nft add element inet portnanny blocked { %(ip)s timeout %(seconds)ss }",
            &vars(),
        )
        .unwrap();
        assert_eq!(
            argv,
            [
                "nft",
                "add",
                "element",
                "inet",
                "portnanny",
                "blocked",
                "{",
                "192.0.2.7",
                "timeout",
                "600s",
                "}"
            ]
        );
        // A value with spaces stays one argument.
        let mut v = vars();
        v.mode = "a b".into();
        assert_eq!(render("echo %(mode)s", &v).unwrap(), ["echo", "a b"]);
        let mut v = vars();
        v.until = None;
        v.seconds = None;
        assert_eq!(
            render("x %(until)s %(seconds)d %(port)05d", &v).unwrap(),
            ["x", "0", "0", "31337"]
        );
        assert!(render("x %(nope)s", &vars()).is_err());
        assert!(render("   ", &vars()).is_err());
    }

    /// Runs the queue to its end with a private reaper (the daemon's reaper does this there).
    fn drain(r: &mut Runner) -> Vec<WaitStatus> {
        let mut out = Vec::new();
        let end = Instant::now() + Duration::from_secs(20);
        while !r.is_idle() && Instant::now() < end {
            r.on_output();
            let pid = r.running.as_ref().map(|x| x.pid);
            if let Some(pid) = pid {
                match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => {
                        r.check_timeout(Instant::now());
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(st) => {
                        out.push(st);
                        assert!(r.on_exit(pid, st));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn commands_run_in_order_one_at_a_time() {
        let dir = std::env::temp_dir().join(format!("pn-blockcmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("order");
        let f = f.to_str().unwrap();
        let mut r = Runner::default();
        let jobs = (1..=3).map(|i| Job {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("sleep 0.0{i}; echo {i} >> {f}; echo out{i}; exit {}", i - 1),
            ],
            what: format!("blockcmd {i}"),
        });
        r.push(jobs);
        let sts = drain(&mut r);
        assert_eq!(sts.len(), 3);
        assert!(matches!(sts[2], WaitStatus::Exited(_, 2)));
        assert_eq!(std::fs::read_to_string(f).unwrap(), "1\n2\n3\n");
        assert!(!r.on_exit(Pid::from_raw(1), sts[0]), "not ours");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_command_past_its_time_is_killed_with_its_children() {
        let mut r = Runner::new(Duration::from_millis(200));
        let t0 = Instant::now();
        r.push([Job {
            argv: vec!["sh".into(), "-c".into(), "sleep 30 & sleep 30".into()],
            what: "blockcmd 1".into(),
        }]);
        let sts = drain(&mut r);
        assert!(
            matches!(sts[0], WaitStatus::Signaled(_, Signal::SIGKILL, _)),
            "{sts:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_program_is_logged_and_the_queue_goes_on() {
        let mut r = Runner::default();
        r.push([
            Job {
                argv: vec!["/nonexistent/portnanny-test".into()],
                what: "blockcmd 1".into(),
            },
            Job {
                argv: vec!["true".into()],
                what: "blockcmd 2".into(),
            },
        ]);
        let sts = drain(&mut r);
        assert_eq!(sts.len(), 1);
        assert!(matches!(sts[0], WaitStatus::Exited(_, 0)));
    }
}
