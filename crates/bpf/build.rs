//! Compiles the BPF programs (`bpf/*.bpf.c`) with clang and generates their skeleton.
//!
//! clang (Debian: `clang`) is the one build-time tool this needs; `vmlinux.h` is
//! committed (see `bpf/README.md`), so the build reads nothing from the running kernel.

use std::path::PathBuf;
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

const SOURCE: &str = "bpf/svirt_mcs.bpf.c";

fn main() {
    if Command::new("clang").arg("--version").output().is_err() {
        panic!(
            "svirt-bpf: clang is needed to compile {SOURCE} (Debian: apt-get install clang; \
             scripts/demo and scripts/test install it)"
        );
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let skel = out_dir.join("svirt_mcs.skel.rs");
    if let Err(e) = SkeletonBuilder::new()
        .source(SOURCE)
        .clang_args(["-Ibpf", "-Wall", "-Werror"])
        .build_and_generate(&skel)
    {
        panic!("svirt-bpf: building {SOURCE}: {e:#}");
    }
    for f in [SOURCE, "bpf/mcs.h", "bpf/vmlinux.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
}
