//! The qcow2 header reader on arbitrary bytes: an image header is guest data (a
//! compromised VMM rewrites its own disk's header), so the reader must never panic, and
//! whatever it accepts must be what the header's fields say, taken from the first cluster
//! only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svirt_domain::qcow2::{MAGIC, parse_header};

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse_header(data) else { return };
    // Accepted: a qcow2 v2/v3 header with a sane cluster size, read from the fields.
    assert_eq!(data[0..4], MAGIC);
    assert!(h.version == 2 || h.version == 3, "version {}", h.version);
    assert_eq!(h.version, be32(data, 4));
    assert!((9..=21).contains(&h.cluster_bits), "{}", h.cluster_bits);
    assert_eq!(h.cluster_bits, be32(data, 20));
    let cluster = 1usize << h.cluster_bits;
    let (offset, size) = (be64(data, 8), be32(data, 16));
    match &h.backing_file {
        Some(name) => {
            // Exactly the bytes the header points at, inside the first cluster, bounded
            // like QEMU's, no NUL (a NUL would cut the path QEMU opens).
            let start = usize::try_from(offset).expect("offset fits");
            let end = start + size as usize;
            assert!(
                end <= cluster && end <= data.len(),
                "name at {start}..{end}"
            );
            assert_eq!(&name[..], &data[start..end]);
            assert!(!name.is_empty() && name.len() <= 1023);
            assert!(!name.contains(&0));
        }
        None => assert!(offset == 0 || size == 0, "backing name dropped"),
    }
    if h.version == 2 {
        assert!(!h.has_data_file_bit, "v2 has no incompatible features");
    } else {
        assert_eq!(h.has_data_file_bit, be64(data, 72) & 4 != 0);
    }
    if let Some(f) = &h.backing_format {
        assert!(!f.ends_with('\0'));
    }
});
