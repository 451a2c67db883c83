//! Loading, attaching and pinning the programs; the maps svirtd keeps in step with its
//! ledger.
//!
//! Everything lives under one bpffs directory (`/sys/fs/bpf/svirt` by default): the maps
//! and one link per LSM program. Pinned, enforcement outlives svirtd: a crash or restart
//! leaves every guest confined, and the next [`Enforcer::open`] takes the pinned maps
//! over instead of loading anything. [`Enforcer::unpin`] removes it all once no guest
//! uses it (the programs detach when their last link goes).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::BpfError;
use crate::label::{InodeKey, ObjectLabel, SubjectLabel, bytes_of, from_bytes, task_value};
use crate::skel::{OpenSvirtMcsSkel, SvirtMcsSkelBuilder};

/// The LSM programs of `bpf/svirt_mcs.bpf.c`, by the name each link is pinned under.
pub const LSM_PROGRAMS: [&str; 11] = [
    "svirt_file_open",
    "svirt_mmap_file",
    "svirt_file_receive",
    "svirt_bprm_check",
    "svirt_task_kill",
    "svirt_ptrace_access_check",
    "svirt_socket_post_create",
    "svirt_unix_stream_connect",
    "svirt_unix_may_send",
    "svirt_bpf",
    "svirt_task_alloc",
];

/// The maps, by the name each is pinned under.
pub const MAPS: [&str; 5] = ["subjects", "sockets", "objects", "events", "epoch"];

/// Turns every LSM program's load off: only `svirt_decide` (and the maps) load.
pub(crate) fn only_decide(open: &mut OpenSvirtMcsSkel<'_>) {
    let p = &mut open.progs;
    for prog in [
        &mut p.svirt_file_open,
        &mut p.svirt_mmap_file,
        &mut p.svirt_file_receive,
        &mut p.svirt_bprm_check,
        &mut p.svirt_task_kill,
        &mut p.svirt_ptrace_access_check,
        &mut p.svirt_socket_post_create,
        &mut p.svirt_unix_stream_connect,
        &mut p.svirt_unix_may_send,
        &mut p.svirt_bpf,
        &mut p.svirt_task_alloc,
    ] {
        prog.set_autoload(false);
    }
}

/// What [`Enforcer::open`] loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Programs {
    /// The LSM programs, attached: enforcement.
    Enforce,
    /// The maps only (and the decision program): for tests on hosts that refuse LSM
    /// programs, and for reading what a crashed svirtd left pinned.
    MapsOnly,
}

/// The pinned programs and maps of one svirtd.
pub struct Enforcer {
    dir: PathBuf,
    subjects: MapHandle,
    objects: MapHandle,
    events: MapHandle,
    /// The labels' epoch, bumped after every change to `objects` (what the guest tasks
    /// cached of it is stale at any other epoch: `bpf/svirt_mcs.bpf.c`).
    epoch: Epoch,
    /// Whether this open loaded (rather than found) them.
    loaded: bool,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("dir", &self.dir)
            .field("loaded", &self.loaded)
            .finish()
    }
}

impl Enforcer {
    /// Takes over what is pinned under `dir` (a directory on a bpffs), or loads, attaches
    /// and pins it there. An error names the step and the path; nothing is left pinned by
    /// a load that fails.
    pub fn open(dir: &Path, programs: Programs) -> Result<Enforcer, BpfError> {
        if dir.join("objects").exists() {
            return Enforcer::from_pins(dir, false);
        }
        std::fs::create_dir_all(dir.join("links")).map_err(BpfError::io(format!(
            "create {}",
            dir.join("links").display()
        )))?;
        match Enforcer::load_and_pin(dir, programs) {
            Ok(()) => Enforcer::from_pins(dir, true),
            Err(e) => {
                remove_pins(dir);
                Err(e)
            }
        }
    }

    fn load_and_pin(dir: &Path, programs: Programs) -> Result<(), BpfError> {
        // The skeleton borrows its object storage; it lives only for this function (the
        // pins keep maps and links alive after it).
        let mut storage = MaybeUninit::uninit();
        let mut open = SvirtMcsSkelBuilder::default()
            .open(&mut storage)
            .map_err(BpfError::libbpf("open the BPF object"))?;
        if programs == Programs::MapsOnly {
            only_decide(&mut open);
        }
        let mut skel = open
            .load()
            .map_err(BpfError::libbpf("load the BPF-LSM programs"))?;
        for (name, map) in [
            ("subjects", &mut skel.maps.subjects),
            ("sockets", &mut skel.maps.sockets),
            ("objects", &mut skel.maps.objects),
            ("events", &mut skel.maps.events),
            ("epoch", &mut skel.maps.epoch),
        ] {
            let at = dir.join(name);
            map.pin(&at).map_err(BpfError::libbpf(format!(
                "pin map {name} at {}",
                at.display()
            )))?;
        }
        if programs == Programs::Enforce {
            let p = &skel.progs;
            for (name, prog) in [
                ("svirt_file_open", &p.svirt_file_open),
                ("svirt_mmap_file", &p.svirt_mmap_file),
                ("svirt_file_receive", &p.svirt_file_receive),
                ("svirt_bprm_check", &p.svirt_bprm_check),
                ("svirt_task_kill", &p.svirt_task_kill),
                ("svirt_ptrace_access_check", &p.svirt_ptrace_access_check),
                ("svirt_socket_post_create", &p.svirt_socket_post_create),
                ("svirt_unix_stream_connect", &p.svirt_unix_stream_connect),
                ("svirt_unix_may_send", &p.svirt_unix_may_send),
                ("svirt_bpf", &p.svirt_bpf),
                ("svirt_task_alloc", &p.svirt_task_alloc),
            ] {
                let mut link = prog
                    .attach()
                    .map_err(BpfError::libbpf(format!("attach {name}")))?;
                let at = dir.join("links").join(name);
                link.pin(&at).map_err(BpfError::libbpf(format!(
                    "pin link {name} at {}",
                    at.display()
                )))?;
            }
        }
        Ok(())
    }

    fn from_pins(dir: &Path, loaded: bool) -> Result<Enforcer, BpfError> {
        let map = |name: &str| {
            let at = dir.join(name);
            MapHandle::from_pinned_path(&at).map_err(BpfError::libbpf(format!(
                "open pinned map {}",
                at.display()
            )))
        };
        let epoch = Epoch::map(&map("epoch")?)?;
        Ok(Enforcer {
            dir: dir.to_path_buf(),
            subjects: map("subjects")?,
            objects: map("objects")?,
            events: map("events")?,
            epoch,
            loaded,
        })
    }

    /// Whether this open loaded the programs (false: it found them pinned).
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// Whether the LSM programs are attached (their links are pinned).
    pub fn enforcing(&self) -> bool {
        self.dir.join("links").join(LSM_PROGRAMS[0]).exists()
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Labels an object (replacing its label); the programs see the new label from the
    /// return on (the epoch is bumped after the map's update: the cache's order).
    pub fn label(&self, key: &InodeKey, label: &ObjectLabel) -> Result<(), BpfError> {
        let r = self
            .objects
            .update(bytes_of(key), bytes_of(label), MapFlags::ANY)
            .map_err(BpfError::libbpf(format!(
                "label inode {}:{}",
                key.dev, key.ino
            )));
        // Even after an error: a bump too many only costs refills.
        self.epoch.bump();
        r
    }

    /// Removes an object's label; `false` when it had none. As [`Enforcer::label`], the
    /// programs see it gone from the return on.
    pub fn unlabel(&self, key: &InodeKey) -> Result<bool, BpfError> {
        let r = match self.objects.delete(bytes_of(key)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BpfError::Libbpf {
                what: format!("unlabel inode {}:{}", key.dev, key.ino),
                source: e,
            }),
        };
        self.epoch.bump();
        r
    }

    /// The labels' epoch (for tests: every label change moves it).
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// An object's label, if it has one.
    pub fn object(&self, key: &InodeKey) -> Result<Option<ObjectLabel>, BpfError> {
        let v = self
            .objects
            .lookup(bytes_of(key), MapFlags::ANY)
            .map_err(BpfError::libbpf(format!(
                "look up inode {}:{}",
                key.dev, key.ino
            )))?;
        v.map(|b| {
            from_bytes::<ObjectLabel>(&b)
                .ok_or_else(|| BpfError::Invalid(format!("objects: value of {} bytes", b.len())))
        })
        .transpose()
    }

    /// Every labeled object.
    pub fn objects(&self) -> Result<Vec<(InodeKey, ObjectLabel)>, BpfError> {
        let mut out = Vec::new();
        for k in self.objects.keys() {
            let Some(key) = from_bytes::<InodeKey>(&k) else {
                return Err(BpfError::Invalid(format!(
                    "objects: key of {} bytes",
                    k.len()
                )));
            };
            if let Some(label) = self.object(&key)? {
                out.push((key, label));
            }
        }
        Ok(out)
    }

    /// The label of a process (by pidfd), if it has one.
    pub fn subject(&self, pidfd: BorrowedFd<'_>) -> Result<Option<SubjectLabel>, BpfError> {
        let key = pidfd.as_raw_fd();
        let v = self
            .subjects
            .lookup(bytes_of(&key), MapFlags::ANY)
            .map_err(BpfError::libbpf("look up a task's label"))?;
        // The value is the label, then the programs' cache (struct svirt_task).
        Ok(v.and_then(|b| {
            b.get(..std::mem::size_of::<SubjectLabel>())
                .and_then(from_bytes::<SubjectLabel>)
        }))
    }

    /// Labels a process (by pidfd): what the prepared child does for itself before exec.
    pub fn set_subject(&self, pidfd: BorrowedFd<'_>, label: &SubjectLabel) -> Result<(), BpfError> {
        let key = pidfd.as_raw_fd();
        self.subjects
            .update(bytes_of(&key), &task_value(label), MapFlags::ANY)
            .map_err(BpfError::libbpf("label a task"))
    }

    /// The task-label map, for the child's own update ([`SubjectHook`]).
    pub fn subjects_fd(&self) -> BorrowedFd<'_> {
        self.subjects.as_fd()
    }

    /// The denial ring buffer.
    pub fn events_map(&self) -> &MapHandle {
        &self.events
    }

    /// Removes every pin under the directory: the programs detach and the maps go once
    /// no file descriptor holds them. Called when no guest uses the enforcer.
    pub fn unpin(self) -> Result<(), BpfError> {
        let dir = self.dir.clone();
        drop(self);
        remove_pins(&dir);
        if dir.join("objects").exists() || dir.join("links").join(LSM_PROGRAMS[0]).exists() {
            return Err(BpfError::Invalid(format!(
                "{}: pins remain after unpinning",
                dir.display()
            )));
        }
        Ok(())
    }
}

/// The `epoch` map's one value, mapped into this process (the map is `BPF_F_MMAPABLE`):
/// bumped with an atomic add, so that svirtds or tools sharing the pins never lose a bump
/// to a read-modify-write race (a lost bump could bring back an epoch stale entries carry).
struct Epoch {
    ptr: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is shared memory owned by this value alone; it is only accessed
// through an AtomicU64, which is Sync.
unsafe impl Send for Epoch {}
// SAFETY: as above.
unsafe impl Sync for Epoch {}

impl Epoch {
    fn map(map: &MapHandle) -> Result<Epoch, BpfError> {
        let len = rustix::param::page_size();
        // SAFETY: mmap of a BPF array map's fd (its values, one page here), shared and
        // read-write; the result is checked before use and unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BpfError::Io {
                what: "map the epoch".into(),
                source: io::Error::last_os_error(),
            });
        }
        let ptr = std::ptr::NonNull::new(ptr)
            .ok_or_else(|| BpfError::Invalid("mmap of the epoch returned NULL".into()))?;
        Ok(Epoch { ptr, len })
    }

    fn value(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: the mapping is page-aligned, at least 8 bytes long and alive as long as
        // self; the programs read it with plain 64-bit loads, user space only atomically.
        unsafe { &*self.ptr.as_ptr().cast::<std::sync::atomic::AtomicU64>() }
    }

    fn bump(&self) {
        self.value()
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn get(&self) -> u64 {
        self.value().load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        // SAFETY: the mapping made in Epoch::map, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

fn remove_pins(dir: &Path) {
    for name in LSM_PROGRAMS {
        let _ = std::fs::remove_file(dir.join("links").join(name));
    }
    let _ = std::fs::remove_dir(dir.join("links"));
    for name in MAPS {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}

/// The prepared child's own label update, between fork and exec: `pidfd_open(getpid())`,
/// then `BPF_MAP_UPDATE_ELEM` on the task-label map. Allocation-free; the map fd is a
/// duplicate the child inherits (close-on-exec: QEMU never holds it).
pub struct SubjectHook {
    map: OwnedFd,
    /// The task-storage value: the label, then the programs' empty cache.
    value: Vec<u8>,
}

impl SubjectHook {
    /// Prepares the update of `label` through a duplicate of `enforcer`'s task-label map.
    pub fn new(enforcer: &Enforcer, label: SubjectLabel) -> Result<SubjectHook, BpfError> {
        let map = enforcer
            .subjects_fd()
            .try_clone_to_owned()
            .map_err(BpfError::io("duplicate the task-label map fd"))?;
        Ok(SubjectHook {
            map,
            value: task_value(&label),
        })
    }

    /// Runs in the child: labels the calling process. After it, the process (and every
    /// task it creates) is the guest's, and bpf(2) is refused to it.
    pub fn apply(&mut self) -> io::Result<()> {
        // SAFETY: pidfd_open of our own pid; returns a new fd or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let key: i32 = pidfd as i32;
        // union bpf_attr for BPF_MAP_*_ELEM: map_fd u32, pad, key u64, value u64, flags u64.
        let mut attr = [0u64; 4];
        attr[0] = u64::from(self.map.as_raw_fd() as u32);
        attr[1] = &key as *const i32 as u64;
        attr[2] = self.value.as_ptr() as u64;
        attr[3] = 0; // BPF_ANY
        const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
        // SAFETY: attr is a valid bpf_attr prefix of 32 bytes whose pointers reference
        // `key` and `self.value` (the map's value size), both alive for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_ELEM,
                attr.as_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        let err = io::Error::last_os_error();
        // SAFETY: closing the pidfd opened above.
        unsafe { libc::close(key) };
        if r != 0 { Err(err) } else { Ok(()) }
    }
}
