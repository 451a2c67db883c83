//! The supervisor thread: one `poll` over every running guest's pidfd and a wake pipe.
//! The manager is the parent of the QEMUs it starts and reaps them itself (init on these
//! hosts reaps orphans only every ~1.4 s), at once; each guest's cleanup then runs on a
//! thread of its own.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::manager::{Inner, Slot};
use crate::process;

pub(crate) fn run(inner: Arc<Inner>) {
    loop {
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        // The map's lock only to list the slots: a record's write (an fsync) happens under
        // that guest's own lock alone (which orders it with the guest's other writes), so
        // other guests' calls never wait for it.
        let slots: Vec<Arc<Slot>> = {
            let g = inner.guests.lock().unwrap_or_else(|p| p.into_inner());
            g.values().cloned().collect()
        };
        let watched: Vec<(Arc<Slot>, Arc<std::os::fd::OwnedFd>)> = slots
            .into_iter()
            .filter_map(|s| {
                let mut st = s.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.dirty {
                    st.dirty = false;
                    if let Err(e) = inner.persist(&st.record) {
                        tracing::error!(guest = %st.record.name, error = %e, "writing the guest record");
                    }
                }
                let fd = match (&st.pidfd, st.finishing) {
                    (Some(fd), false) => Some(fd.clone()),
                    _ => None,
                };
                drop(st);
                fd.map(|fd| (s, fd))
            })
            .collect();
        let mut fds: Vec<libc::pollfd> = std::iter::once(inner.wake_rd.as_raw_fd())
            .chain(watched.iter().map(|(_, fd)| fd.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array; every fd in it is kept open by `watched` or `inner`.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            continue;
        }
        if fds[0].revents != 0 {
            let mut buf = [0u8; 64];
            while matches!(rustix::io::read(&inner.wake_rd, &mut buf), Ok(n) if n > 0) {}
        }
        for (i, (slot, fd)) in watched.iter().enumerate() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            // Reaped here, at once; the cleanup, which may take long, runs on its own thread.
            let status = {
                let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
                st.finishing = true;
                if st.child {
                    process::reap(fd).ok().flatten()
                } else {
                    None
                }
            };
            inner.spawn_cleanup(slot.clone(), status);
        }
        inner
            .cleanups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|h| !h.is_finished());
    }
}

/// Stops the supervisor when the last [`crate::Manager`] handle goes. Guests keep running
/// (as after a daemon exit); a later `open` reattaches to them.
pub(crate) struct Guard {
    pub(crate) inner: Arc<Inner>,
    pub(crate) thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.wake();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        // Cleanups under way finish (their records end `shut-off`) before the store closes.
        let cleanups = std::mem::take(
            &mut *self
                .inner
                .cleanups
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for h in cleanups {
            let _ = h.join();
        }
    }
}
