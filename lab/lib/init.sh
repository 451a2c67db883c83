#!/bin/sh
# PID 1 of the lab VM. Mounts the basics, runs the scenario's scenario_main (from
# /scenario/guest.sh), dumps the kernel's AVC and AppArmor lines between markers and
# powers off.
# Everything the host parses starts with LAB at the beginning of a line.
export PATH=/bin
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
