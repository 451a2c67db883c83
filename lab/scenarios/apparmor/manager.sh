# The manager step of the AppArmor scenario: the real svirtd and svirt CLI. Sourced by
# guest.sh (busybox sh, PID 1, unconfined: svirtd runs unconfined, as on a Debian host
# without a profile for it).
#   manager_start  start svirtd (--drivers $DRIVERS) and `svirt start` A and B
#                  (/scenario/NAME.xml: fixed uuid, the probe as <emulator>);
#                  $LAB_STATE/pids.all = `manager PID`, `NAME PID` per guest, `END`.
#   manager_stop   `svirt denials` (per-guest counts), `svirt shutdown` each guest, stop svirtd.
SVIRT_RUN=/lab/run/1
SVIRTD_STATE=$LAB_STATE/svirtd

sv() { # ARGS...: svirt against svirtd, logged
    echo "+ svirt $*" >> "$LAB_STATE/manager.log"
    /lab/bin/svirt --connect "unix:$SVIRT_RUN/svirtd.sock" "$@" 2>> "$LAB_STATE/manager.log"
}

uuid_of() { awk -v g="$1" '$1 == "guest" && $2 == g { print $3 }' /lab/etc/plan; }

# Where svirtd writes guest NAME's profile (docs/drivers/apparmor.md).
svirtd_profile_file() { echo "$SVIRTD_STATE/apparmor/svirt-$(uuid_of "$1")"; }

manager_start() {
    : > "$LAB_STATE/manager.log"
    /lab/bin/svirtd --state-dir "$SVIRTD_STATE" --run-dir "$SVIRT_RUN" --drivers "$DRIVERS" \
        --accel tcg --qemu /lab/bin/qemu-system-x86_64 --shutdown-timeout 5 \
        </dev/null > "$LAB_STATE/svirtd.log" 2>&1 &
    echo $! > "$LAB_STATE/svirtd.pid"
    i=0
    while [ ! -S "$SVIRT_RUN/svirtd.sock" ]; do
        i=$((i + 1))
        [ $i -lt 300 ] || { echo "svirtd: no socket after 30s" >> "$LAB_STATE/manager.log"; return 1; }
        kill -0 "$(cat "$LAB_STATE/svirtd.pid")" 2>/dev/null \
            || { echo "svirtd exited" >> "$LAB_STATE/manager.log"; return 1; }
        sleep 0.1
    done
    echo "manager $(cat "$LAB_STATE/svirtd.pid")" > "$LAB_STATE/pids.all"
    rc=0
    for g in A B; do
        if sv start --json "/scenario/$g.xml" > "$LAB_STATE/start.$g.json"; then
            pid=$(sed -n 's/^ *"pid": *\([0-9]*\).*/\1/p' "$LAB_STATE/start.$g.json" | head -n1)
            echo "$g $pid" >> "$LAB_STATE/pids.all"
        else
            rc=1
        fi
        cat "$LAB_STATE/start.$g.json" >> "$LAB_STATE/manager.log"
    done
    echo END >> "$LAB_STATE/pids.all"
    sv list >> "$LAB_STATE/manager.log"
    # Keep the profiles svirtd wrote (they are removed with the guests) for the report.
    mkdir -p "$LAB_STATE/profiles"
    cp "$SVIRTD_STATE"/apparmor/* "$LAB_STATE/profiles/" 2>/dev/null
    return $rc
}

# Each guest's profile file is where the driver writes it, names the guest, and grants its
# own image read-write and nothing of the other guest's.
profile_files_check() {
    bad= seen=
    for g in A B; do
        o=$([ $g = A ] && echo B || echo A)
        f=$(svirtd_profile_file $g)
        if [ ! -f "$f" ]; then bad="$bad $g:no-$f"; continue; fi
        grep -q "^# svirt-guest: $g\$" "$f" || bad="$bad $g:no-guest-line"
        grep -q "\"/lab/img/$g.img\" rwk" "$f" || bad="$bad $g:own-image-not-rwk"
        ! grep -q "/lab/img/$o\." "$f" || bad="$bad $g:names-$o's-files"
        seen="$seen $(basename "$f")"
    done
    if [ -z "$bad" ]; then
        labcheck svirtd.profile_files PASS "$SVIRTD_STATE/apparmor:$seen"
    else
        labcheck svirtd.profile_files FAIL "$bad"
    fi
}

manager_stop() {
    rc=0
    # `svirt denials` next to the running svirtd names the guests by their profiles' uuids:
    # each guest must get exactly the DENIED records the expected table accounts for.
    dmesg | tail -n +$((DMESG_SKIP + 1)) | grep -a 'apparmor="DENIED"' > "$LAB_STATE/denied.log"
    sv denials --from "$LAB_STATE/denied.log" > "$LAB_STATE/denials.txt"
    sed "s|^|LABLOG svirt denials: |" "$LAB_STATE/denials.txt"
    bad=
    while read -r g n; do
        grep -qx "$g: $n AppArmor denial(s)" "$LAB_STATE/denials.txt" || bad="$bad $g (want $n)"
    done < /scenario/denial-counts
    if [ -z "$bad" ]; then
        labcheck svirtd.denials_by_name PASS "$(grep 'denial(s)$' "$LAB_STATE/denials.txt" | tr '\n' ' ')"
    else
        labcheck svirtd.denials_by_name FAIL "not as expected:$bad; got: $(grep 'denial(s)$' "$LAB_STATE/denials.txt" | tr '\n' ' ')"
    fi
    for g in A B; do
        echo "+ svirt shutdown --timeout 5 $g" >> "$LAB_STATE/manager.log"
        out=$(/lab/bin/svirt --connect "unix:$SVIRT_RUN/svirtd.sock" shutdown --timeout 5 "$g" 2>&1)
        st=$?
        echo "$out" >> "$LAB_STATE/manager.log"
        if [ $st = 0 ]; then
            :
        elif [ $st = 2 ] && [ "$out" = "svirt: guest \"$g\" is shut-off: cannot shut down" ]; then
            echo "$g had shut off before the shutdown (accepted)" >> "$LAB_STATE/manager.log"
        else
            rc=1
        fi
    done
    pid=$(cat "$LAB_STATE/svirtd.pid")
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" || { echo "svirtd pid $pid exited $?" >> "$LAB_STATE/manager.log"; rc=1; }
    sed "s|^|svirtd.log: |" "$LAB_STATE/svirtd.log" >> "$LAB_STATE/manager.log"
    [ $rc = 0 ] && echo ok > "$LAB_STATE/done" || echo "failed (see manager.log)" > "$LAB_STATE/done"
    return $rc
}
