# The lab's own kernels, built from Debian's kernel source (sourced by lab/run; bash,
# set -euo pipefail, after lab/lib/common.sh). `lab/run --kernel smack`: no Debian 12
# kernel has SMACK built in, so the lab builds one from linux-source-6.1, as small as the
# lab allows: `make tinyconfig`, the fragment lab/kernel/NAME.config merged over it
# (scripts/kconfig/merge_config.sh + olddefconfig), every option of the fragment checked in
# the final .config, everything built in (no modules: the lab boots a vmlinuz alone).
#
# Cache: $CACHE/kernel/NAME-<linux-source version>-<hash>/{vmlinuz,version}, the layout of
# lab_fetch_kernel's entries. <hash> is 12 hex digits of the SHA-256 of the fragment and of
# this file, so a changed fragment or build recipe is a new entry, and a warm run only
# hashes two files. The build runs in <entry>.tmp beneath the cache (under a lock: one
# build at a time) and is renamed into place once vmlinuz and version are there.

LAB_KSRC_PKG=linux-source-6.1
LAB_KSRC_TAR=/usr/src/linux-source-6.1.tar.xz
# What the build calls: the source, kconfig (bison, flex), kernel/time/timeconst (bc),
# objtool (libelf-dev), the compiler and make, the tarball and KERNEL_XZ (xz-utils).
# No libssl-dev: without modules and trusted keys no signing tool is built.
LAB_KBUILD_PACKAGES=("$LAB_KSRC_PKG" bc bison flex libelf-dev xz-utils make gcc libc6-dev tar)
LAB_KBUILD_COMMANDS=(bc bison flex make gcc xz tar sha256sum flock)

# The fragment's options as Kconfig writes them: `CONFIG_X=V` and `# CONFIG_X is not set`.
lab_kconfig_lines() { # FRAGMENT
    grep -E -e '^CONFIG_[A-Za-z0-9_]+=' -e '^# CONFIG_[A-Za-z0-9_]+ is not set$' "$1"
}

# The cache entry of lab/kernel/NAME.config (built or not): keyed by the installed
# linux-source package's version and the hash of the fragment and of this file.
lab_kernel_dir() { # CACHE NAME
    local cache=$1 name=$2 frag srcver hash
    frag=$LAB_DIR/kernel/$name.config
    srcver=$(dpkg-query -W -f='${Version}' "$LAB_KSRC_PKG" 2>/dev/null) || true
    [ -n "$srcver" ] || lab_die "$LAB_KSRC_PKG is not installed"
    hash=$(cat "$frag" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
    printf '%s\n' "$cache/kernel/$name-$srcver-$hash"
}

# lab_build_kernel CACHE NAME: the kernel of lab/kernel/NAME.config, built once and cached.
# Prints the path of its vmlinuz (a bzImage).
lab_build_kernel() {
    local cache=$1 name=$2 frag dir tmp src srcver l opt got missing=() t0 c
    frag=$LAB_DIR/kernel/$name.config
    [ -f "$frag" ] || lab_die "no kernel fragment $frag"
    lab_ensure_packages "${LAB_KBUILD_PACKAGES[@]}"
    for c in "${LAB_KBUILD_COMMANDS[@]}"; do
        command -v "$c" >/dev/null || lab_die "the kernel build needs $c, which is not on PATH"
    done
    [ -s "$LAB_KSRC_TAR" ] || lab_die "no $LAB_KSRC_TAR (package $LAB_KSRC_PKG)"
    dir=$(lab_kernel_dir "$cache" "$name")
    if [ -s "$dir/vmlinuz" ] && [ -s "$dir/version" ]; then
        printf '%s\n' "$dir/vmlinuz"; return 0
    fi
    mkdir -p "$cache/kernel"
    # One build per entry at a time: a second lab/run waits, then finds the entry.
    exec {lockfd}> "$dir.lock"
    flock "$lockfd"
    if [ -s "$dir/vmlinuz" ] && [ -s "$dir/version" ]; then
        exec {lockfd}>&-
        printf '%s\n' "$dir/vmlinuz"; return 0
    fi
    srcver=$(dpkg-query -W -f='${Version}' "$LAB_KSRC_PKG")
    tmp=$dir.tmp
    rm -rf "$tmp" && mkdir -p "$tmp"
    t0=$(date +%s)
    lab_log "building the $name kernel from $LAB_KSRC_PKG $srcver (tinyconfig + lab/kernel/$name.config, make -j$(nproc)): once, several minutes; log in $tmp/build.log"
    tar -xf "$LAB_KSRC_TAR" -C "$tmp" || lab_die "cannot unpack $LAB_KSRC_TAR"
    src=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n1)
    [ -n "$src" ] || lab_die "$LAB_KSRC_TAR holds no linux-source-* directory"
    # ARCH=x86_64: tinyconfig on an x86 host would otherwise ask for a 32-bit kernel.
    # The build user, host and time are fixed so the same inputs give the same version string.
    local kmake=(make -C "$src" ARCH=x86_64 KBUILD_BUILD_USER=svirt-lab KBUILD_BUILD_HOST=svirt-lab
        "KBUILD_BUILD_TIMESTAMP=$LAB_KSRC_PKG $srcver")
    {
        "${kmake[@]}" tinyconfig \
            && (cd "$src" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$frag") \
            && "${kmake[@]}" olddefconfig
    } > "$tmp/build.log" 2>&1 || { tail -n 30 "$tmp/build.log" >&2; lab_die "configuring the $name kernel failed (log: $tmp/build.log)"; }
    # Kconfig drops what it cannot satisfy (an unmet dependency, a choice) without failing:
    # every option of the fragment must be in .config exactly as the fragment asks (an
    # option asked off may also be absent: its dependencies are off, so it is too).
    while IFS= read -r l; do
        grep -qxF -- "$l" "$src/.config" && continue
        opt=$(sed -E 's/^# (CONFIG_[A-Za-z0-9_]+) is not set$/\1/; s/=.*//' <<<"$l")
        if [ "${l:0:1}" = "#" ] && ! grep -qE "^$opt=" "$src/.config"; then continue; fi
        got=$(grep -E -e "^$opt=" -e "^# $opt is not set\$" "$src/.config" || echo "absent (unmet dependencies)")
        missing+=("$opt: want '$l', .config has '$got'")
    done < <(lab_kconfig_lines "$frag")
    if [ ${#missing[@]} -gt 0 ]; then
        printf 'lab:   %s\n' "${missing[@]}" >&2
        lab_die "Kconfig did not keep ${#missing[@]} option(s) of lab/kernel/$name.config (listed above)"
    fi
    "${kmake[@]}" -j"$(nproc)" bzImage >> "$tmp/build.log" 2>&1 \
        || { tail -n 40 "$tmp/build.log" >&2; lab_die "building the $name kernel failed (log: $tmp/build.log)"; }
    cp "$src/arch/x86/boot/bzImage" "$tmp/vmlinuz"
    cp "$src/.config" "$tmp/config"
    printf '%s %s (tinyconfig + lab/kernel/%s.config %s, %s options =y)\n' "$LAB_KSRC_PKG" "$srcver" "$name" \
        "${dir##*-}" "$(grep -c '=y$' "$src/.config")" > "$tmp/version"
    rm -rf "$src"
    rm -rf "$dir" && mv "$tmp" "$dir"
    exec {lockfd}>&-
    lab_log "built the $name kernel in $(( $(date +%s) - t0 ))s: $dir"
    printf '%s\n' "$dir/vmlinuz"
}
