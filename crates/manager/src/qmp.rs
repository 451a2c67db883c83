//! A small blocking QMP client: greeting, `qmp_capabilities`, commands, events.
//!
//! QMP is newline-delimited JSON over a unix socket. Replies to commands and asynchronous
//! events share the stream; events read while waiting for a reply are kept in order and
//! handed out by [`Qmp::next_event`].

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::{ManagerError, Result};

/// A connected QMP session in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: VecDeque<Value>,
    greeting: Value,
    next_id: u64,
}

fn qmp_err(what: &str, e: impl std::fmt::Display) -> ManagerError {
    ManagerError::Qmp(format!("{what}: {e}"))
}

/// Connects to the monitor socket at `socket` only if that name is, at the moment of the
/// connect, a socket owned by this process's uid (the manager binds every QMP socket
/// itself), never through a symlink: the socket is opened `O_PATH | O_NOFOLLOW`, checked
/// with `fstat`, and connected through `/proc/self/fd/N`, which names that very inode
/// whatever happens to the name meanwhile. The control dir already keeps guests away
/// from these names; this also covers a record of an earlier version whose socket lies
/// in the guest's own runtime dir, where the guest could swap the name between a check
/// and a plain `connect`.
pub(crate) fn connect_verified(socket: &Path) -> Result<UnixStream> {
    use rustix::fs::{FileType, Mode, OFlags};
    let what = || format!("connect {}", socket.display());
    let fd = rustix::fs::open(
        socket,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| qmp_err(&what(), std::io::Error::from(e)))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| qmp_err(&what(), std::io::Error::from(e)))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    let me = rustix::process::geteuid().as_raw();
    if kind != FileType::Socket || st.st_uid != me {
        return Err(ManagerError::Qmp(format!(
            "{}: not a monitor socket of the manager ({}, owned by uid {}; a QMP socket is a socket owned by uid {me}): refused",
            socket.display(),
            match kind {
                FileType::Symlink => "a symlink",
                FileType::Socket => "a socket",
                FileType::Directory => "a directory",
                _ => "another kind of file",
            },
            st.st_uid
        )));
    }
    use std::os::fd::AsRawFd;
    let via = format!("/proc/self/fd/{}", fd.as_raw_fd());
    UnixStream::connect(&via).map_err(|e| qmp_err(&what(), e))
}

impl Qmp {
    /// Connects to `socket`, reads the greeting and negotiates capabilities. `timeout`
    /// bounds each read (QEMU sends the greeting once it is initialised).
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let stream = connect_verified(socket)?;
        Qmp::from_stream(stream, timeout)
    }

    /// Like [`Qmp::connect`], retrying the connection until `deadline` (the socket may not
    /// exist yet while QEMU starts).
    pub fn connect_until(socket: &Path, deadline: Instant) -> Result<Qmp> {
        let mut delay = Duration::from_micros(500);
        loop {
            match UnixStream::connect(socket) {
                Ok(s) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return Qmp::from_stream(s, left.max(Duration::from_millis(100)));
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(qmp_err(&format!("connect {}", socket.display()), e));
                }
                Err(_) => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(20));
                }
            }
        }
    }

    /// Runs the handshake on an already connected stream.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Qmp> {
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| qmp_err("set timeout", e))?;
        let writer = stream.try_clone().map_err(|e| qmp_err("clone", e))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: VecDeque::new(),
            greeting: Value::Null,
            next_id: 1,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(ManagerError::Qmp(format!(
                "expected a QMP greeting, got {greeting}"
            )));
        }
        qmp.greeting = greeting;
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// The greeting QEMU sent (version, capabilities).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Changes the read timeout of later reads.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| qmp_err("set timeout", e))
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| qmp_err("read", e))?;
        if n == 0 {
            return Err(ManagerError::Qmp("connection closed by QEMU".into()));
        }
        serde_json::from_str(&line).map_err(|e| qmp_err("bad JSON from QEMU", e))
    }

    /// Executes `command` with optional `arguments`; returns its `return` value, or
    /// [`ManagerError::QmpCommand`] with QEMU's error class and description.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let reply = self.execute_raw(msg)?;
        reply_result(reply)
    }

    /// Sends a whole QMP message (an object with `execute` and maybe `arguments`), as
    /// `virsh qemu-monitor-command` does, and returns the full reply object (`return` or
    /// `error`). An `id` is added to match the reply.
    pub fn execute_raw(&mut self, mut msg: Value) -> Result<Value> {
        let obj = msg
            .as_object_mut()
            .ok_or_else(|| ManagerError::Qmp("a QMP command must be a JSON object".into()))?;
        if !obj.contains_key("execute") {
            return Err(ManagerError::Qmp(
                "a QMP command needs an \"execute\" member".into(),
            ));
        }
        let id = format!("svirt-{}", self.next_id);
        self.next_id += 1;
        obj.insert("id".into(), Value::String(id.clone()));
        let mut text = serde_json::to_string(&msg).map_err(|e| qmp_err("encode", e))?;
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| qmp_err("write", e))?;
        loop {
            let m = self.read_message()?;
            if m.get("event").is_some() {
                self.events.push_back(m);
                continue;
            }
            if m.get("id").and_then(Value::as_str) == Some(id.as_str()) {
                let mut m = m;
                if let Some(o) = m.as_object_mut() {
                    o.remove("id");
                }
                return Ok(m);
            }
            // A reply without our id cannot be ours; QMP answers in order, so keep reading.
        }
    }

    /// The next event, waiting at most `timeout`. `Ok(None)` on timeout.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Value>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        // Too large to add to the clock: no limit (the socket's timeout saturates).
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return Ok(None);
            }
            self.set_timeout(left)?;
            match self.read_message() {
                Ok(m) if m.get("event").is_some() => return Ok(Some(m)),
                Ok(_) => continue,
                Err(ManagerError::Qmp(msg))
                    if msg.contains("timed out")
                        || msg.contains("would block")
                        || msg.contains("Resource temporarily unavailable") =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn reply_result(reply: Value) -> Result<Value> {
    if let Some(r) = reply.get("return") {
        return Ok(r.clone());
    }
    if let Some(e) = reply.get("error") {
        return Err(ManagerError::QmpCommand {
            class: e
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("GenericError")
                .to_string(),
            desc: e
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    Err(ManagerError::Qmp(format!("unexpected reply {reply}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A socket of the manager's own connects (control); a symlink to it, a socket owned
    /// by another uid and a directory under the socket's name are refused naming it.
    #[test]
    fn only_the_managers_own_socket_is_connected() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path().join("qmp.sock");
        let listener = UnixListener::bind(&own).unwrap();
        connect_verified(&own).unwrap();
        assert!(
            listener.accept().is_ok(),
            "the connection reached the socket"
        );

        let link = tmp.path().join("link.sock");
        std::os::unix::fs::symlink(&own, &link).unwrap();
        let e = connect_verified(&link).unwrap_err().to_string();
        assert!(e.contains("link.sock") && e.contains("a symlink"), "{e}");

        let dir = tmp.path().join("dir.sock");
        std::fs::create_dir(&dir).unwrap();
        let e = connect_verified(&dir).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");

        if rustix::process::geteuid().is_root() {
            let other = tmp.path().join("other.sock");
            let _l = UnixListener::bind(&other).unwrap();
            std::os::unix::fs::lchown(&other, Some(12345), Some(12345)).unwrap();
            let e = connect_verified(&other).unwrap_err().to_string();
            assert!(e.contains("uid 12345"), "{e}");
        }
    }
}
