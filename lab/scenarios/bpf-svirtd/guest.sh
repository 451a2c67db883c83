# Guest side of the BPF-LSM svirtd scenario: sourced by the lab's /init (busybox sh, PID 1,
# a host task: the BPF programs judge only tasks svirtd labeled). Sets up, hands over to
# svirtd (manager.sh), breaches the jails, waits for the VMMs' attacks, and prints the
# LABCHECK lines itself against /scenario/expected.tsv.
S=/scenario
P=$S/svirt-probe
LAB_STATE=/lab/state
ETC=/lab/etc
# svirt's pins: one directory per svirtd beneath PIN_ROOT, named after its state directory
# (PIN_INSTANCE, scenario.env); PIN is set once svirtd has pinned (pinned_check).
PIN_ROOT=/sys/fs/bpf/svirt
PIN=
export PATH=/bin:/sbin
. $S/scenario.env

intended_level() { awk -v g="$1" '$1 == "guest" && $2 == g { print $3 }' $S/intended.plan; }
other_of() { [ "$1" = A ] && echo B || echo A; }

# The BPF LSM active and nothing else that could refuse: no SELinux, no AppArmor, kernel
# BTF for the programs, unprivileged bpf(2) and ptrace left to the LSM (the VMMs run as root
# without capabilities: the kernel's own sysctls would refuse bpf(2) first).
setup_bpf_lsm() {
    mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
    lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)
    echo 0 > /proc/sys/kernel/unprivileged_bpf_disabled 2>/dev/null
    echo 0 > /proc/sys/kernel/yama/ptrace_scope 2>/dev/null
    # printk_devkmsg stays at the kernel's default (ratelimit: 10 lines per 5 s of each open
    # file of /dev/kmsg): svirtd opens /dev/kmsg for each denial line and limits itself
    # (50 lines a second), so every expected denial must reach the kernel log without help.
    ub=$(cat /proc/sys/kernel/unprivileged_bpf_disabled 2>/dev/null)
    ps=$(cat /proc/sys/kernel/yama/ptrace_scope 2>/dev/null)
    dk=$(cat /proc/sys/kernel/printk_devkmsg 2>/dev/null)
    bad=
    case ,$lsm, in *,bpf,*) ;; *) bad="$bad bpf is not an active LSM;" ;; esac
    case ,$lsm, in *,selinux,*|*,apparmor,*) bad="$bad another MAC LSM is active;" ;; esac
    [ -e /sys/kernel/btf/vmlinux ] || bad="$bad no /sys/kernel/btf/vmlinux;"
    [ "$ub" = 0 ] || bad="$bad unprivileged_bpf_disabled=$ub;"
    [ "$dk" = ratelimit ] || bad="$bad printk_devkmsg=$dk, want the default ratelimit;"
    [ ! -e $PIN_ROOT ] || bad="$bad $PIN_ROOT exists before svirtd;"
    if [ -z "$bad" ]; then
        labcheck setup.bpf_lsm PASS "lsm=$lsm btf=yes unprivileged_bpf_disabled=$ub ptrace_scope=${ps:-none} printk_devkmsg=$dk"
    else
        labcheck setup.bpf_lsm FAIL "$bad lsm=$lsm"
        return 1
    fi
}

lab_setup_layout() {
    mkdir -p /lab/bin $ETC $LAB_STATE /lab/img /lab/run || return 1
    cp $P /lab/bin/qemu-system-x86_64 && cp $S/svirtd $S/svirt /lab/bin/ || return 1
    cp $S/plan $S/attack.plan $ETC/ || return 1
    for f in A.img B.img shared.img content.iso home.txt; do echo "contents of $f" > /lab/img/$f; done
    : > /lab/img/A.result; : > /lab/img/B.result; : > /lab/img/peers
    # Root-owned and world-accessible, and no DAC driver: only the BPF programs decide below.
    chmod 0666 /lab/img/*
    chmod 0644 $ETC/attack.plan /lab/img/peers
}

# svirtd's jail (a mount namespace showing only the guest's plan) would answer ENOENT for
# the other guest's files and svirtd's socket, and EROFS for read-only content, before the
# BPF programs are asked. The scenario's question is what the programs alone say, so PID 1
# breaches each jail on purpose: every path the guest's attacks name is made visible in it,
# read-write (svirt-probe breach-jail), as the AppArmor scenario does.
breach_jails() {
    mine=$(readlink /proc/1/ns/mnt) out= bad=
    while read -r g pid; do
        case $g in manager|END) continue ;; esac
        ns=$(readlink /proc/$pid/ns/mnt) || { bad="$bad $g:gone"; continue; }
        if [ "$ns" = "$mine" ]; then out="$out $g: no jail;"; continue; fi
        targets=$(awk -v g=$g '$1 == "op" && $2 == g && $4 ~ /^(read|write|stat|connect)$/ { print $5 }' $ETC/attack.plan | sort -u)
        # shellcheck disable=SC2086
        if r=$($P breach-jail --pid $pid $targets 2>&1); then out="$out $g: $r;"; else bad="$bad $g: $r"; fi
    done < $LAB_STATE/pids.all
    if [ -z "$bad" ]; then labcheck jail.breached PASS "$out"; else labcheck jail.breached FAIL "$bad;$out"; fi
}

# svirtd stacked bpf-lsm (its log's driver stack line) and lists the guests' bpf-lsm labels.
driver_check() {
    log=$LAB_STATE/svirtd.1.log
    stack=$(sed 's/\x1b\[[0-9;]*m//g' $log | grep -o 'driver stack: .*' | head -n1)
    case $stack in
        "driver stack: bpf-lsm "*) labcheck svirtd.driver PASS "$stack; svirt list: $(sv 1 list | head -n1 | tr -s ' ')" ;;
        *) labcheck svirtd.driver FAIL "want 'driver stack: bpf-lsm', got '${stack:-no such line}'" ;;
    esac
}

# The objects map, dumped with bpftool (label_word reads it).
dump_objects() {
    bpftool map dump pinned $PIN/objects -j > $LAB_STATE/objects.json 2>$LAB_STATE/objects.err
}

# The pins: one svirtd, so exactly one instance directory under /sys/fs/bpf/svirt, named
# after svirtd's state directory; its maps pinned, the programs attached (bpftool).
pinned_check() {
    insts=$(ls $PIN_ROOT 2>&1 | tr '\n' ' ')
    set -- $insts
    if [ $# = 1 ]; then PIN=$PIN_ROOT/$1; else PIN=$PIN_ROOT/$PIN_INSTANCE; fi
    pins=$(ls $PIN $PIN/links 2>&1 | tr '\n' ' ')
    progs=$(bpftool prog show 2>/dev/null | grep -c ' lsm ')
    dump_objects
    n=$(grep -o '"ino":' $LAB_STATE/objects.json | wc -l)
    if [ "$insts" = "$PIN_INSTANCE " ] && [ -e $PIN_ROOT/$PIN_INSTANCE/objects ] && [ "$progs" -gt 0 ] && [ "$n" -gt 0 ]; then
        labcheck svirtd.pinned PASS "$PIN_ROOT: $insts(instance of /lab/state/svirtd.1); $PIN: $pins; $progs LSM programs loaded; $n labeled objects"
    else
        labcheck svirtd.pinned FAIL "$PIN_ROOT: ${insts:-empty}, want exactly $PIN_INSTANCE; $PIN: $pins; $progs LSM programs; objects map: $n entries $(cat $LAB_STATE/objects.err)"
    fi
}

# The first 64-bit word of the categories of the object labeled under the inode of PATH in
# the objects map dump (-1 when it has no label): c1,c2 is 6, c3,c4 is 24, s0 is 0.
label_word() { # PATH
    st=$(stat -c '%D %i' "$1") || { echo -2; return; }
    set -- $st
    d=$((0x$1)) ino=$2
    # The kernel's dev_t (MKDEV: major << 20 | minor) from stat's st_dev.
    kd=$(( (((d >> 8) & 0xfff) << 20) | (d & 0xff) | ((d >> 12) & 0xfff00) ))
    # bpftool -j: each entry's raw bytes, then "formatted" from the map's BTF; one line each.
    sed 's/"key":/\
/g' $LAB_STATE/objects.json | awk -v dev=$kd -v ino=$ino '
        index($0, "{\"dev\":" dev ",\"ino\":" ino "}") == 1 {
            s = $0; sub(/.*"cats":\[/, "", s); sub(/[],].*/, "", s); print s; found = 1; exit
        } END { if (!found) print -1 }'
}

# The first category word of the kernel's label of task PID (the subjects map: task storage,
# keyed by a pidfd of the caller, which svirt-probe pidfd-exec opens as fd 9 for bpftool);
# -1 when it has none.
task_word() { # PID
    w=$($P pidfd-exec "$1" 9 /sbin/bpftool -j map lookup pinned $PIN/subjects key hex 09 00 00 00 2>/dev/null \
        | sed -n 's/.*"cats":\[\([0-9]*\).*/\1/p')
    echo "${w:--1}"
}

level_word() { # s0:cA,cB (categories below 64)
    case $1 in *:*) ;; *) echo 0; return ;; esac
    w=0
    for c in $(echo "${1#*:}" | tr ',' ' '); do w=$((w | (1 << ${c#c}))); done
    echo $w
}

le_bytes() { # COUNT N: N as COUNT bytes, little-endian, in bpftool's `hex` form
    i=0 v=$2 out=
    while [ $i -lt $1 ]; do out="$out $(printf %02x $((v & 255)))"; v=$((v >> 8)); i=$((i + 1)); done
    echo $out
}

# A struct svirt_level (mcs.h: 16 u64 category words) whose first word is W, the rest 0.
level_bytes() { # W
    echo "$(le_bytes 8 $1) $(le_bytes 120 0)"
}

# A level's id (mcs.h, SVIRT_ID_*; crates/bpf/src/label.rs Cats::id): s0 0, one category
# ca 1 + a, two ca,cb (a < b) 1025 + a * 1024 + b.
label_id() { # s0[:cA[,cB]]
    case $1 in *:*) ;; *) echo 0; return ;; esac
    set -- $(echo "${1#*:}" | tr ',' ' ' | tr -d c)
    case $# in
        1) echo $((1 + $1)) ;;
        *) echo $((1025 + $1 * 1024 + $2)) ;;
    esac
}

# The broken --same-level run: what a driver that gave guest B guest A's categories would
# have left in the kernel, made by hand once both guests run (and before their attacks).
# svirtd labeled B's objects and B's VMM at B's intended level; PID 1 (unlabeled: a host
# task) rewrites in svirtd's maps, with bpftool,
#   - every object label at B's categories (B's image and results file, its runtime dir)
#     to A's categories and A's id, allow and flags kept (objects map: key struct
#     svirt_inode_key, value struct svirt_object);
#   - B's VMM's task label, with an empty label cache (subjects: task storage, value struct
#     svirt_task, keyed by a pidfd of the caller, which
#     svirt-probe pidfd-exec opens as fd 9 for bpftool) to A's level. Only the thread-group
#     leader's: the probe's QMP thread keeps B's level; the attacks run on the leader, and
#     signals and ptrace to B's pid are judged against the leader's label. (`svirt info`
#     still shows B's planned level: svirtd reports the level of the plan it labeled with.)
# Then A and B are one MCS level to the programs: their reads, writes and signals between
# them are allowed, and the isolation checks must fail.
same_level_relabel() {
    wa=$(level_word "$(intended_level A)") wb=$(level_word "$(intended_level B)")
    ida=$(label_id "$(intended_level A)")
    dump_objects
    sed 's/"formatted":/\
/g' $LAB_STATE/objects.json | awk '
        index($0, "{\"key\":{\"dev\":") == 1 {
            n = split($0, f, /[][{}:,"]+/)
            # f: "" key dev D ino I value [level] cats C0..C15 allow A flags F
            dev = ino = allow = flags = cats = ""
            for (i = 1; i <= n; i++) {
                if (f[i] == "dev") dev = f[i + 1]
                else if (f[i] == "ino") ino = f[i + 1]
                else if (f[i] == "allow") allow = f[i + 1]
                else if (f[i] == "flags") flags = f[i + 1]
                else if (f[i] == "cats") { cats = f[i + 1]; for (j = 2; j <= 16; j++) cats = cats "," f[i + j] }
            }
            print dev, ino, cats, allow, flags
        }' > $LAB_STATE/objects.list
    zeros=,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0
    n=0 bad= objs=
    while read -r dev ino cats allow flags; do
        [ "$cats" = "$wb$zeros" ] || continue
        if out=$(bpftool map update pinned $PIN/objects key hex $(le_bytes 8 $dev) $(le_bytes 8 $ino) \
            value hex $(level_bytes $wa) $(le_bytes 4 $allow) $(le_bytes 4 $flags) \
            $(le_bytes 4 $ida) $(le_bytes 4 0) 2>&1); then
            n=$((n + 1)) objs="$objs $dev:$ino"
        else
            bad="$bad object $dev:$ino: $out;"
        fi
    done < $LAB_STATE/objects.list
    # As svirtd does after every change to the objects map: bump the epoch, so no task's
    # label cache keeps what was there before.
    e=$(bpftool -j map lookup pinned $PIN/epoch key hex 00 00 00 00 2>/dev/null \
        | sed -n 's/.*"value":\([0-9]*\).*/\1/p')
    bpftool map update pinned $PIN/epoch key hex 00 00 00 00 value hex $(le_bytes 8 $((${e:-0} + 1))) \
        > /dev/null 2>&1 || bad="$bad epoch bump failed (was '${e}');"
    pid=$(awk '$1 == "B" { print $2 }' $LAB_STATE/pids.all)
    was=$(task_word "$pid")
    out=$($P pidfd-exec "$pid" 9 /sbin/bpftool map update pinned $PIN/subjects key hex 09 00 00 00 \
        value hex $(level_bytes $wa) $(le_bytes 4 $ida) $(le_bytes 4 0) $(le_bytes 768 0) 2>&1) \
        || bad="$bad B's VMM (pid $pid): $out;"
    # What the kernel now holds: B's VMM at A's level, no object left at B's categories.
    dump_objects
    got=$(task_word "$pid")
    img=$(label_word /lab/img/B.img)
    left=$(grep -o "\"cats\":\[$wb$zeros\]" $LAB_STATE/objects.json | wc -l)
    [ "$n" -ge 2 ] || bad="$bad only $n object(s) at B's categories ($wb);"
    [ "$was" = "$wb" ] && [ "$got" = "$wa" ] || bad="$bad B's VMM (pid $pid): task label cats word $was, then $got;"
    [ "$img" = "$wa" ] && [ "$left" = 0 ] || bad="$bad B.img cats word $img, $left label(s) left at $wb;"
    if [ -z "$bad" ]; then
        labcheck broken.same_level PASS "relabeled to A's categories ($wa): $n object(s) at B's ($wb):$objs; B's VMM (pid $pid): task label cats word $was, now $got"
    else
        labcheck broken.same_level FAIL "$bad"
    fi
}

# Each guest's VMM carries its intended level (svirt info and list: the level svirtd labeled
# it with; the kernel's task storage, read with bpftool through a pidfd), and its private
# image is labeled at that level in the kernel's map.
label_checks() {
    dump_objects
    for g in A B; do
        n=$(svirtd_of $g)
        want=$(intended_level $g)
        sv "$n" info $g > $LAB_STATE/info.$g
        got=$(awk '$1 == "bpf-lsm" && $2 == "process:" { print $3 }' $LAB_STATE/info.$g)
        listed=$(sv "$n" list | awk -v g=$g '$1 == g { print $NF }')
        w=$(level_word "$want")
        pid=$(awk -v g=$g '$1 == g { print $2 }' $LAB_STATE/pids.all)
        task=$(task_word "$pid")
        if [ "$got" = "$want" ] && [ "$listed" = "$want" ] && [ "$task" = "$w" ]; then
            labcheck vmm.label.$g PASS "svirt info: bpf-lsm process: $got; svirt list: $listed; kernel: pid $pid's task label cats word $task"
        else
            labcheck vmm.label.$g FAIL "want $want (cats word $w); svirt info: '${got:-none}', svirt list: '${listed:-none}', kernel: pid $pid's task label cats word $task (-1: none)"
        fi
        img=$(label_word /lab/img/$g.img) res=$(label_word /lab/img/$g.result)
        if [ "$img" = "$w" ] && [ "$res" = "$w" ]; then
            labcheck vmm.objects.$g PASS "objects map: /lab/img/$g.img and $g.result at $want (cats word $w)"
        else
            labcheck vmm.objects.$g FAIL "objects map: /lab/img/$g.img cats word $img, $g.result $res; want $w ($want; -1: unlabeled)"
        fi
    done
}

# Each operation's outcome (the VMM's results file) against the expected table.
decision_checks() {
    for g in A B; do
        o=$(other_of $g)
        awk -v g=$g '$1 == "op" && $2 == g { print $3 }' $ETC/attack.plan | while read -r name; do
            want=$(awk -F'\t' -v n="$name" '$1 == n { print $2 }' $S/expected.tsv)
            why=$(awk -F'\t' -v n="$name" '$1 == n { print $4 }' $S/expected.tsv | sed "s/OTHER/$o/g")
            got=$(awk -v n="$name" '$1 == "op" && $2 == n { print $3 }' /lab/img/$g.result)
            if [ -n "$want" ] && [ "$got" = "$want" ]; then
                labcheck decision.$g.$name PASS "$got: $why"
            else
                labcheck decision.$g.$name FAIL "got ${got:-nothing}, want ${want:-?}: $why"
            fi
        done
    done
}

# `svirt denials` attributes each expected denial to the guest that made it: in guest G's
# section, a record of the operation's hook naming its object (inode, or target pid), and
# for the other guest's files the other guest's name.
denial_checks() {
    for g in A B; do
        o=$(other_of $g)
        awk -v h="$g: " 'index($0, h) == 1 && / BPF-LSM denial\(s\)$/ { on = 1; print; next }
            on && /^  / { print; next } { on = 0 }' $LAB_STATE/denials.txt > $LAB_STATE/denials.$g
        opid=$(awk -v g=$o '$1 == g { print $2 }' $LAB_STATE/pids.all)
        missing= found=0
        while read -r _ og name action target; do
            [ "$og" = "$g" ] || continue
            hook=$(awk -F'\t' -v n="$name" '$1 == n { print $3 }' $S/expected.tsv)
            [ -n "$hook" ] && [ "$hook" != - ] || continue
            case $action in
                read|write|connect)
                    ino=$(awk -v p="$target" '$1 == p { print $2 }' $LAB_STATE/inodes)
                    pat="} $hook .* ino=$ino\$"
                    [ "$action" = connect ] || pat="{ [^}]*$action[^}]* } $hook .* ino=$ino\$"
                    case $name in other.*) pat="{ [^}]*$action[^}]* } $hook .* \[$o\] .*ino=$ino\$" ;; esac ;;
                signal|signull|ptrace) pat="} $hook .* tpid=$opid\$" ;;
                bpf) pat="} $hook " ;;
                *) pat="} $hook " ;;
            esac
            if grep -q -- "$pat" $LAB_STATE/denials.$g; then found=$((found + 1)); else missing="$missing $name"; fi
        done < $ETC/attack.plan
        head=$(head -n1 $LAB_STATE/denials.$g)
        if [ -z "$missing" ] && [ -n "$head" ]; then
            labcheck svirtd.denials.$g PASS "$head; all $found expected denials attributed to $g"
        else
            labcheck svirtd.denials.$g FAIL "no record in ${head:-no section for $g} for:$missing"
        fi
    done
}

# After both guests stopped and svirtd exited: the pins are gone (the instance's directory,
# and /sys/fs/bpf/svirt with it: the last instance removes it), no LSM program or svirt map
# is left in the kernel, and no guest's record of labels remains.
after_checks() {
    i=0
    while [ $i -lt 50 ]; do
        progs=$(bpftool prog show 2>/dev/null | grep -c ' lsm ')
        maps=$(bpftool map show 2>/dev/null | grep -c -E 'name (objects|subjects|sockets|events) ')
        [ "$progs" = 0 ] && [ "$maps" = 0 ] && break
        i=$((i + 1)); sleep 0.1
    done
    if [ ! -e $PIN_ROOT ] && grep -q ' /sys/fs/bpf bpf ' /proc/mounts; then
        labcheck after.unpinned PASS "$PIN_ROOT gone (bpffs on /sys/fs/bpf: $(ls /sys/fs/bpf | tr '\n' ' '))"
    else
        labcheck after.unpinned FAIL "$PIN_ROOT: $(ls -R $PIN_ROOT 2>&1 | tr '\n' ' ')"
    fi
    recs=$(ls $LAB_STATE/svirtd.*/bpf-lsm 2>/dev/null | grep -v -e ':$' -e '^$' | tr '\n' ' ')
    if [ "$progs" = 0 ] && [ "$maps" = 0 ] && [ -z "$recs" ]; then
        labcheck after.no_labels PASS "no LSM program, no svirt map in the kernel; no guest record under the state dirs"
    else
        labcheck after.no_labels FAIL "LSM programs: $progs, svirt maps: $maps, records: ${recs:-none}"
    fi
}

scenario_main() {
    setup_bpf_lsm || return 1
    # The initramfs root cannot be bind-mounted into svirtd's jail the way a tmpfs can.
    mount -t tmpfs -o mode=0755 lab /lab
    # svirtd puts each guest in a cgroup (memory, pids).
    mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
    if out=$(lab_setup_layout 2>&1); then
        labcheck setup.layout PASS "/lab on tmpfs, images root 0666, --drivers bpf-lsm${BREAK:+, broken: $BREAK}"
    else
        labcheck setup.layout FAIL "$out"; return 1
    fi
    . $S/manager.sh

    if manager_start; then
        labcheck manager.start PASS "$(tr '\n' ' ' < $LAB_STATE/pids.all)"
        # The targets' inode numbers, for the denial records (svirtd's socket goes with it).
        awk '$1 == "op" && $4 ~ /^(read|write|connect)$/ { print $5 }' $ETC/attack.plan | sort -u \
            | while read -r t; do echo "$t $(stat -c %i "$t")"; done > $LAB_STATE/inodes
        driver_check
        pinned_check
        [ "$BREAK" = same-level ] && same_level_relabel
        breach_jails
        label_checks
        # Guests learn each other's pids from a file both may read, as an attacker would;
        # written in place (its label is held by its inode).
        grep -v -e '^manager ' $LAB_STATE/pids.all > /lab/img/peers
        results=$(awk '$1 == "results" { print $3 }' $ETC/attack.plan)
        # shellcheck disable=SC2086
        $P wait-line --line END --timeout 90 $results
        # svirtd's thread moves the programs' denials to the kernel log every 200 ms.
        sleep 1
    else
        labcheck manager.start FAIL "no pids from the manager: $(tail -n 5 $LAB_STATE/manager.log | tr '\n' ' ')"
        for c in svirtd.driver svirtd.pinned jail.breached vmm.label.A vmm.label.B vmm.objects.A vmm.objects.B \
            $([ "$BREAK" = same-level ] && echo broken.same_level); do
            labcheck $c FAIL "no guests"
        done
    fi
    decision_checks
    if manager_stop; then
        labcheck manager.stop PASS "$(cat $LAB_STATE/done 2>/dev/null)"
    else
        labcheck manager.stop FAIL "$(cat $LAB_STATE/done 2>/dev/null)"
    fi
    denial_checks
    after_checks
    dmesg > $LAB_STATE/dmesg

    for f in $LAB_STATE/manager.log $LAB_STATE/denials.txt $LAB_STATE/info.A $LAB_STATE/info.B \
        /lab/img/A.result /lab/img/B.result; do
        [ -f "$f" ] && sed "s|^|LABLOG $f: |" "$f"
    done
    grep -a 'svirt-bpf:' $LAB_STATE/dmesg | sed 's|^|LABLOG kernel log: |'
}
