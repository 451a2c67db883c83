# Shared helpers for svirt's scripts. Source it; do not run it.

# ensure_packages PKG...: installs the Debian packages that are missing, idempotently.
# `apt-get update` runs only when something is missing (and at most once per call).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "svirt: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Another apt may hold the lock (a parallel job): wait for it instead of failing.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_rust: the stable toolchain must already be there (no toolchain can be fetched here).
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || { echo "svirt: cargo (stable Rust >= 1.95) is required" >&2; exit 1; }
}

# The packages the test suite uses (one place, so CI and developers agree).
SVIRT_TEST_PACKAGES=(
  qemu-utils qemu-system-x86 ovmf
  selinux-policy-default policycoreutils setools checkpolicy libsepol-dev python3-selinux
  busybox-static cpio attr acl
  gcc libc6-dev e2fsprogs mount util-linux
)

# What scripts/fuzz needs besides stable Rust: a C++ compiler, for libfuzzer-sys, which
# builds libFuzzer from its bundled sources (no cargo tool, no nightly), and qemu-img, which
# the qcow2_qemu target compares svirt's header reader with.
SVIRT_FUZZ_PACKAGES=(g++ qemu-utils)
