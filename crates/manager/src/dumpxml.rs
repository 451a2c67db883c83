//! The live XML: the original document with the domain-level `<seclabel>` elements of the
//! active models replaced by ones showing the labels in use, as libvirt shows them.

use svirt_domain::Model;

use crate::error::{ManagerError, Result};
use crate::record::Record;
use crate::types::ModelLabels;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

/// Renders the live XML of `rec` with `labels` (one per active model).
pub(crate) fn live_xml(rec: &Record, labels: &[ModelLabels]) -> Result<String> {
    let xml = rec.xml.as_str();
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| ManagerError::Domain(format!("stored XML no longer parses: {e}")))?;
    let root = doc.root_element();
    let active: Vec<Model> = labels.iter().map(|l| l.model).collect();
    // Domain-level seclabels of the active models are replaced; others are kept.
    let mut cut: Vec<std::ops::Range<usize>> = Vec::new();
    let mut original: Vec<(Model, String, bool)> = Vec::new();
    for n in root.children().filter(|n| n.has_tag_name("seclabel")) {
        let model = Model::from_name(n.attribute("model").unwrap_or("selinux"));
        if let Some(m) = model
            && active.contains(&m)
        {
            let ty = n.attribute("type").unwrap_or("dynamic").to_string();
            // libvirt's defaults: relabel is yes for dynamic, no for static and none.
            let relabel = n
                .attribute("relabel")
                .map_or(ty == "dynamic", |r| r == "yes");
            original.push((m, ty, relabel));
            // Take the preceding indentation too, so the output stays tidy.
            let mut start = n.range().start;
            while start > 0 && matches!(xml.as_bytes()[start - 1], b' ' | b'\t') {
                start -= 1;
            }
            let mut end = n.range().end;
            if xml.as_bytes().get(end) == Some(&b'\n') {
                end += 1;
            }
            cut.push(start..end);
        }
    }
    let mut block = String::new();
    for l in labels {
        let (ty, relabel) = original
            .iter()
            .find(|(m, ..)| *m == l.model)
            .map(|(_, t, r)| (t.clone(), *r))
            .unwrap_or_else(|| ("dynamic".to_string(), true));
        match (&l.process, ty.as_str()) {
            (None, _) | (_, "none") => {
                block.push_str(&format!(
                    "  <seclabel type='none' model='{}'/>\n",
                    l.model.as_str()
                ));
            }
            (Some(p), _) => {
                block.push_str(&format!(
                    "  <seclabel type='{}' model='{}' relabel='{}'>\n    <label>{}</label>\n",
                    esc(&ty),
                    l.model.as_str(),
                    if relabel { "yes" } else { "no" },
                    esc(p)
                ));
                if let Some(i) = &l.image {
                    block.push_str(&format!("    <imagelabel>{}</imagelabel>\n", esc(i)));
                }
                block.push_str("  </seclabel>\n");
            }
        }
    }
    // Insert before </domain>.
    let close = xml
        .rfind("</domain>")
        .ok_or_else(|| ManagerError::Domain("stored XML has no </domain>".into()))?;
    let mut out = String::with_capacity(xml.len() + block.len());
    let mut pos = 0;
    for r in cut.iter() {
        out.push_str(&xml[pos..r.start]);
        pos = r.end;
    }
    // `close` lies after every cut (seclabels are children of <domain>).
    out.push_str(&xml[pos..close]);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&block);
    out.push_str(&xml[close..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Phase;
    use crate::types::GuestState;

    #[test]
    fn replaces_and_adds_seclabels() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.img");
        std::fs::write(&disk, b"").unwrap();
        let xml = format!(
            "<domain type='qemu'>\n  <name>x</name>\n  <memory unit='MiB'>16</memory>\n  <os><type>hvm</type></os>\n  <devices>\n    <disk type='file' device='disk'><driver type='raw'/><source file='{}'/><target dev='vda'/></disk>\n  </devices>\n  <seclabel type='dynamic' model='selinux'/>\n  <seclabel type='none' model='apparmor'/>\n</domain>\n",
            disk.display()
        );
        let host = svirt_domain::Host::new("/");
        let planned =
            svirt_domain::plan_xml(&xml, &host, &svirt_domain::PlanConfig::default()).unwrap();
        let rec = Record {
            name: "x".into(),
            uuid: planned.plan.uuid.clone(),
            xml: xml.clone(),
            spec: crate::glue::vm_spec(
                &planned.domain,
                &planned.plan,
                std::path::Path::new("/run/svirt/guests/x"),
            )
            .unwrap(),
            plan: planned.plan,
            state: GuestState::Running,
            phase: Phase::Up,
            models: vec![Model::Selinux, Model::Dac],
            level: Some("s0:c1,c2".into()),
            ids: Some((300001, 300001)),
            pid: None,
            start_time: None,
            spawn_floor: None,
            runtime_dir: "/run/x".into(),
            qmp_socket: "/run/x/qmp.sock".into(),
            cgroups: vec![],
            accel: "tcg".into(),
            argv: vec![],
            intent: None,
            exit: None,
            previous: None,
            leftovers: None,
        };
        let labels = vec![
            ModelLabels {
                model: Model::Selinux,
                process: Some("system_u:system_r:svirt_t:s0:c1,c2".into()),
                image: Some("system_u:object_r:svirt_image_t:s0:c1,c2".into()),
            },
            ModelLabels {
                model: Model::Dac,
                process: Some("+300001:+300001".into()),
                image: Some("+300001:+300001".into()),
            },
        ];
        let out = live_xml(&rec, &labels).unwrap();
        let doc = roxmltree::Document::parse(&out).unwrap();
        let secs: Vec<_> = doc
            .root_element()
            .children()
            .filter(|n| n.has_tag_name("seclabel"))
            .collect();
        // The apparmor one (not active) stays; selinux replaced; dac added.
        assert_eq!(secs.len(), 3, "{out}");
        let se = secs
            .iter()
            .find(|n| n.attribute("model") == Some("selinux"))
            .unwrap();
        assert_eq!(se.attribute("type"), Some("dynamic"));
        assert_eq!(se.attribute("relabel"), Some("yes"));
        let text = |n: &roxmltree::Node<'_, '_>, tag: &str| {
            n.children()
                .find(|c| c.has_tag_name(tag))
                .and_then(|c| c.text())
                .map(str::to_string)
        };
        assert_eq!(
            text(se, "label").as_deref(),
            Some("system_u:system_r:svirt_t:s0:c1,c2")
        );
        assert_eq!(
            text(se, "imagelabel").as_deref(),
            Some("system_u:object_r:svirt_image_t:s0:c1,c2")
        );
        let dac = secs
            .iter()
            .find(|n| n.attribute("model") == Some("dac"))
            .unwrap();
        assert_eq!(text(dac, "label").as_deref(), Some("+300001:+300001"));
        assert!(
            secs.iter()
                .any(|n| n.attribute("model") == Some("apparmor"))
        );
        // Everything else is untouched.
        assert!(out.contains("<target dev='vda'/>"));
    }
}
