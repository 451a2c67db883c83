# Guest side of the AppArmor scenario: sourced by the lab's /init (busybox sh, PID 1,
# unconfined). Sets up, proves AppArmor enforces a hand-written profile, hands over to
# svirtd (manager.sh), observes, and prints LABCHECK lines via `svirt-probe aa-check`.
S=/scenario
P=$S/svirt-probe
LAB_STATE=/lab/state
ETC=/lab/etc
export PATH=/bin:/sbin
. $S/scenario.env

# AppArmor enabled as the major LSM, its securityfs mounted (apparmor_parser and the
# checks read /sys/kernel/security/apparmor).
setup_apparmor() {
    mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
    en=$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)
    lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)
    cur=$(cat /proc/self/attr/apparmor/current 2>/dev/null)
    if [ "$en" = Y ] && [ -d /sys/kernel/security/apparmor ]; then
        labcheck setup.apparmor PASS "enabled=$en lsm=$lsm PID 1: $cur"
    else
        labcheck setup.apparmor FAIL "enabled=$en lsm=$lsm securityfs: $(ls /sys/kernel/security 2>&1 | tr '\n' ' ')"
        return 1
    fi
}

# A hand-written profile, loaded the way svirtd loads its own, entered at exec by the probe
# (`aa-exec`: /proc/thread-self/attr/apparmor/exec): the allowed file reads, the other is
# refused with EACCES and an apparmor="DENIED" record names the profile.
setup_profile() {
    mkdir -p /lab/setup /lab/bin && cp $P /lab/bin/svirt-probe
    echo allowed > /lab/setup/allowed; echo denied > /lab/setup/denied
    chmod 0666 /lab/setup/*
    if out=$(apparmor_parser --replace --skip-cache $S/lab-setup.profile 2>&1) \
        && grep -q '^lab-setup (enforce)$' /sys/kernel/security/apparmor/profiles; then
        labcheck setup.parser_load PASS "apparmor_parser --replace: lab-setup (enforce) loaded $out"
    else
        labcheck setup.parser_load FAIL "$out; profiles: $(tr '\n' ' ' < /sys/kernel/security/apparmor/profiles)"
        return 1
    fi
    try() { $P aa-exec lab-setup /lab/bin/svirt-probe try "$@" </dev/null >/dev/null 2>&1; echo $?; }
    ok=$(try read /lab/setup/allowed)
    no=$(try read /lab/setup/denied)
    unconfined=$($P try read /lab/setup/denied </dev/null >/dev/null 2>&1; echo $?)
    rec=$(dmesg | grep -a 'apparmor="DENIED"' | grep -a 'profile="lab-setup"' | grep -a 'name="/lab/setup/denied"' | tail -n1)
    if [ "$ok" = 0 ] && [ "$no" = 13 ] && [ "$unconfined" = 0 ] && [ -n "$rec" ]; then
        labcheck setup.profile_confines PASS "allowed: exit $ok, denied: exit $no (EACCES), unconfined: exit $unconfined; $rec"
    else
        labcheck setup.profile_confines FAIL "allowed: exit $ok (want 0), denied: exit $no (want 13), unconfined: exit $unconfined (want 0), record: ${rec:-none}"
    fi
    if out=$(apparmor_parser --remove $S/lab-setup.profile 2>&1) \
        && ! grep -q '^lab-setup ' /sys/kernel/security/apparmor/profiles; then
        labcheck setup.parser_remove PASS "apparmor_parser --remove: lab-setup gone"
    else
        labcheck setup.parser_remove FAIL "$out"
    fi
}

lab_setup_layout() {
    mkdir -p /lab/bin $ETC $LAB_STATE /lab/img /lab/run || return 1
    cp $P /lab/bin/qemu-system-x86_64 && cp $S/svirtd $S/svirt /lab/bin/ || return 1
    cp $S/plan $S/attack.plan $ETC/ || return 1
    for f in A.img B.img shared.img content.iso home.txt; do echo "contents of $f" > /lab/img/$f; done
    : > /lab/img/A.result; : > /lab/img/B.result; : > /lab/img/peers
    # Root-owned and world-accessible: with AppArmor alone, only AppArmor decides below.
    chmod 0666 /lab/img/*
    chmod 0644 $ETC/attack.plan /lab/img/peers
}

snap() { $P aa-snapshot "$@"; }

# svirtd's jail (a mount namespace showing only the guest's plan) would answer ENOENT for
# the other guest's files and EROFS for read-only content before AppArmor is asked. The
# scenario's question is what AppArmor alone says, so PID 1 breaches each jail on purpose:
# every file the guest's attacks name is made visible in it, read-write (svirt-probe
# breach-jail). A guest without a mount namespace of its own needs nothing.
breach_jails() {
    mine=$(readlink /proc/1/ns/mnt) out= bad=
    while read -r g pid; do
        case $g in manager|END) continue ;; esac
        ns=$(readlink /proc/$pid/ns/mnt) || { bad="$bad $g:gone"; continue; }
        if [ "$ns" = "$mine" ]; then out="$out $g: no jail;"; continue; fi
        targets=$(awk -v g=$g '$1 == "op" && $2 == g && $4 ~ /^(read|write|stat)$/ { print $5 }' $ETC/attack.plan | sort -u)
        # shellcheck disable=SC2086
        if r=$($P breach-jail --pid $pid $targets 2>&1); then out="$out $g ($ns): $r;"; else bad="$bad $g: $r"; fi
    done < $LAB_STATE/pids.all
    if [ -z "$bad" ]; then labcheck jail.breached PASS "$out"; else labcheck jail.breached FAIL "$bad;$out"; fi
}

scenario_main() {
    setup_apparmor || return 1
    # The initramfs root cannot be bind-mounted into svirtd's jail the way a tmpfs can.
    mount -t tmpfs -o mode=0755 lab /lab
    setup_profile || return 1
    # The checks read the kernel log from here on (the setup's own denial is not a guest's).
    DMESG_SKIP=$(dmesg | wc -l)
    [ "$SETUP_ONLY" = 1 ] && return 0
    # svirtd puts each guest in a cgroup (memory, pids).
    mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
    if out=$(lab_setup_layout 2>&1); then
        labcheck setup.layout PASS "/lab on tmpfs, images root 0666, drivers: $DRIVERS${BREAK:+, broken: $BREAK}"
    else
        labcheck setup.layout FAIL "$out"; return 1
    fi
    . $S/manager.sh

    if manager_start; then
        labcheck manager.start PASS "$(tr '\n' ' ' < $LAB_STATE/pids.all)"
        profile_files_check
        breach_jails
        if [ "$BREAK" = unload-b ]; then
            # Broken on purpose: B's profile removed before the attacks (its VMM is then
            # unconfined; the checks expect isolated guests and must fail).
            echo "+ apparmor_parser --remove B's profile" >> $LAB_STATE/manager.log
            apparmor_parser --remove "$(svirtd_profile_file B)" >> $LAB_STATE/manager.log 2>&1
        fi
        snap --pids $LAB_STATE/pids.all --out $LAB_STATE/running
        # What else confines each VMM (uid, capabilities, no_new_privs, seccomp), for the log.
        while read -r g pid; do
            case $g in manager|END) continue ;; esac
            echo "$g: $(grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/$pid/status | tr '\t\n' '  ')"
        done < $LAB_STATE/pids.all > $LAB_STATE/vmm-status
        # Guests learn each other's pids from a file both may read, as an attacker would;
        # written in place (Landlock's rules, in the full stack, hold the inode).
        grep -v -e '^manager ' $LAB_STATE/pids.all > /lab/img/peers
        results=$(awk '$1 == "results" { print $3 }' $ETC/attack.plan)
        # shellcheck disable=SC2086
        $P wait-line --line END --timeout 90 $results
        # Crash safety, once the attacks' results are in: svirtd and A's VMM killed, svirtd
        # restarted; A is then shut off for manager_stop and the after-snapshot.
        manager_crash_recover
    else
        labcheck manager.start FAIL "no pids from the manager"
        labcheck svirtd.profile_files FAIL "no guests"
        labcheck jail.breached FAIL "no guests"
        labcheck svirtd.recovery_profiles FAIL "no guests"
    fi
    if manager_stop; then
        labcheck manager.stop PASS "$(cat $LAB_STATE/done 2>/dev/null)"
    else
        labcheck manager.stop FAIL "$(cat $LAB_STATE/done 2>/dev/null)"
    fi
    snap --out $LAB_STATE/after
    dmesg | tail -n +$((DMESG_SKIP + 1)) > $LAB_STATE/dmesg

    for f in $LAB_STATE/manager.log $LAB_STATE/running $LAB_STATE/vmm-status $LAB_STATE/recovery $LAB_STATE/after \
        /lab/img/A.result /lab/img/B.result; do
        [ -f "$f" ] && sed "s|^|LABLOG $f: |" "$f"
    done
    for f in $LAB_STATE/profiles/*; do
        [ -f "$f" ] && sed "s|^|LABLOG profile $(basename "$f"): |" "$f"
    done
    $P aa-check --plan $ETC/plan --attack $ETC/attack.plan --expected $S/expected.tsv \
        --running $LAB_STATE/running --after $LAB_STATE/after --dmesg $LAB_STATE/dmesg \
        --denials $LAB_STATE/denials.txt
}
