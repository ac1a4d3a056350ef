#!/bin/busybox sh
# /init of the initramfs `./x vm-test` boots: mounts the host's root file system (virtio-fs)
# read-only under a tmpfs overlay, makes the guest kernel's modules visible at /lib/modules,
# mounts what BPF and the tests need, runs the script named by `intercept.run=` on the kernel
# command line, prints its exit status for the host, and powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do
    insmod /mods/$m.ko || echo "vm-init: insmod $m failed"
done
run=$(sed -n 's/.*intercept\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
# How much slower than the host the tests run (5 under TCG): their waiting limits scale by it.
INTERCEPT_TEST_TIME_SCALE=$(sed -n 's/.*intercept\.time_scale=\([0-9]*\).*/\1/p' /proc/cmdline)
export INTERCEPT_TEST_TIME_SCALE
mods=$(sed -n 's/.*intercept\.modules=\([^ ]*\).*/\1/p' /proc/cmdline)
fail() { echo "vm-init: failed: $*"; echo "VM-EXIT-STATUS=125"; poweroff -f; }
# The virtio device may still be probing: retry for a few seconds.
tries=0
until mount -t virtiofs hostroot /mnt/lower 2>/dev/null; do
    tries=$((tries + 1))
    [ $tries -gt 50 ] && fail "cannot mount the host root (virtio-fs tag hostroot)"
    sleep 0.1
done
mount -t tmpfs -o size=1G tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot \
    || fail "cannot mount the overlay"
r=/newroot
mount --move /proc $r/proc
mount --move /sys $r/sys
mount --move /dev $r/dev
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts devpts $r/dev/pts
mount -t tmpfs tmpfs $r/dev/shm
for d in tmp run var/tmp; do mount -t tmpfs tmpfs $r/$d; done
mount -t bpf bpf $r/sys/fs/bpf
mount -t tracefs tracefs $r/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs $r/sys/kernel/debug 2>/dev/null
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup
kver=$(uname -r)
if [ -n "$mods" ] && [ -d "$r$mods" ]; then
    mkdir -p $r/lib/modules/$kver
    mount --bind $r$mods $r/lib/modules/$kver
fi
# The kernel loads modules on demand (a veth, a qdisc) by running modprobe in this init's root,
# not the chroot's: busybox's modprobe here, over the same modules.
if [ -n "$mods" ] && [ -d "$r$mods" ]; then
    mkdir -p /lib/modules/$kver
    mount --bind $r$mods /lib/modules/$kver
fi
echo /bin/modprobe > $r/proc/sys/kernel/modprobe
chroot $r /bin/sh -c 'ip link set lo up; hostname vm' >/dev/null 2>&1
echo "vm-init: up: $kver after $(cut -d' ' -f1 $r/proc/uptime) s"
chroot $r /bin/sh -c "cd / && exec /bin/sh $run" </dev/console >/dev/console 2>&1
echo "VM-EXIT-STATUS=$?"
sync
poweroff -f
