# Guest side of the BPF-LSM scenario: sourced by the lab's /init (busybox sh, PID 1).
# Checks the BPF LSM is active, then runs lab_check (crates/bpf/examples/lab_check.rs),
# which prints the other LABCHECK lines; libbpf's messages (the verifier's log of a refused
# program) reach the console on its stderr.
S=/scenario
. $S/scenario.env

scenario_main() {
    mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
    lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)
    case ,$lsm, in
        *,bpf,*) labcheck lsm.bpf PASS "active LSMs: $lsm" ;;
        *) labcheck lsm.bpf FAIL "bpf is not an active LSM: '$lsm'" ;;
    esac
    echo "LABINFO bpffs: $(grep -c ' bpf ' /proc/mounts) mounted; jit_enable=$(cat /proc/sys/net/core/bpf_jit_enable 2>/dev/null)"
    if [ "$BENCH" = 1 ]; then $S/lab_check --bench; else $S/lab_check; fi
    rc=$?
    echo "LABINFO lab_check exit $rc"
    if [ $rc != 0 ]; then
        echo "LABINFO kernel messages about bpf:"
        dmesg | grep -i -e bpf -e lsm -e btf | tail -n 40
    fi
    return $rc
}
