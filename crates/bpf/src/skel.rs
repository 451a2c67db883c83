//! The skeleton libbpf-cargo generates for `bpf/svirt_mcs.bpf.c` (build.rs).

#![allow(missing_docs, clippy::all, clippy::unwrap_used, unsafe_op_in_unsafe_fn)]

include!(concat!(env!("OUT_DIR"), "/svirt_mcs.skel.rs"));
