# The manager step of the SMACK scenario: the real svirtd and svirt CLI. Sourced by guest.sh
# (busybox sh, PID 1: root at the floor label `_`, with every capability).
#   manager_start  start svirtd (--drivers smack alone) and `svirt start` A and B
#                  (/scenario/NAME.xml: static level, the probe as <emulator>);
#                  $LAB_STATE/pids.all = `manager PID`, `NAME PID` per guest, `END`;
#                  $LAB_STATE/guest-svirtd = `NAME N` (which svirtd started it).
#   manager_stop   `svirt denials` (while svirtd still names the guests), `svirt shutdown`
#                  each guest, B first, then stop svirtd.
# /scenario/manager.env may set SVIRTD_PER_GUEST=1 (--same-label): every guest gets its own
# svirtd (state $LAB_STATE/svirtd.N, run dir /lab/run/N), and so its own level ledger: two
# guests at one static level, which one svirtd refuses.
SVIRT_RUN=/lab/run
SVIRTD_PER_GUEST=0
[ -f /scenario/manager.env ] && . /scenario/manager.env

sv() { # N ARGS...: svirt against svirtd number N, logged
    n=$1; shift
    echo "+ svirt [$n] $*" >> "$LAB_STATE/manager.log"
    /lab/bin/svirt --connect "unix:$SVIRT_RUN/$n/svirtd.sock" "$@" 2>> "$LAB_STATE/manager.log"
}

# svirtd_launch N: svirtd number N in the background (a child of this shell: manager_stop
# waits for it), its pid in svirtd.N.pid, its log in svirtd.N.log; returns once the API
# answers.
svirtd_launch() {
    /lab/bin/svirtd --state-dir "$LAB_STATE/svirtd.$1" --run-dir "$SVIRT_RUN/$1" --drivers smack \
        --accel tcg --qemu /lab/bin/qemu-system-x86_64 --shutdown-timeout 5 \
        </dev/null >> "$LAB_STATE/svirtd.$1.log" 2>&1 &
    echo $! > "$LAB_STATE/svirtd.$1.pid"
    i=0
    until /lab/bin/svirt --connect "unix:$SVIRT_RUN/$1/svirtd.sock" list >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -lt 300 ] || { echo "svirtd $1: no answer after 30s" >> "$LAB_STATE/manager.log"; return 1; }
        kill -0 "$(cat "$LAB_STATE/svirtd.$1.pid")" 2>/dev/null \
            || { echo "svirtd $1 exited" >> "$LAB_STATE/manager.log"; return 1; }
        sleep 0.1
    done
}

manager_start() {
    : > "$LAB_STATE/manager.log"
    : > "$LAB_STATE/guest-svirtd"
    svirtd_launch 1 || return 1
    echo "manager $(cat "$LAB_STATE/svirtd.1.pid")" > "$LAB_STATE/pids.all"
    n=1 rc=0
    for g in A B; do
        if [ "$SVIRTD_PER_GUEST" = 1 ] && [ -s "$LAB_STATE/guest-svirtd" ]; then
            n=$((n + 1)); svirtd_launch $n || return 1
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
    sv 1 list >> "$LAB_STATE/manager.log"
    return $rc
}

svirtd_of() { awk -v g="$1" '$1 == g { print $2 }' "$LAB_STATE/guest-svirtd"; }

manager_stop() {
    rc=0
    # `svirt denials` next to the running svirtd, which names the guests by their labels.
    : > "$LAB_STATE/denials.txt"
    for n in $(awk '{ print $2 }' "$LAB_STATE/guest-svirtd" | sort -u); do
        sv "$n" denials >> "$LAB_STATE/denials.txt"
    done
    # The last guest started stops first: with a svirtd per guest (--same-label) both
    # svirtds label the shared and read-only disks, each recording what it found, so each
    # must restore in the reverse order of the labeling for the originals to come back.
    tac "$LAB_STATE/guest-svirtd" | while read -r g n; do
        echo "+ svirt [$n] shutdown --timeout 5 $g" >> "$LAB_STATE/manager.log"
        out=$(/lab/bin/svirt --connect "unix:$SVIRT_RUN/$n/svirtd.sock" shutdown --timeout 5 "$g" 2>&1)
        st=$?
        echo "$out" >> "$LAB_STATE/manager.log"
        if [ $st = 0 ]; then
            :
        elif [ $st = 2 ] && [ "$out" = "svirt: guest \"$g\" is shut-off: cannot shut down" ]; then
            echo "$g had shut off before the shutdown (accepted)" >> "$LAB_STATE/manager.log"
        else
            echo "$g: shutdown failed" >> "$LAB_STATE/manager.log"
            echo fail > "$LAB_STATE/stop.failed"
        fi
    done
    [ -f "$LAB_STATE/stop.failed" ] && rc=1
    for f in "$LAB_STATE"/svirtd.*.pid; do
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" || { echo "svirtd pid $pid exited $?" >> "$LAB_STATE/manager.log"; rc=1; }
    done
    for f in "$LAB_STATE"/svirtd.*.log; do sed "s|^|$(basename "$f"): |" "$f" >> "$LAB_STATE/manager.log"; done
    [ $rc = 0 ] && echo ok > "$LAB_STATE/done" || echo "failed (see manager.log)" > "$LAB_STATE/done"
    return $rc
}
