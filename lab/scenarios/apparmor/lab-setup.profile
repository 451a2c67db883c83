# A hand-written profile the VM loads before svirtd runs: proves apparmor_parser works in
# the initramfs and that a process entering a profile at exec is confined by it.
abi <abi/3.0>,
include <tunables/global>

profile lab-setup flags=(attach_disconnected) {
  include <abstractions/base>
  /lab/bin/svirt-probe mr,
  /lab/setup/allowed r,
}
