# Host-side helpers of the enforcement lab, sourced by lab/run. Bash, set -euo pipefail.

lab_log() { printf 'lab: %s\n' "$*" >&2; }
lab_die() { printf 'lab: ERROR: %s\n' "$*" >&2; exit 2; }

# apt-get with a wait on the dpkg lock instead of failing when another apt runs.
lab_apt() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q "$@"
}

LAB_APT_UPDATED=0
lab_apt_update_once() {
    if [ "$LAB_APT_UPDATED" = 0 ]; then
        lab_log "apt-get update"
        lab_apt update >&2 || lab_die "apt-get update failed"
        LAB_APT_UPDATED=1
    fi
}

# Install packages that are missing; `apt-get update` only when something is missing.
lab_ensure_packages() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    lab_log "installing ${missing[*]}"
    [ "$(id -u)" = 0 ] || lab_die "need root to install ${missing[*]}"
    lab_apt_update_once
    lab_apt install -y --no-install-recommends "${missing[@]}" >&2 \
        || lab_die "apt-get install ${missing[*]} failed"
}

# The Debian meta package whose kernel the lab boots: linux-image-amd64 (6.1), or
# linux-image-6.12-amd64 (bookworm-security's 6.12) with `lab/run --kernel 6.12`.
LAB_KERNEL_META=${LAB_KERNEL_META:-linux-image-amd64}

lab_resolve_kernel() { # prints "PACKAGE VERSION" of the kernel $LAB_KERNEL_META points at
    local pkg ver
    pkg=$(apt-cache depends "$LAB_KERNEL_META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}') || true
    [ -n "$pkg" ] || return 1
    ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | awk '/^Version:/ {print $2; exit}') || true
    [ -n "$ver" ] || return 1
    printf '%s %s\n' "$pkg" "$ver"
}

# Debian's distro kernel (the one $LAB_KERNEL_META points at), unpacked into the cache,
# keyed by package name and version. Prints the path of vmlinuz.
lab_fetch_kernel() {
    local cache=$1 pv pkg ver dir deb img attempt
    for attempt in 1 2; do
        if ! pv=$(lab_resolve_kernel); then
            [ "$attempt" = 1 ] || lab_die "cannot resolve the kernel package behind $LAB_KERNEL_META"
            lab_apt_update_once; continue
        fi
        read -r pkg ver <<<"$pv"
        dir="$cache/kernel/${pkg}_${ver}"
        [ -s "$dir/vmlinuz" ] && break
        lab_log "fetching kernel $pkg $ver"
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        if ! (cd "$dir.tmp" && apt-get -q download "$pkg=$ver" >&2); then
            # Stale package lists name a version the mirror no longer has: refresh once.
            [ "$attempt" = 1 ] && [ "$LAB_APT_UPDATED" = 0 ] || lab_die "apt-get download $pkg=$ver failed"
            lab_apt_update_once; continue
        fi
        deb=$(ls "$dir.tmp"/*.deb)
        dpkg-deb -x "$deb" "$dir.tmp/root"
        img=$(ls "$dir.tmp"/root/boot/vmlinuz-* 2>/dev/null | head -n1)
        [ -n "$img" ] || lab_die "$deb has no /boot/vmlinuz-*"
        cp "$img" "$dir.tmp/vmlinuz"
        printf '%s %s\n' "$pkg" "$ver" > "$dir.tmp/version"
        # Only the kernel image is needed: everything the lab uses is built in.
        rm -rf "$dir.tmp/root" "$deb"
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
        break
    done
    [ -s "$dir/vmlinuz" ] || lab_die "no kernel in $dir"
    printf '%s\n' "$dir/vmlinuz"
}

# The probe and the scenario's other workspace binaries (packages named in $@, e.g. svirt,
# svirtd), linked statically in ONE cargo run, in the lab's own target dir so the team's
# normal builds are not invalidated. Static binaries run in the initramfs and on the host
# alike (the host side uses `svirt explain --batch` / `svirt denials` from the same build).
# Prints the directory holding the binaries.
lab_build_bins() {
    local repo=$1 cache=$2 dir p bin pkgs=()
    shift 2
    for p in svirt-probe "$@"; do pkgs+=(-p "$p"); done
    lab_log "building ${*:+$* and }svirt-probe (static)"
    (cd "$repo" && CARGO_TARGET_DIR="$cache/target" RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build -q --profile lab --target x86_64-unknown-linux-gnu "${pkgs[@]}" >&2) \
        || lab_die "building ${pkgs[*]} failed"
    dir="$cache/target/x86_64-unknown-linux-gnu/lab"
    for bin in svirt-probe "$@"; do
        [ -x "$dir/$bin" ] || lab_die "no binary $dir/$bin after the build"
        # A dynamic binary would die in the initramfs with a misleading "not found".
        if LC_ALL=C readelf -l "$dir/$bin" 2>/dev/null | grep -q 'Requesting program interpreter'; then
            lab_die "$dir/$bin is not static"
        fi
    done
    printf '%s\n' "$dir"
}

# Populate a staging root with busybox, /dev/console and the lab's /init.
lab_stage_base() {
    local root=$1 lib=$2 a
    rm -rf "$root" && mkdir -p "$root"/{bin,dev,proc,sys,lab,scenario,tmp}
    cp /bin/busybox "$root/bin/busybox"
    for a in $("$root/bin/busybox" --list); do
        [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
    done
    # The kernel opens /dev/console before running /init; without it init has no stdout.
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
    install -m 755 "$lib/init.sh" "$root/init"
}

lab_pack_initramfs() {
    local root=$1 out=$2
    (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) | gzip -1 > "$out"
}

# Stage a dynamically linked host binary at DEST inside ROOT with its ELF interpreter and
# the libraries `ldd` resolves, each at its host path (e.g. apparmor_parser: libc only).
lab_stage_dynamic() { # ROOT BINARY DEST
    local root=$1 bin=$2 dest=$3 lib
    [ -x "$bin" ] || lab_die "no $bin to stage"
    install -D -m 755 "$bin" "$root$dest"
    for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        [ -e "$root$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$root$lib"
    done
}

# The <disk> elements of guest NAME from a scenario plan (`disk OWNER PATH KIND` lines):
# its private disks, the shared ones (<shareable/>) and the read-only ones (<readonly/>),
# raw, virtio, vda onwards, in the plan's order.
lab_domain_disks() { # PLAN NAME
    local plan=$1 name=$2 dev=0 owner path kind extra
    while read -r _ owner path kind; do
        case $kind in
            private) [ "$owner" = "$name" ] || continue; extra= ;;
            shared) extra='<shareable/>' ;;
            readonly) extra='<readonly/>' ;;
        esac
        printf "    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vd%s' bus='virtio'/>%s</disk>\n" \
            "$path" "$(printf "\\$(printf %o $((97 + dev)))")" "$extra"
        dev=$((dev + 1))
    done < <(awk '$1 == "disk"' "$plan")
}
