//! Denials the programs report (`struct svirt_event` on the `events` ring buffer), and
//! their one-line form, which svirtd logs and `svirt denials` reads back like an AVC.
//!
//! ```text
//! svirt-bpf: denied { read } hook=open pid=812 comm="qemu-system-x86" scontext=s0:c1,c2 tcontext=s0:c3,c4 dev=0:45 ino=17
//! ```
//!
//! `tcontext=unlabeled` is an object no plan names; `tpid=` names a signal's or ptrace's
//! target.

use std::time::Duration;

use crate::BpfError;
use crate::label::{Allow, CAT_WORDS, Cats, from_bytes};

/// The hooks, as numbered in `bpf/svirt_mcs.bpf.c`.
pub const HOOKS: [(u32, &str); 8] = [
    (1, "open"),
    (2, "mmap"),
    (3, "receive"),
    (4, "exec"),
    (5, "signal"),
    (6, "ptrace"),
    (7, "connect"),
    (8, "bpf"),
];

/// `struct svirt_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RawEvent {
    hook: u32,
    want: u32,
    pid: u32,
    target_pid: u32,
    dev: u64,
    ino: u64,
    labeled: u32,
    pad: u32,
    subject: [u64; CAT_WORDS],
    object: [u64; CAT_WORDS],
    comm: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<RawEvent>() == 312);

/// One denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The hook's name (`open`, `signal`…).
    pub hook: String,
    /// What was asked: an access (`read,write`) or, for ptrace and bpf, the mode/command.
    pub want: String,
    /// The denied process.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// The guest's level (`s0:c1,c2`).
    pub subject: String,
    /// The object's level, or `unlabeled`.
    pub object: String,
    /// The object's identity (`major:minor`, inode), for file hooks.
    pub inode: Option<(String, u64)>,
    /// The target process, for signals and ptrace.
    pub target_pid: Option<u32>,
}

impl Denial {
    /// Decodes one ring-buffer record; `None` for a record of another size.
    pub fn from_record(b: &[u8]) -> Option<Denial> {
        let e: RawEvent = from_bytes(b)?;
        let hook = HOOKS
            .iter()
            .find(|(n, _)| *n == e.hook)
            .map_or_else(|| format!("hook{}", e.hook), |(_, s)| s.to_string());
        let want = match e.hook {
            6 => format!("mode={:#x}", e.want),
            8 => format!("cmd={}", e.want),
            5 => "signal".into(),
            _ => Allow(e.want).words(),
        };
        let end = e.comm.iter().position(|&c| c == 0).unwrap_or(e.comm.len());
        let comm = String::from_utf8_lossy(&e.comm[..end])
            .chars()
            .map(|c| if c.is_control() || c == '"' { '?' } else { c })
            .collect();
        Some(Denial {
            hook,
            want,
            pid: e.pid,
            comm,
            subject: Cats(e.subject).to_level().to_string(),
            object: if e.labeled != 0 {
                Cats(e.object).to_level().to_string()
            } else {
                "unlabeled".into()
            },
            inode: (e.dev != 0 || e.ino != 0)
                .then(|| (format!("{}:{}", e.dev >> 20, e.dev & 0xfffff), e.ino)),
            target_pid: (e.target_pid != 0).then_some(e.target_pid),
        })
    }

    /// The denial's log line (module docs).
    pub fn line(&self) -> String {
        let mut s = format!(
            "svirt-bpf: denied {{ {} }} hook={} pid={} comm=\"{}\" scontext={} tcontext={}",
            self.want, self.hook, self.pid, self.comm, self.subject, self.object
        );
        if let Some((dev, ino)) = &self.inode {
            s.push_str(&format!(" dev={dev} ino={ino}"));
        }
        if let Some(t) = self.target_pid {
            s.push_str(&format!(" tpid={t}"));
        }
        s
    }

    /// Reads a line back (as `svirt denials` does); `None` for any other line.
    pub fn parse_line(line: &str) -> Option<Denial> {
        let rest = &line[line.find("svirt-bpf: denied { ")? + "svirt-bpf: denied { ".len()..];
        let (want, rest) = rest.split_once(" } ")?;
        let field = |k: &str| -> Option<String> {
            let key = format!(" {k}=");
            let at = format!(" {rest}").find(&key)? + key.len() - 1;
            let v = &rest[at..];
            if let Some(q) = v.strip_prefix('"') {
                Some(q[..q.find('"')?].to_string())
            } else {
                Some(v.split(' ').next()?.to_string())
            }
        };
        Some(Denial {
            hook: field("hook")?,
            want: want.to_string(),
            pid: field("pid")?.parse().ok()?,
            comm: field("comm")?,
            subject: field("scontext")?,
            object: field("tcontext")?,
            inode: match (field("dev"), field("ino")) {
                (Some(d), Some(i)) => Some((d, i.parse().ok()?)),
                _ => None,
            },
            target_pid: field("tpid").and_then(|t| t.parse().ok()),
        })
    }
}

/// Hands every denial waiting on the ring buffer to `each`, waiting up to `wait` for the
/// first. Returns how many there were.
pub fn drain(
    events: &libbpf_rs::MapHandle,
    wait: Duration,
    mut each: impl FnMut(Denial),
) -> Result<usize, BpfError> {
    let mut seen = 0usize;
    {
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(events, |b: &[u8]| {
                if let Some(d) = Denial::from_record(b) {
                    each(d);
                    seen += 1;
                }
                0
            })
            .map_err(BpfError::libbpf("read the denial ring buffer"))?;
        let ring = builder
            .build()
            .map_err(BpfError::libbpf("read the denial ring buffer"))?;
        ring.poll(wait)
            .map_err(BpfError::libbpf("poll the denial ring buffer"))?;
        ring.consume()
            .map_err(BpfError::libbpf("read the denial ring buffer"))?;
    }
    Ok(seen)
}

/// The denial ring buffer as pinned under `pin_dir` ([`crate::enforcer::Enforcer`]).
pub fn open_pinned(pin_dir: &std::path::Path) -> Result<libbpf_rs::MapHandle, BpfError> {
    let at = pin_dir.join("events");
    libbpf_rs::MapHandle::from_pinned_path(&at).map_err(BpfError::libbpf(format!(
        "open pinned map {}",
        at.display()
    )))
}

/// Hands every denial to `each` as it comes, until `stop` is set (checked at least every
/// `tick`). For a thread of svirtd's that logs them.
pub fn follow(
    events: &libbpf_rs::MapHandle,
    stop: &std::sync::atomic::AtomicBool,
    tick: Duration,
    mut each: impl FnMut(Denial),
) -> Result<(), BpfError> {
    let mut builder = libbpf_rs::RingBufferBuilder::new();
    builder
        .add(events, |b: &[u8]| {
            if let Some(d) = Denial::from_record(b) {
                each(d);
            }
            0
        })
        .map_err(BpfError::libbpf("read the denial ring buffer"))?;
    let ring = builder
        .build()
        .map_err(BpfError::libbpf("read the denial ring buffer"))?;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // EINTR is not an error here: the loop polls again.
        if let Err(e) = ring.poll(tick)
            && e.kind() != libbpf_rs::ErrorKind::Interrupted
        {
            return Err(BpfError::Libbpf {
                what: "poll the denial ring buffer".into(),
                source: e,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::bytes_of;

    fn raw(hook: u32, labeled: bool) -> RawEvent {
        let mut comm = [0u8; 16];
        comm[..15].copy_from_slice(b"qemu-system-x86");
        RawEvent {
            hook,
            want: 1,
            pid: 812,
            target_pid: if hook == 5 { 900 } else { 0 },
            dev: if hook == 1 { 45 } else { 0 },
            ino: if hook == 1 { 17 } else { 0 },
            labeled: u32::from(labeled),
            pad: 0,
            subject: Cats::of(&"s0:c1,c2".parse().expect("level")).0,
            object: Cats::of(&"s0:c3,c4".parse().expect("level")).0,
            comm,
        }
    }

    #[test]
    fn a_record_becomes_a_line_and_the_line_reads_back() {
        let d = Denial::from_record(bytes_of(&raw(1, true))).expect("decodes");
        assert_eq!(
            d.line(),
            "svirt-bpf: denied { read } hook=open pid=812 comm=\"qemu-system-x86\" \
             scontext=s0:c1,c2 tcontext=s0:c3,c4 dev=0:45 ino=17"
        );
        assert_eq!(
            Denial::parse_line(&format!("[  12.3] {}", d.line())),
            Some(d)
        );
        let s = Denial::from_record(bytes_of(&raw(5, false))).expect("decodes");
        assert_eq!(s.object, "unlabeled");
        assert_eq!(s.target_pid, Some(900));
        assert_eq!(Denial::parse_line(&s.line()), Some(s));
        assert_eq!(Denial::parse_line("avc: denied { read }"), None);
        assert_eq!(Denial::from_record(&[0u8; 10]), None);
    }
}
