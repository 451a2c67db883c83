//! The programs' decision alone, run in the kernel through `BPF_PROG_TEST_RUN`.
//!
//! `svirt_decide` is a `syscall` program calling the same `svirt_may()` (`bpf/mcs.h`) the
//! LSM hooks call, compiled and verified as they are. It needs no LSM and no BPF
//! trampoline, so the tests check the real bytecode against svirt's policy model on
//! every host, including those (like the development host) that refuse LSM programs.

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use crate::BpfError;
use crate::label::{Allow, Cats, ObjectLabel, SubjectLabel};
use crate::skel::{SvirtMcsSkel, SvirtMcsSkelBuilder};

/// `struct svirt_decide_args` of the program.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct DecideArgs {
    subject: SubjectLabel,
    object: ObjectLabel,
    want: u32,
    allowed: u32,
}

const _: () = assert!(std::mem::size_of::<DecideArgs>() == 136 + 144 + 8);

/// The loaded decision program (the LSM programs are not loaded, nor attached).
pub struct Decider {
    skel: SvirtMcsSkel<'static>,
}

impl Decider {
    /// Loads the object with only `svirt_decide`; needs `CAP_BPF` (root).
    pub fn load() -> Result<Decider, BpfError> {
        // The skeleton borrows its object storage for its whole life: one leaked
        // allocation per Decider, which tests make a handful of.
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = SvirtMcsSkelBuilder::default()
            .open(storage)
            .map_err(BpfError::libbpf("open the BPF object"))?;
        crate::enforcer::only_decide(&mut open);
        let skel = open
            .load()
            .map_err(BpfError::libbpf("load the decision program"))?;
        Ok(Decider { skel })
    }

    /// Whether a subject at `subject` may have `want` on `object`, as the kernel decides.
    pub fn may(&self, subject: &Cats, object: &ObjectLabel, want: Allow) -> Result<bool, BpfError> {
        let mut args = DecideArgs {
            subject: SubjectLabel::new(*subject),
            object: *object,
            want: want.0,
            allowed: u32::MAX,
        };
        // SAFETY: DecideArgs is repr(C) plain data; the slice covers exactly it and lives
        // for the call, which the kernel reads and writes back in place.
        let ctx = unsafe {
            std::slice::from_raw_parts_mut(
                (&mut args as *mut DecideArgs).cast::<u8>(),
                std::mem::size_of::<DecideArgs>(),
            )
        };
        let input = libbpf_rs::ProgramInput {
            context_in: Some(ctx),
            ..Default::default()
        };
        let out = self
            .skel
            .progs
            .svirt_decide
            .test_run(input)
            .map_err(BpfError::libbpf("run svirt_decide"))?;
        if out.return_value != 0 {
            return Err(BpfError::Invalid(format!(
                "svirt_decide returned {}",
                out.return_value
            )));
        }
        match args.allowed {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(BpfError::Invalid(format!(
                "svirt_decide left allowed = {other}"
            ))),
        }
    }
}
