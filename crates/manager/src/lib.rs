//! Guest lifecycle: allocation, plans, QEMU launch and supervision.
