//! Fuzzes the domain XML parser and, for documents it accepts, the planner (on
//! resources built in memory: no file system access from the fuzzer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use svirt_domain::{Access, PlanConfig, Resource, ResourceKind, Sharing, parse, plan};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = parse(text) else { return };
    let d = &parsed.domain;
    // Every accepted seclabel obeys libvirt's rules.
    for s in &d.seclabels {
        // dynamic implies relabel; none forbids it.
        assert!(s.sec_type != svirt_domain::SecLabelType::Dynamic || s.relabel);
        assert!(s.sec_type != svirt_domain::SecLabelType::None || !s.relabel);
    }
    // Plan one private disk per device seclabel set, as the builder would.
    let resources: Vec<Resource> = d
        .disks
        .iter()
        .filter_map(|disk| {
            Some(Resource {
                path: disk.source.clone()?,
                kind: ResourceKind::DiskImage,
                access: if disk.readonly {
                    Access::Ro
                } else {
                    Access::Rw
                },
                sharing: Sharing::Private,
                recursive: false,
                device: disk.target_dev.clone(),
                overrides: Default::default(),
                identity: None,
            })
        })
        .collect();
    let resources = svirt_domain::Resources {
        resources,
        ..Default::default()
    };
    if let Ok(p) = plan(d, resources, &PlanConfig::default()) {
        let _ = svirt_domain::report(&p, &[], &parsed.warnings);
    }
});
