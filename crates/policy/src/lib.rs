//! A model of the SELinux virt policy rules that isolate guests: decide and explain. Pure.
