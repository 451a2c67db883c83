//! Just enough of the qcow2 header to find a backing file and its declared format.
//!
//! Only ever called on images whose format is DECLARED qcow2 (in the XML, or as the
//! backing format recorded in the image above): probing an undeclared image's format is
//! what CVE-2010-2237 exploited.

/// The magic at offset 0: `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Header extension: backing file format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: external data file name.
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Incompatible feature bit 2: an external data file holds the guest data.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;

/// QEMU refuses backing file names longer than this.
const MAX_BACKING_NAME: u32 = 1023;

/// How many bytes of an image to read to parse its header: the header, its extensions
/// and the backing file name all live in the first cluster, and QEMU bounds them further.
pub const HEADER_READ_LIMIT: usize = 1 << 20;

/// The parts of a qcow2 header svirt uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// The backing file name as stored (a path, relative to the image's directory when
    /// not absolute).
    pub backing_file: Option<Vec<u8>>,
    /// The backing format extension's value.
    pub backing_format: Option<String>,
    /// An external data file name (refused by the builder: QEMU would open it too).
    pub data_file: Option<Vec<u8>>,
    /// Whether the incompatible "external data file" bit is set.
    pub has_data_file_bit: bool,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

/// Parses the header at the start of `buf` (the first bytes of the image).
pub fn parse_header(buf: &[u8]) -> Result<Header, String> {
    if buf.get(0..4) != Some(&MAGIC[..]) {
        return Err("not a qcow2 image (bad magic)".into());
    }
    let short = || "header truncated".to_string();
    let version = be32(buf, 4).ok_or_else(short)?;
    if version != 2 && version != 3 {
        return Err(format!("unsupported qcow2 version {version}"));
    }
    let backing_offset = be64(buf, 8).ok_or_else(short)?;
    let backing_size = be32(buf, 16).ok_or_else(short)?;
    let cluster_bits = be32(buf, 20).ok_or_else(short)?;
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!("invalid cluster_bits {cluster_bits}"));
    }
    let cluster = 1usize << cluster_bits;
    let (header_len, incompat) = if version == 3 {
        let incompat = be64(buf, 72).ok_or_else(short)?;
        let hl = be32(buf, 100).ok_or_else(short)?;
        if hl < 104 || hl % 8 != 0 {
            return Err(format!("invalid header_length {hl}"));
        }
        (hl as usize, incompat)
    } else {
        (72, 0)
    };
    // Everything below lives in the first cluster; never look further.
    let limit = cluster.min(buf.len());
    let backing_file = if backing_offset != 0 && backing_size != 0 {
        if backing_size > MAX_BACKING_NAME {
            return Err(format!(
                "backing file name of {backing_size} bytes (limit {MAX_BACKING_NAME})"
            ));
        }
        let start = usize::try_from(backing_offset)
            .map_err(|_| "backing file offset out of range".to_string())?;
        let end = start
            .checked_add(backing_size as usize)
            .ok_or("backing file offset out of range")?;
        if end > cluster {
            return Err("backing file name lies outside the first cluster".into());
        }
        let name = buf
            .get(start..end)
            .ok_or("backing file name beyond the end of the image")?;
        if name.contains(&0) {
            return Err("backing file name contains a NUL byte".into());
        }
        Some(name.to_vec())
    } else {
        None
    };
    let mut backing_format = None;
    let mut data_file = None;
    let mut at = header_len;
    let ext_end = match backing_file {
        Some(_) => usize::try_from(backing_offset)
            .unwrap_or(usize::MAX)
            .min(limit),
        None => limit,
    };
    loop {
        if at + 8 > ext_end {
            break;
        }
        let ty = be32(buf, at).ok_or_else(short)?;
        let len = be32(buf, at + 4).ok_or_else(short)? as usize;
        if ty == 0 {
            break;
        }
        let data_start = at + 8;
        let data_end = data_start
            .checked_add(len)
            .ok_or("header extension too long")?;
        if data_end > ext_end {
            return Err(format!(
                "header extension 0x{ty:08x} runs past the header area"
            ));
        }
        let data = &buf[data_start..data_end];
        match ty {
            EXT_BACKING_FORMAT => {
                let s = std::str::from_utf8(data)
                    .map_err(|_| "backing format is not text".to_string())?;
                backing_format = Some(s.trim_end_matches('\0').to_string());
            }
            EXT_DATA_FILE => data_file = Some(data.to_vec()),
            _ => {}
        }
        at = data_end
            .checked_add((8 - len % 8) % 8)
            .ok_or("header extension too long")?;
    }
    Ok(Header {
        version,
        cluster_bits,
        backing_file,
        backing_format,
        data_file,
        has_data_file_bit: incompat & INCOMPAT_DATA_FILE != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 header as QEMU writes it: 104-byte header, extensions, backing name.
    fn image(backing: Option<(&str, Option<&str>)>) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        let mut at = 112;
        if let Some((name, fmt)) = backing {
            if let Some(f) = fmt {
                b[at..at + 4].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
                b[at + 4..at + 8].copy_from_slice(&(f.len() as u32).to_be_bytes());
                b[at + 8..at + 8 + f.len()].copy_from_slice(f.as_bytes());
                at += 8 + f.len().div_ceil(8) * 8;
            }
            at += 8; // end-of-extensions marker (zeros)
            b[8..16].copy_from_slice(&(at as u64).to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            b[at..at + name.len()].copy_from_slice(name.as_bytes());
        }
        b
    }

    #[test]
    fn backing_and_format() {
        let h = parse_header(&image(Some(("base.qcow2", Some("qcow2"))))).unwrap();
        assert_eq!(h.backing_file.as_deref(), Some(&b"base.qcow2"[..]));
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
        let h = parse_header(&image(Some(("/x/raw", None)))).unwrap();
        assert_eq!(h.backing_format, None);
        let h = parse_header(&image(None)).unwrap();
        assert_eq!(h.backing_file, None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_header(b"RAW!").is_err());
        assert!(parse_header(&MAGIC).is_err());
        let mut b = image(Some(("base", Some("raw"))));
        b[16..20].copy_from_slice(&5000u32.to_be_bytes());
        assert!(parse_header(&b).is_err());
        let mut b = image(None);
        b[20..24].copy_from_slice(&40u32.to_be_bytes());
        assert!(parse_header(&b).unwrap_err().contains("cluster_bits"));
    }
}
