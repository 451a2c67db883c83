# The manager step of the SELinux scenario with the real svirtd and svirt CLI. Sourced by
# guest.sh (busybox sh, runs as kernel_t). Same contract as manager-standin.sh:
#   manager_start  start svirtd through the real domain chain (kernel_t -> init_exec_t ->
#                  init_t -> virtd_exec_t -> virtd_t), `svirt start` each guest's domain XML
#                  (/scenario/NAME.xml, <emulator> = the probe labeled qemu_exec_t, static
#                  <seclabel> at the plan's level); $LAB_STATE/pids.all = `manager PID`,
#                  `NAME PID` per guest, `END`.
#   manager_stop   `svirt shutdown` each guest (svirtd restores the labels when a guest
#                  ends; a guest already shut off is accepted), then stop svirtd; 0 when
#                  all of that succeeded.
# --category-range: the chain leaves virtd_t at plain s0 here (PID 1 is kernel_t:s0 after the
# policy load), and svirtd derives its default range from its own context.
# /scenario/manager.env may set SVIRTD_PER_GUEST=1: every guest gets its own svirtd (own
# state dir, own label allocator). That is how the broken `--same-level` run gets two guests
# at one static level: one svirtd refuses a second static guest at a reserved level.
SVIRT_RUN=/lab/run
SVIRTD_PER_GUEST=0
[ -f /scenario/manager.env ] && . /scenario/manager.env

# svirtd_start N: svirtd number N (run dir $SVIRT_RUN/N), through the chain; prints its pid.
svirtd_start() {
    dir=$SVIRT_RUN/$1
    /lab/bin/init-probe exec --stdio "$LAB_STATE/svirtd.$1.log" /lab/bin/svirtd \
        --state-dir "$LAB_STATE/svirtd.$1" --run-dir "$dir" --drivers selinux --accel tcg --category-range c0.c1023 \
        --qemu /lab/bin/qemu-system-x86_64 \
        --shutdown-timeout 5 </dev/null >/dev/null 2>&1 &
    echo $! > "$LAB_STATE/svirtd.$1.pid"
    i=0
    while [ ! -S "$dir/svirtd.sock" ]; do
        i=$((i + 1))
        [ $i -lt 300 ] || { echo "svirtd $1: no socket after 30s" >> "$LAB_STATE/manager.log"; return 1; }
        kill -0 "$(cat "$LAB_STATE/svirtd.$1.pid")" 2>/dev/null \
            || { echo "svirtd $1 exited" >> "$LAB_STATE/manager.log"; return 1; }
        sleep 0.1
    done
}

sv() { # N ARGS...: svirt against svirtd number N, logged
    n=$1; shift
    echo "+ svirt $*" >> "$LAB_STATE/manager.log"
    /lab/bin/svirt --connect "unix:$SVIRT_RUN/$n/svirtd.sock" "$@" 2>> "$LAB_STATE/manager.log"
}

manager_start() {
    : > "$LAB_STATE/manager.log"
    svirtd_start 1 || return 1
    echo "manager $(cat "$LAB_STATE/svirtd.1.pid")" > "$LAB_STATE/pids.all"
    n=1 rc=0
    for g in $(awk '$1 == "guest" { print $2 }' /lab/etc/plan); do
        if [ "$SVIRTD_PER_GUEST" = 1 ] && [ -s "$LAB_STATE/guest-svirtd" ]; then
            n=$((n + 1)); svirtd_start $n || return 1
        fi
        echo "$g $n" >> "$LAB_STATE/guest-svirtd"
        if sv $n start --json "/scenario/$g.xml" > "$LAB_STATE/start.$g.json"; then
            pid=$(sed -n 's/^ *"pid": *\([0-9]*\).*/\1/p' "$LAB_STATE/start.$g.json" | head -n1)
            echo "$g $pid" >> "$LAB_STATE/pids.all"
        else
            rc=1
        fi
        cat "$LAB_STATE/start.$g.json" >> "$LAB_STATE/manager.log"
    done
    echo END >> "$LAB_STATE/pids.all"
    # Two static guests at one level would share it: the allocator must refuse the second.
    if out=$(sv 1 start /scenario/C-same-level-as-A.xml 2>&1); then
        labcheck svirtd.refuses_reserved_level FAIL "svirtd started guest C at guest A's static level: $out"
        sv 1 destroy C >> "$LAB_STATE/manager.log"
    elif grep -q 'already reserved' "$LAB_STATE/manager.log"; then
        labcheck svirtd.refuses_reserved_level PASS "$(grep 'already reserved' "$LAB_STATE/manager.log" | tail -n1)"
    else
        labcheck svirtd.refuses_reserved_level FAIL "refused, but not for the reserved level: $(tail -n1 "$LAB_STATE/manager.log")"
    fi
    hardening_checks
    sv 1 list >> "$LAB_STATE/manager.log"
    return $rc
}

# A domain XML for a dynamic guest NAME with DEVICES (for the hardening checks).
probe_xml() { # NAME DEVICES
    printf "<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><seclabel type='dynamic' model='selinux'/><devices><emulator>/lab/bin/qemu-system-x86_64</emulator>%s</devices></domain>\n" "$1" "$2"
}

# refused CHECK N XML WANT: `svirt start XML` against svirtd N must fail, its error naming WANT.
refused() {
    local check=$1 n=$2 xml=$3 want=$4 out
    if out=$(/lab/bin/svirt --connect "unix:$SVIRT_RUN/$n/svirtd.sock" start "$xml" 2>&1); then
        labcheck "$check" FAIL "svirtd started it: $out"
        sv "$n" destroy "$(sed -n 's|.*<name>\([^<]*\)</name>.*|\1|p' "$xml")" >> "$LAB_STATE/manager.log"
    elif printf '%s' "$out" | grep -q "$want"; then
        labcheck "$check" PASS "$out"
    else
        labcheck "$check" FAIL "refused, but not for '$want': $out"
    fi
    echo "$out" >> "$LAB_STATE/manager.log"
}

# Issue 11's classes under SELinux: the object policy, exclusivity and the jail's namespaces
# run here too (same code as on DAC + Landlock hosts, now with SELinux enforcing).
hardening_checks() {
    local na
    na=$(awk '$1 == "A" { print $2 }' "$LAB_STATE/guest-svirtd")
    # svirtd's own API socket on a serial port (class 3).
    probe_xml D "<serial type='unix'><source mode='connect' path='$SVIRT_RUN/$na/svirtd.sock'/><target port='0'/></serial>" > "$LAB_STATE/D.xml"
    refused svirtd.refuses_own_socket "$na" "$LAB_STATE/D.xml" "svirtd's run directory"
    # Guest A's private disk named by another guest, read-only (class 4).
    a_disk=$(awk '$1 == "disk" && $2 == "A" && $4 == "private" { print $3; exit }' /lab/etc/plan)
    probe_xml E "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$a_disk'/><target dev='vda' bus='virtio'/><readonly/></disk>" > "$LAB_STATE/E.xml"
    refused svirtd.refuses_disk_in_use "$na" "$LAB_STATE/E.xml" "private read-write"
    # Every VMM in a network namespace of its own (class 6): not svirtd's, not another's.
    local mine seen= bad= pid ns
    mine=$(readlink "/proc/$(cat "$LAB_STATE/svirtd.1.pid")/ns/net")
    while read -r g pid; do
        [ "$g" = manager ] || [ "$g" = END ] && continue
        ns=$(readlink "/proc/$pid/ns/net") || { bad="$bad $g:gone"; continue; }
        [ "$ns" != "$mine" ] || bad="$bad $g:host-netns"
        case " $seen " in *" $ns "*) bad="$bad $g:shared" ;; esac
        seen="$seen $ns"
    done < "$LAB_STATE/pids.all"
    if [ -z "$bad" ] && [ -n "$seen" ]; then
        labcheck vmm.own_network_namespace PASS "svirtd $mine; guests$seen"
    else
        labcheck vmm.own_network_namespace FAIL "${bad:-no guest pid}"
    fi
}

manager_stop() {
    rc=0
    # `svirt denials` next to a running svirtd names the guests (by their labels' levels, looked
    # up in svirtd): each guest must get exactly the audited denials the model predicted.
    sv 1 denials > "$LAB_STATE/denials.txt"
    sed "s|^|LABLOG svirt denials: |" "$LAB_STATE/denials.txt"
    bad=
    for gn in $(awk -F'\t' '$3 == "deny" && $4 == "avc" { n[$1]++ } END { for (g in n) print g ":" n[g] }' /scenario/expected.tsv); do
        grep -qx "${gn%%:*}: ${gn#*:} denial(s)" "$LAB_STATE/denials.txt" || bad="$bad ${gn%%:*} (want ${gn#*:})"
    done
    if [ -z "$bad" ]; then
        labcheck svirtd.denials_by_name PASS "$(grep 'denial(s)$' "$LAB_STATE/denials.txt" | tr '\n' ' ')"
    else
        labcheck svirtd.denials_by_name FAIL "not as the model predicts:$bad; got: $(grep 'denial(s)$' "$LAB_STATE/denials.txt" | tr '\n' ' ')"
    fi
    # A guest may have shut off already: its VMM (the probe) exits when its attacks fail
    # or when its linger bound (600 s) passes, and svirtd then restored its labels (which
    # the after snapshot checks). svirt refuses to shut down a shut-off guest (exit 2, one
    # line): that answer, and only that one, is accepted.
    while read -r g n; do
        echo "+ svirt shutdown --timeout 5 $g" >> "$LAB_STATE/manager.log"
        out=$(/lab/bin/svirt --connect "unix:$SVIRT_RUN/$n/svirtd.sock" shutdown --timeout 5 "$g" 2>&1)
        st=$?
        echo "$out" >> "$LAB_STATE/manager.log"
        if [ $st = 0 ]; then
            :
        elif [ $st = 2 ] && [ "$out" = "svirt: guest \"$g\" is shut-off: cannot shut down" ]; then
            echo "$g had shut off before the shutdown (accepted; its labels are checked after)" >> "$LAB_STATE/manager.log"
        else
            rc=1
        fi
    done < "$LAB_STATE/guest-svirtd"
    for f in "$LAB_STATE"/svirtd.*.pid; do
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" || { echo "svirtd pid $pid exited $?" >> "$LAB_STATE/manager.log"; rc=1; }
    done
    for f in "$LAB_STATE"/svirtd.*.log; do sed "s|^|$f: |" "$f" >> "$LAB_STATE/manager.log"; done
    [ $rc = 0 ] && echo ok > "$LAB_STATE/done" || echo "failed (see manager.log)" > "$LAB_STATE/done"
    return $rc
}
