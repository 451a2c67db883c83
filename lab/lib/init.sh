#!/bin/sh
# PID 1 of the lab VM. Mounts the basics, runs the scenario's scenario_main (from
# /scenario/guest.sh), dumps the kernel's AVC and AppArmor lines between markers and
# powers off.
# Everything the host parses starts with LAB at the beginning of a line.
export PATH=/bin
# A scenario whose manager builds mount namespaces with pivot_root (svirtd's jail) opts in
# with /scenario/switch-root: pivot_root refuses a root on the initramfs' rootfs (EINVAL), so
# the initramfs is copied to a tmpfs that becomes the root (switch_root), and /init runs again.
if [ -f /scenario/switch-root ] && [ "${LAB_SWITCHED:-0}" != 1 ]; then
    mkdir -p /newroot && mount -t tmpfs -o mode=0755 root /newroot
    for d in /*; do
        case $d in /newroot|/proc|/sys) mkdir -p "/newroot$d" ;; *) cp -a "$d" /newroot/ ;; esac
    done
    export LAB_SWITCHED=1
    exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=0755 tmpfs /tmp
# No auditd: AVC records reach the kernel log through printk, which is rate limited.
echo 0 > /proc/sys/kernel/printk_ratelimit
echo 100000 > /proc/sys/kernel/printk_ratelimit_burst
# Keep kernel chatter off the console so it cannot split LAB lines; read it with dmesg.
dmesg -n 1

labcheck() { # NAME PASS|FAIL DETAIL...
    n=$1 r=$2; shift 2
    echo "LABCHECK $n $r $*"
}

echo "LABBOOT $(uname -r) cmdline: $(cat /proc/cmdline)"
. /scenario/guest.sh
scenario_main
echo "LABSCENARIO-EXIT $?"
echo "LABDMESG-BEGIN"
dmesg | grep -a -e 'avc:' -e 'apparmor="'
echo "LABDMESG-END"
echo "LABDONE"
sync
poweroff -f
