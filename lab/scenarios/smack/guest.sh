# Guest side of the SMACK scenario: sourced by the lab's /init (busybox sh, PID 1: root at
# the floor label `_`, every capability, so SMACK never refuses it). Sets up SMACK, hands
# over to svirtd (manager.sh), breaches the jails, waits for the VMMs' attacks, and prints
# the LABCHECK lines itself against /scenario/expected.tsv.
S=/scenario
P=$S/svirt-probe
LAB_STATE=/lab/state
ETC=/lab/etc
FS=/sys/fs/smackfs
export PATH=/bin:/sbin
. $S/scenario.env

intended_level() { awk -v g="$1" '$1 == "guest" && $2 == g { print $3 }' $S/intended.plan; }
other_of() { [ "$1" = A ] && echo B || echo A; }
pid_of() { awk -v g="$1" '$1 == g { print $2 }' $LAB_STATE/pids.all; }
# The label the driver derives from a level: s0:c1,c2 -> svirt-c1-c2.
label_of_level() { echo "svirt-$(echo "${1#s0:}" | tr , -)"; }
label_of() { label_of_level "$(intended_level "$1")"; }

# security.SMACK64 of PATH (not followed): its bytes in hex (0x5f for `_`), or `none`.
xattr_hex() {
    v=$(getfattr -h --absolute-names -e hex -n security.SMACK64 "$1" 2>/dev/null \
        | sed -n 's/^security\.SMACK64=//p')
    echo "${v:-none}"
}
# ... and as text (NULs dropped), or `none`.
smack64() {
    if [ "$(xattr_hex "$1")" = none ]; then echo none; return; fi
    getfattr -h --absolute-names --only-values -n security.SMACK64 "$1" 2>/dev/null | tr -d '\000'
}
set_smack64() { setfattr -h -n security.SMACK64 -v "$2" "$1"; }
task_label() { tr -d '\000' < /proc/$1/attr/smack/current 2>/dev/null || echo gone; }

# smackfs's access2: may SUBJECT access OBJECT with ACCESS? 1 or 0 (SMACK's own answer,
# rules, floor, star and same-label included). One open for the write and the read.
access2() { # SUBJECT OBJECT ACCESS
    exec 3<>$FS/access2
    printf '%s %s %s' "$1" "$2" "$3" >&3
    r=$(head -c 1 <&3)
    exec 3>&-
    echo "${r:-?}"
}
# The rules loaded (smackfs load2 lists every rule with some access) of SUBJECT, one a line.
rules_of() { awk -v s="$1" '$1 == s' $FS/load2 | sort; }

# The objects whose labels the scenario follows (every plan disk, the floor-labeled file).
OBJECTS="/lab/img/A.img /lab/img/A.result /lab/img/B.img /lab/img/B.result /lab/img/shared.img /lab/img/content.iso /lab/etc/attack.plan /lab/img/peers /lab/img/home.txt"
snapshot() { # FILE: `PATH HEX` per object
    for o in $OBJECTS; do echo "$o $(xattr_hex $o)"; done > "$1"
}

# SMACK active and nothing else that could refuse: the LSM list is capability and smack;
# smackfs mounted with load2 and access2, no rule loaded, the ptrace rule at its default and
# denials logged; PID 1 at the floor. The VMM's base devices get `*`, as SMACK hosts label
# them (systemd's udev rules): every label may use them.
setup_smack() {
    mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
    mount -t smackfs smackfs $FS 2>/dev/null
    lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)
    me=$(task_label self)
    bad= devs=
    for d in /dev/null /dev/zero /dev/full /dev/urandom /dev/random; do
        set_smack64 $d '*' 2>/dev/null || bad="$bad cannot label $d;"
        devs="$devs $(basename $d)=$(smack64 $d)"
    done
    [ "$lsm" = capability,smack ] || bad="$bad LSMs '$lsm', want capability,smack;"
    [ -e $FS/load2 ] && [ -e $FS/access2 ] || bad="$bad smackfs not mounted at $FS;"
    [ "$me" = _ ] || bad="$bad PID 1 at '$me', want the floor _;"
    [ -z "$(cat $FS/load2 2>/dev/null)" ] || bad="$bad rules already loaded: $(tr '\n' ';' < $FS/load2)"
    ptrace=$(cat $FS/ptrace 2>/dev/null) logging=$(cat $FS/logging 2>/dev/null)
    [ "$ptrace" = 0 ] || bad="$bad smackfs ptrace=$ptrace, want 0 (default);"
    # 1: denials are logged (SMACK's default).
    [ "$logging" = 1 ] || bad="$bad smackfs logging=$logging, want 1 (denials);"
    # access2 answers as SMACK decides (for labels the kernel knows: labeling a scratch
    # file imports one): the floor readable, not writable, by any label; star writable; a
    # label without a rule denied.
    : > /tmp/lab-subject && set_smack64 /tmp/lab-subject lab-subject
    f=$(access2 lab-subject _ r)$(access2 lab-subject _ w)$(access2 lab-subject '*' w)$(access2 _ lab-subject r)
    [ "$f" = 1010 ] || bad="$bad access2 answered $f for (x _ r, x _ w, x * w, _ x r), want 1010;"
    if [ -z "$bad" ]; then
        labcheck setup.smack PASS "lsm=$lsm; smackfs at $FS; PID 1 at $me; ptrace=$ptrace logging=$logging; no rule loaded; devices:$devs; $(uname -r)"
    else
        labcheck setup.smack FAIL "$bad"
        return 1
    fi
}

# The layout on a tmpfs (the initramfs root cannot be bound into svirtd's jail): every file
# root-owned and 0666, and no DAC driver, so only SMACK decides below. Labels before the
# start, to be put back exactly at the stop: A.img and shared.img host labels of their own,
# the rest the floor `_` their creator (PID 1) gave them. (A file without security.SMACK64
# cannot be told from one at `_` from user space: SMACK answers getxattr with the inode's
# label, the floor when the file system has none.)
lab_setup_layout() {
    mkdir -p /lab/bin $ETC $LAB_STATE /lab/img /lab/run || return 1
    cp $P /lab/bin/qemu-system-x86_64 && cp $S/svirtd $S/svirt /lab/bin/ || return 1
    cp $S/plan $S/attack.plan $ETC/ || return 1
    for f in A.img B.img shared.img content.iso home.txt; do echo "contents of $f" > /lab/img/$f; done
    : > /lab/img/A.result; : > /lab/img/B.result; : > /lab/img/peers
    chmod 0666 /lab/img/*
    chmod 0644 $ETC/attack.plan /lab/img/peers
    set_smack64 /lab/img/A.img lab-host-image || return 1
    set_smack64 /lab/img/shared.img lab-host-data || return 1
    snapshot $LAB_STATE/labels.before
    [ "$(smack64 /lab/img/A.img)" = lab-host-image ] && [ "$(smack64 /lab/img/shared.img)" = lab-host-data ] \
        && [ "$(smack64 /lab/img/home.txt)" = _ ] || { cat $LAB_STATE/labels.before; return 1; }
}

# svirtd's jail (a mount namespace showing only the guest's plan) would answer ENOENT for
# the other guest's files, home.txt and svirtd's socket, and EROFS for read-only content,
# before SMACK is asked. The scenario's question is what SMACK alone says, so PID 1 breaches
# each jail on purpose: every path the guest's attacks name is made visible in it,
# read-write (svirt-probe breach-jail), as the AppArmor and BPF-LSM scenarios do.
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

# svirtd stacked smack alone (its log's driver stack line).
driver_check() {
    stack=$(sed 's/\x1b\[[0-9;]*m//g' $LAB_STATE/svirtd.1.log | grep -o 'driver stack: .*' | head -n1)
    case $stack in
        "driver stack: smack "*) labcheck svirtd.driver PASS "$stack; svirt list: $(sv 1 list | sed -n 3p | tr -s ' ')" ;;
        *) labcheck svirtd.driver FAIL "want 'driver stack: smack', got '${stack:-no such line}'" ;;
    esac
}

# Per guest: its VMM carries the label of its intended level (the kernel's
# /proc/PID/attr/smack/current, and svirt info and list), holds no capability (so neither
# CAP_MAC_OVERRIDE nor CAP_MAC_ADMIN), its private objects carry its label, and exactly its
# two rules are loaded (load2; access2 agrees).
guest_checks() {
    for g in A B; do
        n=$(svirtd_of $g) want=$(label_of $g) o=$(other_of $g) pid=$(pid_of $g)
        sv "$n" info $g > $LAB_STATE/info.$g
        info=$(awk '$1 == "smack" && $2 == "process:" { print $3 }' $LAB_STATE/info.$g)
        listed=$(sv "$n" list | awk -v g=$g '$1 == g { print $NF }')
        kern=$(task_label "$pid")
        if [ "$kern" = "$want" ] && [ "$info" = "$want" ] && [ "$listed" = "$want" ]; then
            labcheck vmm.label.$g PASS "pid $pid: attr/smack/current $kern; svirt info: smack process: $info; svirt list: $listed"
        else
            labcheck vmm.label.$g FAIL "want $want; pid $pid: attr/smack/current '$kern', svirt info '${info:-none}', svirt list '${listed:-none}'"
        fi
        caps=$(grep -E '^Cap(Prm|Eff|Inh|Amb)' /proc/$pid/status | tr -s '\t ' ' ' | tr '\n' ' ')
        if [ -n "$caps" ] && ! echo "$caps" | grep -q -E 'Cap[A-Za-z]+: 0*[1-9a-f]'; then
            labcheck vmm.caps.$g PASS "pid $pid: $caps(no CAP_MAC_OVERRIDE, no CAP_MAC_ADMIN: SMACK decides)"
        else
            labcheck vmm.caps.$g FAIL "pid $pid: ${caps:-no status}"
        fi
        img=$(smack64 /lab/img/$g.img) res=$(smack64 /lab/img/$g.result)
        if [ "$img" = "$want" ] && [ "$res" = "$want" ]; then
            labcheck vmm.objects.$g PASS "security.SMACK64 of /lab/img/$g.img and $g.result: $want"
        else
            labcheck vmm.objects.$g FAIL "/lab/img/$g.img '$img', $g.result '$res'; want $want"
        fi
        rules=$(rules_of "$want" | tr '\n' ';')
        acc="shared:rwxal=$(access2 $want svirt-shared rwxal) content:r=$(access2 $want svirt-content r) content:w=$(access2 $want svirt-content w) $o:r=$(access2 $want "$(label_of $o)" r)"
        if [ "$rules" = "$want svirt-content rx;$want svirt-shared rwxal;" ] \
            && [ "$acc" = "shared:rwxal=1 content:r=1 content:w=0 $o:r=0" ]; then
            labcheck rules.$g PASS "load2: $rules access2: $acc"
        else
            labcheck rules.$g FAIL "load2: '$rules' (want '$want svirt-content rx;$want svirt-shared rwxal;'); access2: $acc (want shared:rwxal=1 content:r=1 content:w=0 $o:r=0)"
        fi
    done
}

# The objects every guest uses: the shared disk svirt-shared, the read-only one
# svirt-content, the `relabel='no'` disks and the host file as they were (the floor).
common_objects_check() {
    got="shared.img=$(smack64 /lab/img/shared.img) content.iso=$(smack64 /lab/img/content.iso) attack.plan=$(smack64 $ETC/attack.plan) peers=$(smack64 /lab/img/peers) home.txt=$(smack64 /lab/img/home.txt)"
    want="shared.img=svirt-shared content.iso=svirt-content attack.plan=_ peers=_ home.txt=_"
    if [ "$got" = "$want" ]; then labcheck objects.common PASS "$got"; else labcheck objects.common FAIL "got $got; want $want"; fi
}

# Each operation's outcome (the VMM's results file) against the expected table.
decision_checks() {
    for g in A B; do
        o=$(other_of $g)
        awk -v g=$g '$1 == "op" && $2 == g { print $3 }' $ETC/attack.plan | while read -r name; do
            want=$(awk -F'\t' -v n="$name" '$1 == n { print $2 }' $S/expected.tsv)
            why=$(awk -F'\t' -v n="$name" '$1 == n { print $6 }' $S/expected.tsv | sed "s/OTHER/$o/g")
            got=$(awk -v n="$name" '$1 == "op" && $2 == n { print $3 }' /lab/img/$g.result)
            if [ -n "$want" ] && [ "$got" = "$want" ]; then
                labcheck decision.$g.$name PASS "$got: $why"
            else
                labcheck decision.$g.$name FAIL "got ${got:-nothing}, want ${want:-?}: $why"
            fi
        done
    done
}

# The expected denials of guest G, one a line: `NAME REQUESTED FN OBJECT-LABEL DETAIL`
# (DETAIL: name=BASENAME for an open's record, path=PATH for a getattr's, opid=PID for a
# signal's, - otherwise).
expected_denials() { # G
    g=$1 o=$(other_of $1)
    awk -v g=$g '$1 == "op" && $2 == g { print $3, $4, $5 }' $ETC/attack.plan | while read -r name action target; do
        line=$(awk -F'\t' -v n="$name" '$1 == n && $3 != "-" { print $3, $4, $5 }' $S/expected.tsv)
        [ -n "$line" ] || continue
        set -- $line
        fn=$1 req=$2 obj=$3
        [ "$obj" = OTHER ] && obj=$(label_of $o)
        case $fn in
            smack_inode_permission) detail="name=$(basename "$target")" ;;
            smack_inode_getattr) detail="path=$target" ;;
            smack_task_kill) detail="opid=$(pid_of $o)" ;;
            # SMACK's ptrace record carries the TRACER as its task (smk_ptrace_rule_check
            # audits with the tracer's task): `svirt denials` leaves that opid out; the
            # object label is what names the tracee's guest.
            *) detail=- ;;
        esac
        echo "$name $req $fn $obj $detail"
    done
}

# `svirt denials` attributes each expected denial to the guest that made it: in guest G's
# section, a record `{ REQUESTED } FN <G's label> -> OBJECT` naming the object (the file's
# name, the other VMM's pid) and, for the other guest's objects, the other guest's name.
denial_checks() {
    for g in A B; do
        o=$(other_of $g) me=$(label_of $g)
        awk -v h="$g: " 'index($0, h) == 1 && / SMACK denial\(s\)$/ { on = 1; print; next }
            on && /^  / { print; next } { on = 0 }' $LAB_STATE/denials.txt > $LAB_STATE/denials.$g
        missing= found=0
        expected_denials $g > $LAB_STATE/expected-denials.$g
        while read -r name req fn obj detail; do
            tag=
            [ "$obj" = "$(label_of $o)" ] && tag=" [$o]"
            if awk -v head="{ $req } $fn $me -> $obj$tag" -v d=" $detail" '
                index($0, head) && (d == " -" || index($0 " ", d " ")) { ok = 1 } END { exit !ok }' $LAB_STATE/denials.$g
            then found=$((found + 1)); else missing="$missing $name"; fi
        done < $LAB_STATE/expected-denials.$g
        head=$(head -n1 $LAB_STATE/denials.$g)
        if [ -z "$missing" ] && [ -n "$head" ]; then
            labcheck svirtd.denials.$g PASS "$head; all $found expected denials attributed to $g"
        else
            labcheck svirtd.denials.$g FAIL "no record in ${head:-no section for $g} for:$missing"
        fi
    done
}

# Every SMACK denial the kernel logged after the setup is one the table expects (its
# subject, function, object label and access): a denial nobody predicted (the VMM refused
# something it needs, or a guest refused where the table says allowed) is a failure.
audit_check() {
    : > $LAB_STATE/expected-records
    for g in A B; do
        me=$(label_of $g)
        expected_denials $g | awk -v s="$me" '{ print s, $3, $4, $2 }' >> $LAB_STATE/expected-records
    done
    grep -a 'lsm=SMACK' $LAB_STATE/dmesg | grep -a 'action=denied' | sed -n \
        's/.* fn=\([^ ]*\) action=denied subject="\([^"]*\)" object="\([^"]*\)" requested=\([^ ]*\).*/\2 \4 \1 \3/p' \
        | awk '{ print $1, $3, $4, $2 }' > $LAB_STATE/records
    total=$(grep -a 'lsm=SMACK' $LAB_STATE/dmesg | grep -ac 'action=denied')
    parsed=$(wc -l < $LAB_STATE/records)
    extra=$(grep -v -x -F -f $LAB_STATE/expected-records $LAB_STATE/records | sort | uniq -c | tr -s ' ' | tr '\n' ';')
    if [ "$total" -gt 0 ] && [ "$total" = "$parsed" ] && [ -z "$extra" ]; then
        labcheck audit.all_expected PASS "$total SMACK denial record(s), each an expected one (subject, fn, object, access)"
    else
        labcheck audit.all_expected FAIL "$total record(s), $parsed parsed; unexpected (count subject fn object access):${extra:- none}"
    fi
}

# After both guests stopped and svirtd exited: every object's security.SMACK64 exactly as
# before the start (A.img and shared.img their host labels), no rule of either
# guest left (load2 lists none; access2 says no), no rule record in svirtd's state.
after_checks() {
    snapshot $LAB_STATE/labels.after
    diff=$(diff $LAB_STATE/labels.before $LAB_STATE/labels.after | grep '^[-+]/' | tr '\n' ' ')
    if [ -z "$diff" ] && [ -s $LAB_STATE/labels.after ]; then
        labcheck after.labels_restored PASS "$(tr '\n' ' ' < $LAB_STATE/labels.after)"
    else
        labcheck after.labels_restored FAIL "before/after: $diff"
    fi
    left= acc=
    for g in A B; do
        l=$(label_of $g)
        left="$left$(rules_of $l | tr '\n' ';')"
        acc="$acc $g:shared:r=$(access2 $l svirt-shared r) $g:content:r=$(access2 $l svirt-content r)"
    done
    if [ -z "$left" ] && [ "$acc" = " A:shared:r=0 A:content:r=0 B:shared:r=0 B:content:r=0" ]; then
        labcheck after.rules_revoked PASS "load2 lists no guest rule; access2:$acc"
    else
        labcheck after.rules_revoked FAIL "load2 still lists: '${left}'; access2:$acc"
    fi
    recs=$(ls $LAB_STATE/svirtd.*/smack/ 2>/dev/null | grep -v -e ':$' -e '^$' | tr '\n' ' ')
    if [ -z "$recs" ]; then
        labcheck after.no_records PASS "no rule record under $LAB_STATE/svirtd.*/smack"
    else
        labcheck after.no_records FAIL "rule records left: $recs"
    fi
}

scenario_main() {
    setup_smack || return 1
    mount -t tmpfs -o mode=0755 lab /lab
    # svirtd puts each guest in a cgroup (memory, pids).
    mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
    if out=$(lab_setup_layout 2>&1); then
        labcheck setup.layout PASS "/lab on tmpfs, files root 0666, --drivers smack${BREAK:+, broken: $BREAK}; before: $(tr '\n' ' ' < $LAB_STATE/labels.before)"
    else
        labcheck setup.layout FAIL "$out"; return 1
    fi
    . $S/manager.sh

    if manager_start; then
        labcheck manager.start PASS "$(tr '\n' ' ' < $LAB_STATE/pids.all)"
        driver_check
        breach_jails
        guest_checks
        common_objects_check
        # Guests learn each other's pids from a file both may read, as an attacker would;
        # written in place (its label is its inode's).
        grep -v -e '^manager ' $LAB_STATE/pids.all > /lab/img/peers
        results=$(awk '$1 == "results" { print $3 }' $ETC/attack.plan)
        # shellcheck disable=SC2086
        $P wait-line --line END --timeout 90 $results
    else
        labcheck manager.start FAIL "no pids from the manager: $(tail -n 5 $LAB_STATE/manager.log | tr '\n' ' ')"
        for c in svirtd.driver jail.breached objects.common vmm.label.A vmm.label.B vmm.caps.A vmm.caps.B \
            vmm.objects.A vmm.objects.B rules.A rules.B; do
            labcheck $c FAIL "no guests"
        done
    fi
    decision_checks
    if manager_stop; then
        labcheck manager.stop PASS "$(cat $LAB_STATE/done 2>/dev/null)"
    else
        labcheck manager.stop FAIL "$(cat $LAB_STATE/done 2>/dev/null)"
    fi
    dmesg > $LAB_STATE/dmesg
    denial_checks
    audit_check
    after_checks

    for f in $LAB_STATE/manager.log $LAB_STATE/denials.txt $LAB_STATE/info.A $LAB_STATE/info.B \
        /lab/img/A.result /lab/img/B.result; do
        [ -f "$f" ] && sed "s|^|LABLOG $f: |" "$f"
    done
    grep -a 'lsm=SMACK' $LAB_STATE/dmesg | sed 's|^|LABLOG kernel log: |'
}
