# Host-side hooks of the BPF-LSM scenario (sourced by lab/run; bash, set -euo pipefail).
# Debian's kernel with its default LSM list (BPF LSM among them), no svirtd: the example
# binary `lab_check` of svirt-bpf (crates/bpf/examples/lab_check.rs) loads, attaches and
# pins the programs of crates/bpf/bpf/svirt_mcs.bpf.c through svirt_bpf::enforcer, labels
# files on a tmpfs and the static busybox, and runs busybox in children labeled between
# fork and exec (SubjectHook) against them: each operation unlabeled (control) and labeled.
#
# Options:  --no-bpf-lsm   control: boot with an LSM list without bpf (lsm=...), so the
#                          programs cannot enforce (the run must FAIL, at lsm.bpf and load)
#           --bench        also the benchmark (~25 s more): open()+close() of a
#                          labeled file timed by an unlabeled process (host) and by one
#                          labeled s0:c1,c2 (guest; also through a tree label), in rounds
#                          with the programs detached and re-attached in turn; goal: guest
#                          <= 5%, host within noise. Numbers in LABINFO bench.* lines (goal
#                          met or MISSED), not checks; one check, bench.detach: the rounds
#                          really ran with and without the programs.
SCENARIO_PACKAGES=(clang libelf-dev zlib1g-dev)
SCENARIO_BINS=()

scenario_args() {
    NO_BPF_LSM=0 BENCH=0
    while [ $# -gt 0 ]; do
        case $1 in
            --no-bpf-lsm) NO_BPF_LSM=1; shift ;;
            --bench) BENCH=1; shift ;;
            *) lab_die "bpf scenario: unknown option $1" ;;
        esac
    done
    LAB_RUN_NAME=bpf
    [ "$NO_BPF_LSM" = 0 ] || LAB_RUN_NAME=bpf-no-lsm
    [ "$BENCH" = 0 ] || LAB_RUN_NAME=$LAB_RUN_NAME-bench
}

# Debian's own command line: its CONFIG_LSM puts bpf in the list. The control names a
# list without it.
scenario_cmdline() {
    if [ "$NO_BPF_LSM" = 1 ]; then echo "lsm=landlock,lockdown,yama,integrity,apparmor"; fi
}

# The example is built like the framework's binaries (lab_build_bins: static, profile lab,
# the lab's own target dir); lab_build_bins only builds packages' binaries.
scenario_build_example() { # PACKAGE EXAMPLE -> prints the binary's path
    local bin=$BIN_DIR/examples/$2
    lab_log "building example $2 of $1 (static)"
    (cd "$REPO" && CARGO_TARGET_DIR="$CACHE/target" RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build -q --profile lab --target x86_64-unknown-linux-gnu -p "$1" --example "$2" >&2) \
        || lab_die "building example $2 of $1 failed"
    [ -x "$bin" ] || lab_die "no binary $bin after the build"
    if LC_ALL=C readelf -l "$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
        lab_die "$bin is not static"
    fi
    printf '%s\n' "$bin"
}

scenario_stage() {
    local root=$1 d=$1/scenario bin
    bin=$(scenario_build_example svirt-bpf lab_check)
    install -s -m 755 "$bin" "$d/lab_check"
    install -m 644 "$SCEN_DIR/guest.sh" "$d/"
    printf 'NO_BPF_LSM=%s\nBENCH=%s\n' "$NO_BPF_LSM" "$BENCH" > "$d/scenario.env"
}

scenario_checks() {
    printf '%s\n' lsm.bpf load pinned label.objects \
        file.read_own file.write_own file.read_other file.write_other file.read_shared \
        file.write_shared file.read_readonly file.write_readonly file.read_unlabeled label.change \
        exec.unlabeled mmap.exec_image fork.read_other fork_exec.read_other fork.read_own fork.readback \
        host.read_other subject.readback signal.other signal.own bpf.syscall events.denials \
        $([ "$BENCH" = 1 ] && echo bench.detach) \
        unpin
}
