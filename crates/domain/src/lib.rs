//! libvirt domain XML to one resource model and a per-model labeling plan.
