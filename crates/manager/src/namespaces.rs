//! Network and IPC namespaces for VMM jails, made before they are needed.
//!
//! A new network namespace costs ~0.8 ms of kernel work here (loopback, sysctl tables,
//! per-namespace protocol state), which sat between fork and exec on every start. The pool
//! keeps one spare pair made in the background: a start takes it (the child joins it with
//! `setns`, ~10 µs) and the next pair is made while QEMU initialises. A spare is fresh and
//! empty (loopback only, down), held only by this process's close-on-exec fds, and given
//! to exactly one VMM: `take` moves it out.
//!
//! Namespaces are made on a thread of their own that exits afterwards:
//! `unshare(CLONE_NEWNET|CLONE_NEWIPC)` changes only the calling thread's namespaces, and
//! the fds opened through `/proc/thread-self/ns/` keep them alive after it is gone.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags};

/// A network and an IPC namespace no process has entered.
#[derive(Debug)]
pub struct Namespaces {
    /// `/proc/thread-self/ns/net` of the thread that made it.
    pub net: OwnedFd,
    /// `/proc/thread-self/ns/ipc` of the same thread.
    pub ipc: OwnedFd,
}

impl Namespaces {
    /// Makes a new pair (on a thread of its own, which exits afterwards).
    pub fn make() -> io::Result<Namespaces> {
        std::thread::Builder::new()
            .name("svirt-netns".into())
            .spawn(Namespaces::make_on_exiting_thread)?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    }

    /// Moves the calling thread into a new pair and opens it. Only for a thread that
    /// exits right afterwards: whatever it did next would run in the new namespaces.
    fn make_on_exiting_thread() -> io::Result<Namespaces> {
        // SAFETY: no FILES flag, so every fd stays valid on every thread; the namespaces
        // changed are this thread's own, and the caller's contract is that it exits next.
        unsafe {
            rustix::thread::unshare_unsafe(
                rustix::thread::UnshareFlags::NEWNET | rustix::thread::UnshareFlags::NEWIPC,
            )
        }?;
        let open = |p: &str| {
            rustix::fs::open(p, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(io::Error::from)
        };
        Ok(Namespaces {
            net: open("/proc/thread-self/ns/net")?,
            ipc: open("/proc/thread-self/ns/ipc")?,
        })
    }
}

/// One spare [`Namespaces`], refilled in the background.
#[derive(Debug, Default)]
pub struct NamespacePool {
    spare: Mutex<Option<Namespaces>>,
}

impl NamespacePool {
    /// An empty pool; [`NamespacePool::refill`] makes the first spare.
    pub fn new() -> Arc<NamespacePool> {
        Arc::new(NamespacePool::default())
    }

    /// The spare, or a pair made now if there is none (the first start, or two starts in
    /// quick succession).
    pub fn take(&self) -> io::Result<Namespaces> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        match spare {
            Some(ns) => Ok(ns),
            None => Namespaces::make(),
        }
    }

    /// Makes a spare in the background if there is none. A failure is only logged: the
    /// next [`NamespacePool::take`] makes its pair itself and reports the error then.
    pub fn refill(self: &Arc<Self>) {
        if self
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        let pool = self.clone();
        let made = std::thread::Builder::new()
            .name("svirt-ns-refill".into())
            .spawn(move || {
                // The refill runs right after a start, beside the start's answer on its
                // way to the client: it takes only CPU time nothing else wants.
                idle_priority();
                match Namespaces::make_on_exiting_thread() {
                    Ok(ns) => {
                        let mut spare = pool.spare.lock().unwrap_or_else(|p| p.into_inner());
                        if spare.is_none() {
                            *spare = Some(ns);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "making a spare network namespace"),
                }
            });
        if let Err(e) = made {
            tracing::warn!(error = %e, "starting the namespace refill thread");
        }
    }
}

/// Puts the calling thread in `SCHED_IDLE` (a thread's own policy; no privilege needed to
/// lower it). Best effort: at worst the work runs at normal priority.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::fd::AsFd;

    fn ino(fd: impl AsFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    fn own(ns: &str) -> u64 {
        std::fs::metadata(format!("/proc/self/ns/{ns}"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    }

    /// Every pair taken is new: not this process's namespaces, and never one handed out
    /// before (the spare is moved out, so two VMMs cannot share it).
    #[test]
    fn every_take_is_a_new_pair() {
        if !svirt_testkit::root("unshare of network namespaces") {
            return;
        }
        let pool = NamespacePool::new();
        let mut seen = vec![(own("net"), own("ipc"))];
        let mut held = Vec::new();
        for _ in 0..4 {
            pool.refill();
            let ns = pool.take().unwrap();
            let pair = (ino(&ns.net), ino(&ns.ipc));
            assert!(
                !seen.iter().any(|s| s.0 == pair.0 || s.1 == pair.1),
                "{pair:?} handed out twice or the host's ({seen:?})"
            );
            seen.push(pair);
            held.push(ns);
        }
        // The calling thread stayed where it was.
        assert_eq!(seen[0], (own("net"), own("ipc")));
    }
}
