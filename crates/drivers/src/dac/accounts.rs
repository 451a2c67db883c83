//! Account lookups in `passwd` and `group` files under the driver's accounts root (tests
//! point it at a temporary tree).

/// The id of `name` in a `passwd` or `group` file.
pub(super) fn lookup_id(text: &str, name: &str) -> Option<u32> {
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(2).and_then(|s| s.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ids() {
        let g = "root:x:0:\nkvm:x:993:alice\nbad\n";
        assert_eq!(lookup_id(g, "kvm"), Some(993));
        assert_eq!(lookup_id(g, "kv"), None);
        assert_eq!(lookup_id(g, "bad"), None);
    }
}
