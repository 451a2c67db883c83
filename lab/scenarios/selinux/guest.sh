# Guest side of the SELinux scenario: sourced by the lab's /init (busybox sh, PID 1).
# After the policy load PID 1 is kernel_t (unconfined): it sets up, hands over to the
# manager step (manager.sh:
# the stand-in or svirtd), observes, and prints LABCHECK lines via `svirt-probe check`.
S=/scenario
P=$S/svirt-probe
LAB_STATE=/lab/state
ETC=/lab/etc
. $S/manager.sh

# The layout's labels (PATH CONTEXT): /scenario/layout.labels, shared with the host side.

lab_setup_layout() {
    # The initramfs root cannot carry labels; a tmpfs can.
    mount -t tmpfs -o mode=0755 lab /lab || return 1
    mkdir -p /lab/bin $ETC $LAB_STATE /lab/img || return 1
    for b in init-probe virtd-probe qemu-system-x86_64; do cp $P /lab/bin/$b || return 1; done
    # svirtd and its CLI, when the scenario runs them (manager-svirtd.sh).
    for b in svirtd svirt; do [ ! -f $S/$b ] || cp $S/$b /lab/bin/$b || return 1; done
    mkdir -p /lab/run || return 1
    cp $S/plan $S/attack.plan $ETC/ || return 1
    for f in A.img B.img shared.img content.iso home.txt; do echo "contents of $f" > /lab/img/$f; done
    : > /lab/img/A.result; : > /lab/img/B.result
    # Everything is root-owned and world-accessible: only SELinux decides below.
    chmod 0666 /lab/img/*
    grep -v '^#' $S/layout.labels | while read -r path ctx; do
        [ -n "$path" ] || continue
        case $path in /lab/bin/svirt*) [ -e "$path" ] || continue ;; esac
        $P setlabel "$path" "$ctx" || exit 1
    done
}

snap() { $P snapshot --plan $ETC/plan --attack $ETC/attack.plan "$@"; }

scenario_main() {
    mount -t selinuxfs selinuxfs /sys/fs/selinux
    if out=$($P load-policy $S/policy.33 2>&1); then
        labcheck setup.policy_load PASS "$out"
    else
        labcheck setup.policy_load FAIL "$out"; return 1
    fi
    # svirtd puts each guest in a cgroup (memory, pids): cgroup2, mounted after the policy
    # load so it carries the policy's label (cgroup_t).
    mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
    if out=$(lab_setup_layout 2>&1); then
        labcheck setup.layout PASS "tmpfs /lab labeled"
    else
        labcheck setup.layout FAIL "$out"; return 1
    fi
    echo 1 > /sys/fs/selinux/enforce
    if [ "$(cat /sys/fs/selinux/enforce)" = 1 ]; then
        labcheck setup.enforcing PASS "context of PID 1: $($P context)"
    else
        labcheck setup.enforcing FAIL "enforce=$(cat /sys/fs/selinux/enforce)"; return 1
    fi
    snap --out $LAB_STATE/before

    # Keep going after a failed start: `check` then reports every check it could not
    # observe as FAIL, which says more than a missing list.
    if manager_start; then
        labcheck manager.start PASS "$(tr '\n' ' ' < $LAB_STATE/pids.all)"
        # Guests learn each other's pids from a shared (s0) file, as an attacker would.
        grep -v -e '^manager ' $LAB_STATE/pids.all > /lab/img/peers.tmp
        $P setlabel /lab/img/peers.tmp system_u:object_r:svirt_image_t:s0
        mv /lab/img/peers.tmp /lab/img/peers
        results=$(awk '$1 == "results" { print $3 }' $ETC/attack.plan)
        # shellcheck disable=SC2086
        $P wait-line --line END --timeout 90 $results
        snap --pids $LAB_STATE/pids.all --out $LAB_STATE/running
    else
        labcheck manager.start FAIL "no pids from the manager"
    fi
    if manager_stop; then
        labcheck manager.stop PASS "$(cat $LAB_STATE/done 2>/dev/null)"
    else
        labcheck manager.stop FAIL "$(cat $LAB_STATE/done 2>/dev/null)"
    fi
    snap --out $LAB_STATE/after
    dmesg > $LAB_STATE/dmesg

    # The running snapshot goes to the host too: its host checks need the guests' pids.
    for f in $LAB_STATE/manager.log $LAB_STATE/running /lab/img/A.result /lab/img/B.result; do
        sed "s|^|LABLOG $f: |" $f 2>/dev/null
    done
    $P check --plan $ETC/plan --attack $ETC/attack.plan --expected $S/expected.tsv \
        --before $LAB_STATE/before --running $LAB_STATE/running --after $LAB_STATE/after \
        --dmesg $LAB_STATE/dmesg
}
