# Shared helpers for svirt's scripts. Source it; do not run it.

# pkg_installed PKG: whether dpkg has PKG installed.
pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# The QEMU packages come from one source and depend on each other at exactly one version.
# An image can ship a newer qemu-utils than the qemu-system-x86 Debian offers; installing
# the missing qemu-system-x86 then makes apt REMOVE qemu-utils (and qemu-img with it). So
# when a QEMU package is missing after an install, all requested QEMU packages are
# installed again at the version apt offers for qemu-system-x86 (downgrading if need be).
SVIRT_QEMU_VERSION_OF=qemu-system-x86

# ensure_packages PKG...: installs the Debian packages that are missing, idempotently.
# `apt-get update` runs only when something is missing (and at most once per call). Ends
# with every PKG installed, or fails naming the ones that are not: an install may remove
# another package (see above), so each is checked again afterwards.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    pkg_installed "$p" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "svirt: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Another apt may hold the lock (a parallel job): wait for it instead of failing.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  local gone=() qemu=() v
  for p in "$@"; do
    pkg_installed "$p" || gone+=("$p")
  done
  if [ ${#gone[@]} -gt 0 ]; then
    v=$(apt-cache policy "$SVIRT_QEMU_VERSION_OF" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    for p in "$@"; do
      case "$p" in qemu-*) qemu+=("$p${v:+=$v}") ;; *) pkg_installed "$p" || qemu+=("$p") ;; esac
    done
    echo "svirt: ${gone[*]} missing after the install; installing ${qemu[*]} together" >&2
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
      --allow-downgrades "${qemu[@]}" >/dev/null
  fi
  gone=()
  for p in "$@"; do
    pkg_installed "$p" || gone+=("$p")
  done
  if [ ${#gone[@]} -gt 0 ]; then
    echo "svirt: still not installed after apt-get install: ${gone[*]}" >&2
    exit 1
  fi
}

# ensure_commands CMD...: every command must be on PATH (after ensure_packages: a package
# can be installed and still lack a command another install removed); fails naming each
# missing one.
ensure_commands() {
  local missing=() c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "svirt: missing command(s): ${missing[*]}" >&2
    exit 1
  fi
}

# ensure_rust: the stable toolchain must already be there (no toolchain can be fetched here).
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || { echo "svirt: cargo (stable Rust >= 1.95) is required" >&2; exit 1; }
}

# host_triple: the triple cargo builds for (.cargo/config.toml: `host-tuple`), which names
# the directory under target/ that holds the binaries.
host_triple() {
  rustc -vV | sed -n 's/^host: //p'
}

# What building svirt needs besides stable Rust: clang compiles the BPF-LSM programs
# (crates/bpf), libbpf is built from its vendored sources (make, a C compiler) and linked
# statically with libelf and zlib.
SVIRT_BUILD_PACKAGES=(clang gcc libc6-dev make pkg-config libelf-dev zlib1g-dev)
SVIRT_BUILD_COMMANDS=(clang cc make pkg-config)

# The packages the test suite uses (one place, so CI and developers agree).
SVIRT_TEST_PACKAGES=(
  qemu-utils qemu-system-x86 ovmf
  selinux-policy-default policycoreutils setools checkpolicy libsepol-dev python3-selinux
  busybox-static cpio attr acl apparmor
  gcc libc6-dev e2fsprogs mount util-linux
)

# What scripts/fuzz needs besides stable Rust: a C++ compiler, for libfuzzer-sys, which
# builds libFuzzer from its bundled sources (no cargo tool, no nightly), and qemu-img, which
# the qcow2_qemu target compares svirt's header reader with.
SVIRT_FUZZ_PACKAGES=(g++ qemu-utils)

# The commands behind those packages that the tests and scripts run.
SVIRT_TEST_COMMANDS=(
  qemu-img qemu-system-x86_64 sesearch checkpolicy setfattr getfattr setfacl getfacl
  busybox cpio gcc mkfs.ext4 mount setpriv apparmor_parser
)

# virtiofsd, which serves virtiofs shares: Debian 12 does not package it, so it is built
# from crates.io (its `seccomp` feature links Debian's libseccomp, capabilities go through
# libcap-ng) at a pinned version and installed as /usr/local/bin/virtiofsd. Idempotent: a
# virtiofsd of that version already there is kept. The build (~1.5 min on 2 cores) uses a
# target directory outside the checkout, kept for the next time.
SVIRT_VIRTIOFSD_VERSION=1.14.0
SVIRT_VIRTIOFSD_PACKAGES=(libseccomp-dev libcap-ng-dev pkg-config)
ensure_virtiofsd() {
  local have
  have=$(/usr/local/bin/virtiofsd --version 2>/dev/null | awk '{print $2}') || true
  if [ "$have" != "$SVIRT_VIRTIOFSD_VERSION" ]; then
    ensure_packages "${SVIRT_VIRTIOFSD_PACKAGES[@]}"
    echo "svirt: building virtiofsd $SVIRT_VIRTIOFSD_VERSION from crates.io" >&2
    cargo install --quiet --locked --force virtiofsd --version "=$SVIRT_VIRTIOFSD_VERSION" \
      --root /usr/local --target-dir /var/cache/svirt/virtiofsd-build >&2
  fi
  have=$(/usr/local/bin/virtiofsd --version 2>/dev/null | awk '{print $2}') || true
  if [ "$have" != "$SVIRT_VIRTIOFSD_VERSION" ]; then
    echo "svirt: /usr/local/bin/virtiofsd is not $SVIRT_VIRTIOFSD_VERSION after the build" >&2
    exit 1
  fi
}
