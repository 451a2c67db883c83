//! 20 guests started at once get distinct uids (and distinct labels per model), all run,
//! and all are cleaned up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use common::{Env, alive, require_env};
use svirt_manager::{Manager, StartOptions};

#[test]
fn twenty_concurrent_guests_get_distinct_identities() {
    require_env!();
    let env = Env::new("conc");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let n = 20;
    let xmls: Vec<(String, std::path::PathBuf)> = (0..n)
        .map(|i| {
            let disk = env.raw(&format!("d{i}.img"));
            (
                env.xml(&format!("g{i}"), &[(disk.clone(), "raw", false)]),
                disk,
            )
        })
        .collect();
    let infos: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = xmls
            .iter()
            .map(|(xml, _)| {
                let m = m.clone();
                s.spawn(move || m.start(xml, StartOptions { paused: true }))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let infos: Vec<_> = infos.into_iter().map(|r| r.unwrap()).collect();
    let uids: HashSet<u32> = infos.iter().map(|i| i.uid.unwrap()).collect();
    assert_eq!(uids.len(), n, "uids not distinct");
    let labels: HashSet<String> = m
        .list(false)
        .unwrap()
        .iter()
        .map(|g| g.labels["dac"].clone())
        .collect();
    assert_eq!(labels.len(), n, "dac labels not distinct");
    for (info, (_, disk)) in infos.iter().zip(&xmls) {
        assert!(alive(info.pid.unwrap()));
        assert_eq!(std::fs::metadata(disk).unwrap().uid(), info.uid.unwrap());
    }
    std::thread::scope(|s| {
        for i in &infos {
            let m = m.clone();
            let name = i.name.clone();
            s.spawn(move || m.destroy(&name).unwrap());
        }
    });
    for info in &infos {
        assert!(!alive(info.pid.unwrap()));
    }
    for (_, disk) in &xmls {
        assert_eq!(std::fs::metadata(disk).unwrap().uid(), 0);
    }
    drop(m);
    env.assert_store_clean("20 guests destroyed");
}
