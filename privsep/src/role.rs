//! The role table: every worker process portnanny runs, as one row each (OpenBSD proc.c's
//! `procs[]`). A row says which channels the worker is handed (fds 3.. in order), whether it is
//! chrooted, its resource limits, the exact capability set it KEEPS after the privilege drop,
//! and which other workers must restart with it.
//!
//! Read by the parent (to start and restart workers) and by a worker right after exec (to drop
//! privileges to exactly its row). Adding a worker means adding a variant and a row here, the
//! role's main, and the parent's handler for its messages; the drop, its verification and the
//! restart logic are generic over the row.

use std::fmt;

use caps::Capability;

/// A worker role. The same spelling is used for the argument, log prefix and module name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Classifier,
    Resolver,
    Sentry,
    Control,
    Netfilter,
}

/// One row of the role table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub role: Role,
    /// The channels the worker receives, by peer, in fd order (fd 3, fd 4, ...). The parent's
    /// channel always comes first.
    pub channels: &'static [Peer],
    /// Chroot into the configured empty directory (when started as root).
    pub chroot: bool,
    /// RLIMIT_NOFILE (soft and hard).
    pub nofile: u64,
    /// RLIMIT_FSIZE 0: the worker can write no file content.
    pub fsize_zero: bool,
    /// How the worker is kept from creating processes, once its set-up is done: the worker
    /// does it itself at that point, through the binary's `noprocs::forbid`, which reads this.
    pub no_processes: NoProcesses,
    /// Exactly the capabilities the worker keeps (bounding, permitted and effective; ambient
    /// and inheritable are always empty). Empty for a fully unprivileged worker.
    pub keep_caps: &'static [Capability],
    /// Workers restarted together with this one: they share a socketpair that only the
    /// parent can make when it starts them, so none of them can be given a new peer alone.
    pub restart_with: &'static [Role],
}

/// How a role is kept from creating processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoProcesses {
    /// RLIMIT_NPROC 0 (`forbid_new_processes`) after its fixed set of threads started; Linux
    /// counts threads too, so no thread can start after it.
    RlimitNproc,
    /// A seccomp filter refusing fork, vfork, clone without CLONE_THREAD and execve, for a
    /// role that must start threads on demand.
    Seccomp,
}

/// The other end of a worker's channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Parent,
    Worker(Role),
    /// Not a channel: the listening control socket the parent bound (as root, with its owner
    /// and mode); its peers are operators' `nannyctl` clients.
    ControlClients,
    /// Not a channel: the listening TCP socket of `xmlrpc ADDR:PORT` (bound by the parent, so
    /// a low port works), whose peers are pyctd XML-RPC frontends; `/dev/null` in its place
    /// when xmlrpc is off, so the row's fd layout never changes. Checked as exactly one of the
    /// two by the worker (`take_worker_fds_as`).
    XmlrpcClients,
}

/// Every role, in start order.
pub const ROLES: [Profile; 5] = [
    Profile {
        role: Role::Classifier,
        channels: &[Peer::Parent, Peer::Worker(Role::Resolver)],
        chroot: true,
        // Its two channels and the standard descriptors; it opens nothing else.
        nofile: 64,
        fsize_zero: true,
        no_processes: NoProcesses::RlimitNproc,
        keep_caps: &[],
        restart_with: &[Role::Resolver],
    },
    Profile {
        role: Role::Resolver,
        channels: &[Peer::Parent, Peer::Worker(Role::Classifier)],
        // getaddrinfo/NSS needs /etc (smtpd's lka, unwind's resolver are not chrooted either).
        chroot: false,
        // One socket per concurrent DNS, identd or answerson lookup.
        nofile: 4096,
        fsize_zero: false,
        // Lookup threads start on demand (src/resolver/nofork.rs installs the filter).
        no_processes: NoProcesses::Seccomp,
        keep_caps: &[],
        restart_with: &[Role::Classifier],
    },
    Profile {
        role: Role::Sentry,
        // It talks to the parent only: reports go up, settings come down.
        channels: &[Peer::Parent],
        // It reads /proc/net/{tcp,tcp6,udp,udp6} to skip ports with a listener and packets of
        // the host's own sockets, but it opens those four files before the drop and re-reads
        // them from offset 0 (a seq_file regenerates), so it needs no path at all afterwards:
        // chrooted like the classifier. The capture socket is opened after the drop with the
        // one capability kept, CAP_NET_RAW.
        chroot: true,
        // Its channel, its capture socket, the four /proc/net tables and the standard
        // descriptors.
        nofile: 16,
        fsize_zero: true,
        // Single-threaded (one poll loop), so RLIMIT_NPROC 0 forbids both new processes and
        // threads and needs no architecture-specific filter.
        no_processes: NoProcesses::RlimitNproc,
        // An AF_PACKET socket needs CAP_NET_RAW; nothing else is kept.
        keep_caps: &[Capability::CAP_NET_RAW],
        // No worker-to-worker channel: it restarts alone.
        restart_with: &[],
    },
    Profile {
        role: Role::Control,
        // The parent's channel, the listening control socket, then the XML-RPC listener (or
        // /dev/null when xmlrpc is off).
        channels: &[Peer::Parent, Peer::ControlClients, Peer::XmlrpcClients],
        // It needs no path: the sockets are bound by the parent and handed over.
        chroot: true,
        // Its channel, its two listening sockets, at most MAX_CLIENTS (64) control clients,
        // at most MAX_HTTP_CLIENTS (32) XML-RPC clients and the standard descriptors.
        // Argon2 password checks (19 MiB each, one at a time) fit in no rlimit set here.
        nofile: 112,
        fsize_zero: true,
        // Single-threaded (one poll loop).
        no_processes: NoProcesses::RlimitNproc,
        keep_caps: &[],
        restart_with: &[],
    },
    Profile {
        role: Role::Netfilter,
        // It talks to the parent only: conntrack requests come down, answers go up.
        channels: &[Peer::Parent],
        // Its netlink socket needs no path: chrooted like the sentry. The uid-to-name map is
        // read before the drop (src/netfilter/users.rs).
        chroot: true,
        // Its channel, its netlink socket and the standard descriptors.
        nofile: 16,
        fsize_zero: true,
        // Single-threaded (one loop), so RLIMIT_NPROC 0 forbids processes and threads alike.
        no_processes: NoProcesses::RlimitNproc,
        // nfnetlink refuses every conntrack message (even a dump) without CAP_NET_ADMIN;
        // nothing else is kept.
        keep_caps: &[Capability::CAP_NET_ADMIN],
        // No worker-to-worker channel: it restarts alone.
        restart_with: &[],
    },
];

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Classifier => "classifier",
            Role::Resolver => "resolver",
            Role::Sentry => "sentry",
            Role::Control => "control",
            Role::Netfilter => "netfilter",
        }
    }

    /// The role named by the argument after `ROLE_ARG`, if it is one.
    pub fn from_arg(arg: &str) -> Option<Role> {
        ROLES.iter().map(|p| p.role).find(|r| r.as_str() == arg)
    }

    /// This role's row of [`ROLES`].
    pub fn profile(self) -> &'static Profile {
        match self {
            Role::Classifier => &ROLES[0],
            Role::Resolver => &ROLES[1],
            Role::Sentry => &ROLES[2],
            Role::Control => &ROLES[3],
            Role::Netfilter => &ROLES[4],
        }
    }

    /// The fd (3, 4, ...) on which this role receives its channel to `peer`.
    pub fn fd_of(self, peer: Peer) -> Option<i32> {
        let i = self.profile().channels.iter().position(|p| *p == peer)?;
        i32::try_from(i).ok().map(|i| 3 + i)
    }

    /// This role and every role restarted with it, in [`ROLES`] order.
    pub fn restart_group(self) -> Vec<Role> {
        let with = self.profile().restart_with;
        ROLES
            .iter()
            .map(|p| p.role)
            .filter(|r| *r == self || with.contains(r))
            .collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent() {
        for (i, p) in ROLES.iter().enumerate() {
            assert_eq!(p.role.profile(), p, "row {i} is found by its role");
            assert_eq!(Role::from_arg(p.role.as_str()), Some(p.role));
            assert_eq!(p.channels.first(), Some(&Peer::Parent), "{}", p.role);
            // A worker-to-worker channel exists on both sides, and the two restart together.
            for peer in p.channels.iter().skip(1) {
                let other = match *peer {
                    Peer::Worker(other) => other,
                    Peer::ControlClients | Peer::XmlrpcClients => continue,
                    Peer::Parent => panic!("{}: a second parent channel", p.role),
                };
                assert!(other.fd_of(Peer::Worker(p.role)).is_some());
                assert!(p.restart_with.contains(&other), "{} {other}", p.role);
                assert!(other.profile().restart_with.contains(&p.role));
            }
            assert!(!p.restart_with.contains(&p.role));
        }
        assert_eq!(Role::from_arg("parent"), None);
    }

    #[test]
    fn classifier_and_resolver_rows() {
        assert_eq!(Role::Classifier.fd_of(Peer::Parent), Some(3));
        assert_eq!(
            Role::Classifier.fd_of(Peer::Worker(Role::Resolver)),
            Some(4)
        );
        assert_eq!(
            Role::Resolver.fd_of(Peer::Worker(Role::Classifier)),
            Some(4)
        );
        assert_eq!(
            Role::Classifier.restart_group(),
            vec![Role::Classifier, Role::Resolver]
        );
        assert!(Role::Classifier.profile().keep_caps.is_empty());
        assert!(Role::Resolver.profile().keep_caps.is_empty());
        assert!(Role::Classifier.profile().chroot && !Role::Resolver.profile().chroot);
    }

    #[test]
    fn control_row() {
        let p = Role::Control.profile();
        assert!(p.keep_caps.is_empty() && p.chroot && p.fsize_zero);
        assert_eq!(Role::Control.fd_of(Peer::ControlClients), Some(4));
        assert_eq!(Role::Control.fd_of(Peer::XmlrpcClients), Some(5));
        assert_eq!(Role::Control.restart_group(), vec![Role::Control]);
        assert!(!Role::Classifier.restart_group().contains(&Role::Control));
    }

    #[test]
    fn netfilter_row() {
        let p = Role::Netfilter.profile();
        assert_eq!(p.keep_caps, &[Capability::CAP_NET_ADMIN]);
        assert_eq!(p.channels, &[Peer::Parent]);
        assert_eq!(Role::Netfilter.restart_group(), vec![Role::Netfilter]);
        assert!(p.chroot && p.fsize_zero && p.nofile <= 16);
        assert_eq!(p.no_processes, NoProcesses::RlimitNproc);
        assert_eq!(Role::from_arg("netfilter"), Some(Role::Netfilter));
        assert!(!Role::Classifier.restart_group().contains(&Role::Netfilter));
    }

    #[test]
    fn sentry_row() {
        let p = Role::Sentry.profile();
        assert_eq!(p.keep_caps, &[Capability::CAP_NET_RAW]);
        assert_eq!(Role::Sentry.fd_of(Peer::Parent), Some(3));
        assert_eq!(p.channels.len(), 1);
        assert_eq!(Role::Sentry.restart_group(), vec![Role::Sentry]);
        assert!(p.chroot && p.fsize_zero && p.nofile <= 16);
        assert_eq!(p.no_processes, NoProcesses::RlimitNproc);
        assert_eq!(Role::from_arg("sentry"), Some(Role::Sentry));
        // The classifier's group does not start the sentry.
        assert!(!Role::Classifier.restart_group().contains(&Role::Sentry));
    }
}
