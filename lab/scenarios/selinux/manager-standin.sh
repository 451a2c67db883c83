# The manager step of the SELinux scenario, kept apart so svirtd can replace it.
# Sourced by guest.sh (busybox sh, runs as kernel_t). Contract:
#   manager_start  start the manager through the real domain chain
#                  (kernel_t -> init_exec_t -> init_t -> virtd_exec_t -> virtd_t) and the
#                  guests of /lab/etc/plan; return 0 once they run, with $LAB_STATE/pids.all
#                  holding `manager PID`, one `NAME PID` line per guest, then `END`.
#   manager_stop   stop the guests, let the manager restore labels; 0 when it did so cleanly.
# Replacing it with svirtd: start svirtd through the same chain, `svirt start` each guest
# of the plan, build pids.all from `svirt` output; manager_stop = `svirt stop` + shutdown.

manager_start() {
    /lab/bin/init-probe exec --null-stdio /lab/bin/virtd-probe manager \
        --plan /lab/etc/plan --state "$LAB_STATE" --vmm /lab/bin/qemu-system-x86_64 --timeout 150 \
        </dev/null >/dev/null 2>&1 &
    MANAGER_PID=$!
    $P wait-line --line END --timeout 90 "$LAB_STATE/pids" || return 1
    { echo "manager $MANAGER_PID"; cat "$LAB_STATE/pids"; } > "$LAB_STATE/pids.all"
}

manager_stop() {
    : > "$LAB_STATE/stop"
    wait "$MANAGER_PID"
    rc=$?
    [ "$rc" = 0 ] && grep -q '^ok' "$LAB_STATE/done"
}
