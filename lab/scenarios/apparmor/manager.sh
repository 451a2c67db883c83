# The manager step of the AppArmor scenario: the real svirtd and svirt CLI. Sourced by
# guest.sh (busybox sh, PID 1, unconfined: svirtd runs unconfined, as on a Debian host
# without a profile for it).
#   manager_start  start svirtd (--drivers $DRIVERS) and `svirt start` A and B
#                  (/scenario/NAME.xml: fixed uuid, the probe as <emulator>);
#                  $LAB_STATE/pids.all = `manager PID`, `NAME PID` per guest, `END`.
#   manager_crash_recover  SIGKILL svirtd, then A's VMM, restart svirtd: svirtd.recovery_profiles.
#   manager_stop   `svirt denials` (per-guest counts), `svirt shutdown` each guest (A, killed
#                  before, is accepted shut-off), stop svirtd.
SVIRT_RUN=/lab/run/1
SVIRTD_STATE=$LAB_STATE/svirtd

sv() { # ARGS...: svirt against svirtd, logged
    echo "+ svirt $*" >> "$LAB_STATE/manager.log"
    /lab/bin/svirt --connect "unix:$SVIRT_RUN/svirtd.sock" "$@" 2>> "$LAB_STATE/manager.log"
}

uuid_of() { awk -v g="$1" '$1 == "guest" && $2 == g { print $3 }' /lab/etc/plan; }

# Where svirtd writes guest NAME's profile (docs/drivers/apparmor.md).
svirtd_profile_file() { echo "$SVIRTD_STATE/apparmor/svirt-$(uuid_of "$1")"; }

# Starts svirtd in the background (a child of this shell: manager_stop waits for it), its
# pid in svirtd.pid, its log appended to svirtd.log; returns once the API answers (a crashed
# svirtd's stale socket is still there: svirtd removes it, recovers, then binds).
svirtd_launch() {
    /lab/bin/svirtd --state-dir "$SVIRTD_STATE" --run-dir "$SVIRT_RUN" --drivers "$DRIVERS" \
        --accel tcg --qemu /lab/bin/qemu-system-x86_64 --shutdown-timeout 5 \
        </dev/null >> "$LAB_STATE/svirtd.log" 2>&1 &
    echo $! > "$LAB_STATE/svirtd.pid"
    i=0
    until /lab/bin/svirt --connect "unix:$SVIRT_RUN/svirtd.sock" list >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -lt 300 ] || { echo "svirtd: no answer after 30s" >> "$LAB_STATE/manager.log"; return 1; }
        kill -0 "$(cat "$LAB_STATE/svirtd.pid")" 2>/dev/null \
            || { echo "svirtd exited" >> "$LAB_STATE/manager.log"; return 1; }
        sleep 0.1
    done
}

manager_start() {
    : > "$LAB_STATE/manager.log"
    : > "$LAB_STATE/svirtd.log"
    svirtd_launch || return 1
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

# Crash safety of the AppArmor driver's recovery: svirtd SIGKILLed while both guests run,
# guest A's VMM SIGKILLed while svirtd is down, svirtd started again on the same state and
# run directories with the same flags. Its recovery at open must remove A's profile (kernel
# and file) and keep B's: B's VMM still in it, B still listed running. Logged in
# $LAB_STATE/recovery. BREAK=recover-wrong (the control): after the restart the scenario
# puts A's profile back (file and kernel) and unloads B's, as a wrong recovery would; the
# check must fail.
manager_crash_recover() {
    r=$LAB_STATE/recovery
    : > "$r"
    old=$(cat "$LAB_STATE/svirtd.pid")
    apid=$(awk '$1 == "A" { print $2 }' "$LAB_STATE/pids.all")
    bpid=$(awk '$1 == "B" { print $2 }' "$LAB_STATE/pids.all")
    kill -KILL "$old"
    wait "$old"
    echo "svirtd $old SIGKILLed (wait: $?)" >> "$r"
    echo "==== svirtd $old SIGKILLed; A's VMM $apid SIGKILLed; svirtd restarted ====" >> "$LAB_STATE/svirtd.log"
    kill -KILL "$apid"
    # A's VMM was reparented to PID 1 (this shell), which reaps it while it waits for sleep.
    i=0
    while [ -e "/proc/$apid/stat" ] && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
    echo "A's VMM $apid SIGKILLed: $([ -e "/proc/$apid" ] && echo "still there: $(cut -d' ' -f3 "/proc/$apid/stat")" || echo gone)" >> "$r"
    echo "B's VMM $bpid: $(cat "/proc/$bpid/attr/apparmor/current" 2>&1)" >> "$r"
    echo "while svirtd is down: profiles: $(grep '^svirt-' /sys/kernel/security/apparmor/profiles | tr '\n' ' ')files: $(ls "$SVIRTD_STATE/apparmor" | tr '\n' ' ')" >> "$r"
    echo "+ svirtd (restart, same flags)" >> "$LAB_STATE/manager.log"
    if ! svirtd_launch; then
        echo "svirtd did not come back" >> "$r"
        labcheck svirtd.recovery_profiles FAIL "svirtd did not come back after the crash: $(tail -n 5 "$LAB_STATE/svirtd.log" | tr '\n' ' ')"
        return 1
    fi
    echo "svirtd restarted: pid $(cat "$LAB_STATE/svirtd.pid")" >> "$r"
    if [ "$BREAK" = recover-wrong ]; then
        # The control: what a recovery that kept A's profile and removed B's would leave.
        fa=$(svirtd_profile_file A)
        cp "$LAB_STATE/profiles/$(basename "$fa")" "$fa"
        echo "+ (control) A's profile put back, B's unloaded" >> "$r"
        apparmor_parser --replace --skip-cache "$fa" >> "$r" 2>&1
        apparmor_parser --remove "$(svirtd_profile_file B)" >> "$r" 2>&1
    fi
    sv list > "$LAB_STATE/list.after-crash"
    cat "$LAB_STATE/list.after-crash" >> "$LAB_STATE/manager.log"
    profiles=/sys/kernel/security/apparmor/profiles
    pa=svirt-$(uuid_of A) pb=svirt-$(uuid_of B)
    fa=$(svirtd_profile_file A) fb=$(svirtd_profile_file B)
    bad= ok=
    if grep -q "^$pa " $profiles; then bad="$bad A's profile still loaded ($(grep "^$pa " $profiles));"; else ok="$ok $pa unloaded;"; fi
    if [ -e "$fa" ]; then bad="$bad A's file $fa still there;"; else ok="$ok A's file deleted;"; fi
    if grep -qx "$pb (enforce)" $profiles; then ok="$ok $pb (enforce) loaded;"; else bad="$bad B's profile not loaded ($(grep '^svirt-' $profiles | tr '\n' ' '));"; fi
    if [ -f "$fb" ] && grep -q "^# svirt-guest: B\$" "$fb"; then ok="$ok B's file kept;"; else bad="$bad B's file $fb gone or not B's;"; fi
    cur=$(cat "/proc/$bpid/attr/apparmor/current" 2>&1)
    if [ "$cur" = "$pb (enforce)" ]; then ok="$ok B's VMM $bpid in $cur;"; else bad="$bad B's VMM $bpid in '$cur';"; fi
    la=$(awk '$1 == "A" { print $2 }' "$LAB_STATE/list.after-crash")
    lb=$(awk '$1 == "B" { print $2 " " $3 }' "$LAB_STATE/list.after-crash")
    if [ "$lb" = "running $bpid" ]; then ok="$ok svirt list: B running $bpid"; else bad="$bad svirt list: B '${lb:-absent}', want 'running $bpid';"; fi
    if [ "$la" = running ]; then bad="$bad svirt list: A still running;"; else ok="$ok, A ${la:-not listed}"; fi
    {
        echo "after the restart: profiles: $(grep '^svirt-' $profiles | tr '\n' ' ')"
        echo "files: $(ls "$SVIRTD_STATE/apparmor" | tr '\n' ' ')"
        cat "$LAB_STATE/list.after-crash"
    } >> "$r"
    if [ -z "$bad" ]; then
        labcheck svirtd.recovery_profiles PASS "svirtd and A's VMM SIGKILLed, svirtd restarted:$ok"
    else
        labcheck svirtd.recovery_profiles FAIL "after the crash and restart:$bad (kept right:$ok)"
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
