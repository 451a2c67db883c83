//! Security drivers (SELinux, DAC, Landlock) behind one trait, stacked, with the relabel engine.
