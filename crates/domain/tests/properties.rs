//! Property tests: the parser and header reader never panic on hostile input, units are
//! exact, labels keep the guest's level, and the same object is planned once with the
//! strongest access and the most private sharing whatever the order of its uses.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use svirt_domain::*;

const BASE: &str = "<domain type='kvm'><name>p</name><uuid>11111111-2222-4333-8444-555555555555</uuid>\
<memory unit='MiB'>64</memory><vcpu>2</vcpu><os><type arch='x86_64' machine='pc'>hvm</type>\
<kernel>/k</kernel></os><seclabel type='dynamic' model='selinux'><baselabel>u:r:t_t:s0</baselabel></seclabel>\
<devices><disk type='file' device='disk'><driver type='qcow2'/><source file='/a/b'>\
<seclabel model='selinux' relabel='no'/></source><backingStore type='file'><format type='raw'/>\
<source file='/a/c'/></backingStore><target dev='vda'/></disk><serial type='unix'>\
<source mode='connect' path='/s'/><target port='0'/></serial><hostdev mode='subsystem' type='pci'>\
<source><address domain='0' bus='1' slot='2' function='3'/></source></hostdev></devices></domain>";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parser_never_panics_on_random_text(s in "\\PC{0,400}") {
        let _ = parse(&s);
    }

    #[test]
    fn parser_never_panics_on_mutated_domains(edits in proptest::collection::vec((0usize..2000, any::<u8>()), 1..8)) {
        let mut b = BASE.as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at % b.len();
            b[i] = byte;
        }
        if let Ok(s) = String::from_utf8(b)
            && let Ok(p) = parse(&s)
        {
            // Whatever was accepted keeps the invariants the planner relies on.
            let mut models: Vec<_> = p.domain.seclabels.iter().map(|s| s.model).collect();
            models.sort();
            models.dedup();
            prop_assert_eq!(models.len(), p.domain.seclabels.len());
            for s in &p.domain.seclabels {
                prop_assert!(s.sec_type != SecLabelType::Dynamic || s.relabel);
                prop_assert!(s.sec_type != SecLabelType::None || !s.relabel);
                prop_assert!(s.sec_type != SecLabelType::Static || s.label.is_some());
            }
        }
    }

    #[test]
    fn qcow2_header_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..600), v3 in any::<bool>()) {
        let mut b = qcow2::MAGIC.to_vec();
        b.extend_from_slice(&(if v3 { 3u32 } else { 2 }).to_be_bytes());
        b.extend_from_slice(&tail);
        let _ = qcow2::parse_header(&b);
    }

    #[test]
    fn memory_units_are_exact(n in 0u64..(1 << 30), u in 0usize..6) {
        let (unit, mult) = [("b", 1u64), ("KiB", 1 << 10), ("MiB", 1 << 20), ("KB", 1000), ("MB", 1_000_000), ("k", 1024)][u];
        let x = format!("<domain type='kvm'><name>t</name><memory unit='{unit}'>{n}</memory><os><type>hvm</type></os></domain>");
        prop_assert_eq!(parse(&x).unwrap().domain.memory_bytes, n * mult);
    }

    #[test]
    fn static_level_is_kept_on_every_private_label(a in 0u16..1024, b in 0u16..1024, s in 0u16..4) {
        let level = format!("s{s}:c{a},c{b}");
        let xml = format!(
            "<domain type='kvm'><name>t</name><memory>1024</memory><os><type>hvm</type></os>\
             <seclabel type='static' model='selinux' relabel='yes'><label>system_u:system_r:svirt_t:{level}</label></seclabel></domain>"
        );
        let d = parse(&xml).unwrap().domain;
        let r = Resource {
            path: "/x/disk".into(),
            kind: ResourceKind::DiskImage,
            access: Access::Rw,
            sharing: Sharing::Private,
            recursive: false,
            device: "disk vda".into(),
            overrides: Default::default(),
            identity: None,
        };
        let res = svirt_domain::Resources { resources: vec![r], ..Default::default() };
        let p = plan(&d, res, &PlanConfig::default()).unwrap();
        let img = p.resources[0].selinux.as_ref().unwrap().display(None);
        let proc_label = match &p.selinux_process { ProcessLabel::Label(t) => t.display(None), _ => unreachable!() };
        let img_ctx = svirt_labels::Context::parse(&img).unwrap();
        let proc_ctx = svirt_labels::Context::parse(&proc_label).unwrap();
        prop_assert_eq!(img_ctx.range, proc_ctx.range);
        prop_assert_eq!(img_ctx.type_.as_str(), "svirt_image_t");
        prop_assert_eq!(img_ctx.role.as_str(), "object_r");
        // The kernel-canonical form: categories sorted whatever order the XML used.
        prop_assert_eq!(img_ctx.to_string(), img);
    }
}

/// One use of one of three files: (file, readonly, shareable).
fn uses() -> impl Strategy<Value = Vec<(usize, bool, bool)>> {
    proptest::collection::vec((0usize..3, any::<bool>(), any::<bool>()), 1..8)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn one_object_once_with_strongest_access(us in uses()) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().canonicalize().unwrap();
        for i in 0..3 {
            std::fs::write(dir.join(format!("f{i}")), b"x").unwrap();
        }
        let mut devs = String::new();
        for (n, (f, ro, sh)) in us.iter().enumerate() {
            devs.push_str(&format!(
                "<disk type='file'><driver type='raw'/><source file='{}/f{f}'/><target dev='vd{n}'/>{}{}</disk>",
                dir.display(),
                if *ro { "<readonly/>" } else { "" },
                if *sh { "<shareable/>" } else { "" },
            ));
        }
        let xml = format!("<domain type='kvm'><name>t</name><memory>1024</memory><os><type>hvm</type></os><devices>{devs}</devices></domain>");
        let host = Host::new(t.path());
        let p = plan_xml(&xml, &host, &PlanConfig::default()).unwrap();
        let mut files: Vec<usize> = us.iter().map(|u| u.0).collect();
        files.sort_unstable();
        files.dedup();
        prop_assert_eq!(p.plan.resources.len(), files.len());
        for f in files {
            let mine: Vec<_> = us.iter().filter(|u| u.0 == f).collect();
            let r = p.plan.resources.iter().find(|r| r.resource.path == dir.join(format!("f{f}"))).unwrap();
            let want_rw = mine.iter().any(|u| !u.1);
            prop_assert_eq!(r.resource.access == Access::Rw, want_rw);
            let want = if mine.iter().any(|u| !u.1 && !u.2) {
                Sharing::Private
            } else if mine.iter().any(|u| u.2) {
                Sharing::Shared
            } else {
                Sharing::ReadOnlyContent
            };
            prop_assert_eq!(r.resource.sharing, want);
        }
    }
}
