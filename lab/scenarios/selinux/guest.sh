# Guest side of the SELinux scenario: sourced by the lab's /init (busybox sh, PID 1).
# After the policy load PID 1 is kernel_t (unconfined): it sets up, hands over to the
# manager step (manager.sh), observes, and prints LABCHECK lines via `svirt-probe check`.
S=/scenario
P=$S/svirt-probe
LAB_STATE=/lab/state
ETC=/lab/etc
. $S/manager.sh

# path label. /dev/null: devtmpfs was mounted before the policy load and its nodes carry
# no usable label; the chain's domains need a null device they may use.
# Binaries are copies of the probe; their labels drive the domain chain.
LAYOUT_LABELS='
/dev/null                     system_u:object_r:null_device_t:s0
/lab/bin                      system_u:object_r:bin_t:s0
/lab/bin/init-probe           system_u:object_r:init_exec_t:s0
/lab/bin/virtd-probe          system_u:object_r:virtd_exec_t:s0
/lab/bin/qemu-system-x86_64   system_u:object_r:qemu_exec_t:s0
/lab/etc                      system_u:object_r:etc_t:s0
/lab/etc/plan                 system_u:object_r:virt_etc_t:s0
/lab/etc/attack.plan          system_u:object_r:etc_t:s0
/lab/state                    system_u:object_r:virt_var_lib_t:s0
/lab/img                      system_u:object_r:svirt_image_t:s0
/lab/img/A.img                system_u:object_r:virt_image_t:s0
/lab/img/B.img                system_u:object_r:virt_image_t:s0
/lab/img/A.result             system_u:object_r:virt_image_t:s0
/lab/img/B.result             system_u:object_r:virt_image_t:s0
/lab/img/shared.img           system_u:object_r:virt_image_t:s0
/lab/img/content.iso          system_u:object_r:virt_image_t:s0
/lab/img/home.txt             system_u:object_r:user_home_t:s0
'

lab_setup_layout() {
    # The initramfs root cannot carry labels; a tmpfs can.
    mount -t tmpfs -o mode=0755 lab /lab || return 1
    mkdir -p /lab/bin $ETC $LAB_STATE /lab/img || return 1
    for b in init-probe virtd-probe qemu-system-x86_64; do cp $P /lab/bin/$b || return 1; done
    cp $S/plan $S/attack.plan $ETC/ || return 1
    for f in A.img B.img shared.img content.iso home.txt; do echo "contents of $f" > /lab/img/$f; done
    : > /lab/img/A.result; : > /lab/img/B.result
    # Everything is root-owned and world-accessible: only SELinux decides below.
    chmod 0666 /lab/img/*
    echo "$LAYOUT_LABELS" | while read -r path ctx; do
        [ -n "$path" ] || continue
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

    for f in $LAB_STATE/manager.log /lab/img/A.result /lab/img/B.result; do
        sed "s|^|LABLOG $f: |" $f 2>/dev/null
    done
    $P check --plan $ETC/plan --attack $ETC/attack.plan --expected $S/expected.tsv \
        --before $LAB_STATE/before --running $LAB_STATE/running --after $LAB_STATE/after \
        --dmesg $LAB_STATE/dmesg
}
