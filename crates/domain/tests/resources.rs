//! Resource building and planning on real objects in temp dirs: symlink escapes, missing
//! files, one object used twice, qcow2 chains read from headers (and refused), raw images
//! never inspected, host devices through a fake sysfs root, policy context files.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use svirt_domain::*;

struct Case {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: tempfile::TempDir,
}

fn case() -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    Case {
        _tmp: tmp,
        dir,
        root: tempfile::tempdir().unwrap(),
    }
}

impl Case {
    fn host(&self) -> Host {
        Host::new(self.root.path())
    }
    fn file(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, b"data").unwrap();
        p
    }
    fn plan(&self, devices: &str) -> Result<Planned> {
        self.plan_with(devices, "<seclabel type='static' model='selinux' relabel='yes'><label>system_u:system_r:svirt_t:s0:c1,c2</label></seclabel>", "")
    }
    fn plan_with(&self, devices: &str, seclabels: &str, os: &str) -> Result<Planned> {
        let xml = format!(
            "<domain type='kvm'><name>t</name><uuid>11111111-2222-4333-8444-555555555555</uuid><memory unit='MiB'>64</memory>
             <os><type arch='x86_64'>hvm</type>{os}</os>{seclabels}<devices>{}</devices></domain>",
            devices.replace("@DIR@", self.dir.to_str().unwrap())
        );
        let host = self.host();
        let cfg = PlanConfig::for_host(&host)?;
        plan_xml(&xml, &host, &cfg)
    }
}

fn disk(file: &str, dev: &str, extra: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver type='raw'/><source file='@DIR@/{file}'/><target dev='{dev}'/>{extra}</disk>"
    )
}

fn qdisk(file: &str, dev: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver type='qcow2'/><source file='@DIR@/{file}'/><target dev='{dev}'/></disk>"
    )
}

fn selinux_of(p: &Planned, path: &Path) -> Option<String> {
    let r = p
        .plan
        .resources
        .iter()
        .find(|r| r.resource.path == path)
        .unwrap_or_else(|| panic!("{} not planned", path.display()));
    r.selinux.as_ref().map(|t| t.display(None))
}

#[test]
fn symlink_into_system_path_is_refused() {
    let c = case();
    symlink("/etc/shadow", c.dir.join("img")).unwrap();
    let e = c.plan(&disk("img", "vda", "")).unwrap_err().to_string();
    assert!(
        e.contains("refusing system path /etc/shadow") && e.contains("disk vda"),
        "{e}"
    );
    // A chain of links ending in a system directory.
    symlink("/var/lib/../lib", c.dir.join("l1")).unwrap();
    symlink("l1", c.dir.join("l2")).unwrap();
    let fs = "<filesystem type='mount'><source dir='@DIR@/l2'/><target dir='x'/></filesystem>";
    let e = c.plan(fs).unwrap_err().to_string();
    assert!(e.contains("system path /var/lib"), "{e}");
    // `..` past a link: resolved like the kernel does, refused the same.
    std::fs::create_dir(c.dir.join("d")).unwrap();
    symlink("/etc", c.dir.join("d/etc")).unwrap();
    let e = c
        .plan(&disk("d/etc/../etc/passwd", "vda", ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/etc/passwd"), "{e}");
}

#[test]
fn symlink_to_a_normal_file_is_planned_at_its_real_path() {
    let c = case();
    let real = c.file("real.img");
    symlink("real.img", c.dir.join("alias.img")).unwrap();
    let p = c.plan(&disk("alias.img", "vda", "")).unwrap();
    assert_eq!(p.plan.resources.len(), 1);
    assert_eq!(p.plan.resources[0].resource.path, real);
}

#[test]
fn filesystem_tree_does_not_follow_symlinks_out() {
    let c = case();
    std::fs::create_dir_all(c.dir.join("share/sub")).unwrap();
    c.file("share/sub/a");
    c.file("secret");
    symlink("../secret", c.dir.join("share/out")).unwrap();
    symlink("/etc", c.dir.join("share/sub/etc")).unwrap();
    let p = c
        .plan("<filesystem type='mount'><source dir='@DIR@/share'/><target dir='x'/></filesystem>")
        .unwrap();
    assert_eq!(p.plan.resources.len(), 1);
    let r = &p.plan.resources[0];
    assert!(r.resource.recursive);
    assert_eq!(r.resource.kind, ResourceKind::FilesystemTree);
    let host = c.host();
    let res = host.resolve("t", &r.resource.path).unwrap();
    let secret = std::fs::metadata(c.dir.join("secret")).unwrap();
    use std::os::unix::fs::MetadataExt;
    for e in host.walk_tree("t", &res).unwrap() {
        assert!(
            (e.info.dev, e.info.ino) != (secret.dev(), secret.ino()),
            "walk reached {}",
            e.rel.display()
        );
        assert!(
            !(e.rel.starts_with("sub/etc") && e.rel != Path::new("sub/etc")),
            "walk entered a symlinked directory: {}",
            e.rel.display()
        );
    }
}

#[test]
fn missing_file_names_the_path() {
    let c = case();
    let e = c.plan(&disk("nope.img", "vdb", "")).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert!(
        text.contains(&format!("{}/nope.img", c.dir.display()))
            && text.contains("ENOENT")
            && text.contains("disk vdb"),
        "{text}"
    );
    // A missing directory above it is the same error, naming the path as written.
    let e = c
        .plan(&disk("no/dir/x.img", "vdb", ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no/dir/x.img") && e.contains("ENOENT"), "{e}");
}

#[test]
fn same_file_twice_is_one_resource_with_the_stronger_access() {
    let c = case();
    let f = c.file("a.img");
    symlink("a.img", c.dir.join("b.img")).unwrap();
    // A read-only use and a writable private use of the same file (one by a link).
    let devs = format!(
        "{}{}",
        disk("a.img", "vda", "<readonly/>"),
        disk("b.img", "vdb", "")
    );
    let p = c.plan(&devs).unwrap();
    assert_eq!(p.plan.resources.len(), 1, "{:?}", p.plan.resources);
    let r = &p.plan.resources[0].resource;
    assert_eq!(r.path, f);
    assert_eq!(r.access, Access::Rw);
    assert_eq!(r.sharing, Sharing::Private);
    assert_eq!(r.device, "disk vda, disk vdb");
    assert_eq!(
        selinux_of(&p, &f).unwrap(),
        "system_u:object_r:svirt_image_t:s0:c1,c2"
    );
    // Shared + read-only: shared wins over read-only content.
    let devs = format!(
        "{}{}",
        disk("a.img", "vda", "<readonly/>"),
        disk("a.img", "vdb", "<shareable/>")
    );
    let p = c.plan(&devs).unwrap();
    assert_eq!(p.plan.resources.len(), 1);
    assert_eq!(p.plan.resources[0].resource.sharing, Sharing::Shared);
    assert_eq!(
        selinux_of(&p, &f).unwrap(),
        "system_u:object_r:svirt_image_t:s0"
    );
    // Conflicting per-device settings for one object are refused.
    let devs = format!(
        "{}{}",
        disk("a.img", "vda", ""),
        "<disk type='file'><source file='@DIR@/a.img'><seclabel model='selinux' relabel='no'/></source><target dev='vdb'/></disk>"
    );
    let e = c.plan(&devs).unwrap_err().to_string();
    assert!(
        e.contains("disk vda") && e.contains("disk vdb") && e.contains("seclabel"),
        "{e}"
    );
}

#[test]
fn qcow2_chain_of_depth_3_from_headers() {
    let c = case();
    common::qcow2(&c.dir, "base.qcow2", None);
    std::fs::create_dir(c.dir.join("sub")).unwrap();
    // Relative names are relative to the image's own directory.
    common::qcow2(
        &c.dir.join("sub"),
        "mid.qcow2",
        Some(("../base.qcow2", "qcow2")),
    );
    common::qcow2(&c.dir, "top.qcow2", Some(("sub/mid.qcow2", "qcow2")));
    common::qcow2(
        &c.dir,
        "over.qcow2",
        Some((c.dir.join("top.qcow2").to_str().unwrap(), "qcow2")),
    );
    let p = c.plan(&qdisk("over.qcow2", "vda")).unwrap();
    let paths: Vec<_> = p
        .plan
        .resources
        .iter()
        .map(|r| (r.resource.path.clone(), r.resource.kind, r.resource.access))
        .collect();
    assert_eq!(
        paths,
        vec![
            (
                c.dir.join("over.qcow2"),
                ResourceKind::DiskImage,
                Access::Rw
            ),
            (
                c.dir.join("top.qcow2"),
                ResourceKind::BackingImage,
                Access::Ro
            ),
            (
                c.dir.join("sub/mid.qcow2"),
                ResourceKind::BackingImage,
                Access::Ro
            ),
            (
                c.dir.join("base.qcow2"),
                ResourceKind::BackingImage,
                Access::Ro
            ),
        ]
    );
    // The chain the VMM will be given, layer by layer, by resolved path (the headers'
    // relative names made absolute): the same objects, in the same order.
    let chain = p.plan.chain_of(0).unwrap();
    let layers: Vec<_> = chain
        .layers
        .iter()
        .map(|l| (l.path.clone(), l.format, l.block))
        .collect();
    assert_eq!(
        layers,
        vec![
            (c.dir.join("top.qcow2"), ImageFormat::Qcow2, false),
            (c.dir.join("sub/mid.qcow2"), ImageFormat::Qcow2, false),
            (c.dir.join("base.qcow2"), ImageFormat::Qcow2, false),
        ]
    );
    for r in &p.plan.resources[1..] {
        assert_eq!(
            r.selinux.as_ref().unwrap().display(None),
            "system_u:object_r:virt_content_t:s0"
        );
        assert!(!r.selinux_restore);
    }
    // A raw bottom layer ends the chain: the raw file is never inspected.
    let c = case();
    common::qcow2(&c.dir, "evil.raw", Some(("/etc/shadow", "raw")));
    common::qcow2(&c.dir, "top.qcow2", Some(("evil.raw", "raw")));
    let p = c.plan(&qdisk("top.qcow2", "vda")).unwrap();
    assert_eq!(p.plan.resources.len(), 2);
}

#[test]
fn qcow2_header_pointing_at_a_system_file_is_refused() {
    let c = case();
    common::qcow2(&c.dir, "top.qcow2", Some(("/etc/shadow", "raw")));
    let e = c.plan(&qdisk("top.qcow2", "vda")).unwrap_err().to_string();
    assert!(
        e.contains("refusing system path /etc/shadow") && e.contains("vda backing 1"),
        "{e}"
    );
    // Through a relative name that climbs out.
    let c = case();
    common::qcow2(
        &c.dir,
        "top.qcow2",
        Some(("../../../../../../../../etc/passwd", "raw")),
    );
    let e = c.plan(&qdisk("top.qcow2", "vda")).unwrap_err().to_string();
    assert!(e.contains("system path /etc/passwd"), "{e}");
}

#[test]
fn raw_image_carrying_a_qcow2_header_is_not_followed() {
    let c = case();
    let target = c.file("target.txt");
    common::qcow2(&c.dir, "evil.img", Some(("target.txt", "raw")));
    // Declared raw, or no driver type at all: never inspected.
    for d in [
        disk("evil.img", "vda", ""),
        "<disk type='file'><source file='@DIR@/evil.img'/><target dev='vda'/></disk>".to_string(),
    ] {
        let p = c.plan(&d).unwrap();
        assert_eq!(p.plan.resources.len(), 1);
        assert_eq!(p.plan.resources[0].resource.path, c.dir.join("evil.img"));
        assert!(!p.plan.resources.iter().any(|r| r.resource.path == target));
        assert!(p.plan.chain_of(0).unwrap().layers.is_empty());
    }
    // Even when its header points at a system file, a raw image plans fine.
    let c = case();
    common::qcow2(&c.dir, "evil.img", Some(("/etc/shadow", "raw")));
    assert_eq!(
        c.plan(&disk("evil.img", "vda", ""))
            .unwrap()
            .plan
            .resources
            .len(),
        1
    );
}

#[test]
fn qcow2_refusals() {
    let c = case();
    c.file("base.raw");
    common::qcow2_without_backing_format(&c.dir, "top.qcow2", "base.raw");
    let e = c.plan(&qdisk("top.qcow2", "vda")).unwrap_err().to_string();
    assert!(e.contains("no backing format"), "{e}");
    // A file declared qcow2 that is not.
    let c = case();
    c.file("fake.qcow2");
    let e = c.plan(&qdisk("fake.qcow2", "vda")).unwrap_err().to_string();
    assert!(e.contains("not a qcow2 image"), "{e}");
    // Protocol backing names.
    let c = case();
    common::qcow2(
        &c.dir,
        "top.qcow2",
        Some(("nbd://example.invalid/x", "raw")),
    );
    let e = c.plan(&qdisk("top.qcow2", "vda")).unwrap_err().to_string();
    assert!(e.contains("not a local file"), "{e}");
    // A loop.
    let c = case();
    common::qcow2(&c.dir, "a.qcow2", Some(("b.qcow2", "qcow2")));
    common::qcow2(&c.dir, "b.qcow2", Some(("a.qcow2", "qcow2")));
    let e = c.plan(&qdisk("a.qcow2", "vda")).unwrap_err().to_string();
    assert!(e.contains("loops"), "{e}");
    // Too deep.
    let c = case();
    common::qcow2(&c.dir, "l0.qcow2", None);
    for i in 1..=(MAX_CHAIN_DEPTH + 1) {
        common::qcow2(
            &c.dir,
            &format!("l{i}.qcow2"),
            Some((&format!("l{}.qcow2", i - 1), "qcow2")),
        );
    }
    let e = c
        .plan(&qdisk(&format!("l{}.qcow2", MAX_CHAIN_DEPTH + 1), "vda"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("deeper"), "{e}");
}

#[test]
fn xml_chain_then_header() {
    let c = case();
    common::qcow2(&c.dir, "base.qcow2", None);
    common::qcow2(&c.dir, "mid.qcow2", Some(("base.qcow2", "qcow2")));
    c.file("top.qcow2");
    // The XML gives top → mid without an end marker: mid's header gives base. The top
    // itself is never read (it is not even a qcow2 file here).
    let d = "<disk type='file'><driver type='qcow2'/><source file='@DIR@/top.qcow2'/>
        <backingStore type='file'><format type='qcow2'/><source file='@DIR@/mid.qcow2'/></backingStore>
        <target dev='vda'/></disk>";
    let p = c.plan(d).unwrap();
    assert_eq!(p.plan.resources.len(), 3);
    let paths = |p: &Planned| -> Vec<PathBuf> {
        p.plan
            .chain_of(0)
            .unwrap()
            .layers
            .iter()
            .map(|l| l.path.clone())
            .collect()
    };
    // One chain for the VMM: the XML's layer, then the header's below it.
    assert_eq!(
        paths(&p),
        vec![c.dir.join("mid.qcow2"), c.dir.join("base.qcow2")]
    );
    // With an end marker nothing is read.
    let d = d.replace("</backingStore>", "<backingStore/></backingStore>");
    let p = c.plan(&d).unwrap();
    assert_eq!(p.plan.resources.len(), 2);
    assert_eq!(paths(&p), vec![c.dir.join("mid.qcow2")]);
}

#[test]
fn chardev_pipes_and_sockets() {
    let c = case();
    common::mkfifo(&c.dir.join("p.in"));
    common::mkfifo(&c.dir.join("p.out"));
    common::mkfifo(&c.dir.join("solo.in"));
    common::mkfifo(&c.dir.join("solo"));
    let _l = std::os::unix::net::UnixListener::bind(c.dir.join("c.sock")).unwrap();
    let devs = "<serial type='pipe'><source path='@DIR@/p'/><target port='0'/></serial>
        <serial type='pipe'><source path='@DIR@/solo'/><target port='1'/></serial>
        <channel type='unix'><source mode='connect' path='@DIR@/c.sock'/><target type='virtio' name='a'/></channel>
        <channel type='unix'><source mode='bind' path='@DIR@/new.sock'/><target type='virtio' name='b'/></channel>
        <serial type='tcp'><source mode='bind' host='127.0.0.1' service='4555'/><target port='2'/></serial>";
    let p = c.plan(devs).unwrap();
    let got: Vec<_> = p
        .plan
        .resources
        .iter()
        .map(|r| {
            r.resource
                .path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(got, ["p.in", "p.out", "solo", "c.sock"]);
    // A connect socket that does not exist is an error; a pipe that is a regular file too.
    let e = c.plan("<channel type='unix'><source mode='connect' path='@DIR@/gone.sock'/><target type='virtio' name='x'/></channel>").unwrap_err();
    assert!(e.to_string().contains("gone.sock"), "{e}");
    c.file("plain");
    let e = c
        .plan("<serial type='pipe'><source path='@DIR@/plain'/></serial>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be used as chardev-pipe"), "{e}");
}

#[test]
fn hostdevs_through_a_fake_sysfs_root() {
    let c = case();
    let r = c.root.path();
    std::fs::create_dir_all(r.join("sys/kernel/iommu_groups/17")).unwrap();
    std::fs::create_dir_all(r.join("sys/bus/pci/devices/0000:06:02.1")).unwrap();
    symlink(
        "../../../../kernel/iommu_groups/17",
        r.join("sys/bus/pci/devices/0000:06:02.1/iommu_group"),
    )
    .unwrap();
    std::fs::create_dir_all(r.join("dev/vfio")).unwrap();
    std::fs::write(r.join("dev/vfio/17"), b"").unwrap();
    std::fs::create_dir_all(r.join("dev/bus/usb/001")).unwrap();
    std::fs::write(r.join("dev/bus/usb/001/007"), b"").unwrap();
    std::fs::create_dir_all(r.join("sys/bus/usb/devices/1-2")).unwrap();
    for (f, v) in [
        ("idVendor", "046d\n"),
        ("idProduct", "c52b\n"),
        ("busnum", "1\n"),
        ("devnum", "7\n"),
    ] {
        std::fs::write(r.join("sys/bus/usb/devices/1-2").join(f), v).unwrap();
    }
    let devs = "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x06' slot='0x02' function='0x1'/></source></hostdev>
        <hostdev mode='subsystem' type='usb'><source><address bus='1' device='7'/></source></hostdev>";
    let p = c.plan(devs).unwrap();
    let root = r.canonicalize().unwrap();
    let got: Vec<_> = p
        .plan
        .resources
        .iter()
        .map(|x| x.resource.path.clone())
        .collect();
    assert_eq!(
        got,
        vec![root.join("dev/vfio/17"), root.join("dev/bus/usb/001/007")]
    );
    assert!(
        p.plan
            .resources
            .iter()
            .all(|x| x.resource.kind == ResourceKind::HostdevNode && x.selinux.is_some())
    );
    // By vendor/product: the same node, so one resource.
    let devs = "<hostdev mode='subsystem' type='usb'><source><vendor id='0x046d'/><product id='0xc52b'/></source></hostdev>";
    let p = c.plan(devs).unwrap();
    assert_eq!(
        p.plan.resources[0].resource.path,
        root.join("dev/bus/usb/001/007")
    );
    let e = c.plan("<hostdev mode='subsystem' type='pci'><source><address bus='0x07' slot='0' function='0'/></source></hostdev>").unwrap_err().to_string();
    assert!(e.contains("0000:07:00.0"), "{e}");
}

#[test]
fn tpm_state_and_memory_backing() {
    let c = case();
    let state = c
        .root
        .path()
        .join("var/lib/libvirt/swtpm/11111111-2222-4333-8444-555555555555");
    std::fs::create_dir_all(state.join("tpm2")).unwrap();
    std::fs::write(state.join("tpm2/tpm2-00.permall"), b"").unwrap();
    std::fs::create_dir(c.dir.join("hp")).unwrap();
    let p = c
        .plan("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>")
        .unwrap();
    let r = &p.plan.resources[0];
    // libvirt's layout: the version's directory below the guest's uuid.
    assert_eq!(r.resource.path, state.join("tpm2").canonicalize().unwrap());
    assert!(r.resource.recursive && r.resource.kind == ResourceKind::TpmState);
    assert_eq!(
        r.selinux.as_ref().unwrap().display(None),
        "system_u:object_r:svirt_image_t:s0:c1,c2"
    );
    // Given in the XML.
    std::fs::create_dir(c.dir.join("mytpm")).unwrap();
    let p = c
        .plan(
            "<tpm><backend type='emulator'><source type='dir' path='@DIR@/mytpm'/></backend></tpm>",
        )
        .unwrap();
    assert_eq!(p.plan.resources[0].resource.path, c.dir.join("mytpm"));
    // Memory backing.
    let xml_mb = format!(
        "<domain type='kvm'><name>t</name><memory>1024</memory><os><type>hvm</type></os><memoryBacking><source type='file' path='{}/hp'/></memoryBacking></domain>",
        c.dir.display()
    );
    let host = c.host();
    let p = plan_xml(&xml_mb, &host, &PlanConfig::for_host(&host).unwrap()).unwrap();
    assert_eq!(
        p.plan.resources[0].resource.kind,
        ResourceKind::MemoryBacking
    );
}

#[test]
fn contexts_from_policy_files() {
    let c = case();
    let r = c.root.path();
    std::fs::create_dir_all(r.join("etc/selinux/targeted/contexts")).unwrap();
    std::fs::write(
        r.join("etc/selinux/config"),
        "# comment\nSELINUX=enforcing\nSELINUXTYPE=targeted\n",
    )
    .unwrap();
    std::fs::write(
        r.join("etc/selinux/targeted/contexts/virtual_domain_context"),
        "system_u:system_r:svirt_kvm_t:s0\nsystem_u:system_r:svirt_tcg_t:s0\n",
    )
    .unwrap();
    std::fs::write(
        r.join("etc/selinux/targeted/contexts/virtual_image_context"),
        "system_u:object_r:my_image_t:s0\nmy_content_t:s0\n",
    )
    .unwrap();
    let ctx = SelinuxContexts::load(r).unwrap();
    assert_eq!(ctx.process.to_string(), "system_u:system_r:svirt_kvm_t:s0");
    assert_eq!(ctx.tcg_type.as_ref().unwrap().as_str(), "svirt_tcg_t");
    assert_eq!(ctx.content.to_string(), "system_u:object_r:my_content_t:s0");
    c.file("a.img");
    c.file("b.iso");
    let devs = format!(
        "{}{}",
        disk("a.img", "vda", ""),
        disk("b.iso", "sda", "<readonly/>")
    );
    let p = c.plan_with(&devs, "", "").unwrap();
    assert_eq!(
        selinux_of(&p, &c.dir.join("a.img")).unwrap(),
        "system_u:object_r:my_image_t:@LEVEL@"
    );
    assert_eq!(
        selinux_of(&p, &c.dir.join("b.iso")).unwrap(),
        "system_u:object_r:my_content_t:s0"
    );
    match &p.plan.selinux_process {
        ProcessLabel::Label(t) => {
            assert_eq!(t.display(None), "system_u:system_r:svirt_kvm_t:@LEVEL@")
        }
        u => panic!("{u:?}"),
    }
    // TCG guests get the second line's type.
    let xml =
        "<domain type='qemu'><name>t</name><memory>1024</memory><os><type>hvm</type></os></domain>";
    let host = c.host();
    let p = plan_xml(xml, &host, &PlanConfig::for_host(&host).unwrap()).unwrap();
    match &p.plan.selinux_process {
        ProcessLabel::Label(t) => assert_eq!(t.type_.as_str(), "svirt_tcg_t"),
        u => panic!("{u:?}"),
    }
    // A context file that does not parse is an error naming it.
    std::fs::write(
        r.join("etc/selinux/targeted/contexts/virtual_image_context"),
        "garbage!\n",
    )
    .unwrap();
    let e = SelinuxContexts::load(r).unwrap_err().to_string();
    assert!(e.contains("virtual_image_context"), "{e}");
}

#[test]
fn seclabel_models_and_dac() {
    let c = case();
    c.file("a.img");
    c.file("b.img");
    let devs = format!(
        "{}<disk type='file'><source file='@DIR@/b.img'><seclabel model='dac' relabel='yes'><label>+300:+301</label></seclabel></source><target dev='vdb'/></disk>",
        disk("a.img", "vda", "")
    );
    let p = c
        .plan_with(&devs, "<seclabel type='none' model='selinux'/><seclabel type='static' model='dac' relabel='yes'><label>+107:+108</label></seclabel>", "")
        .unwrap();
    assert_eq!(p.plan.selinux_process, ProcessLabel::Unconfined);
    assert!(p.plan.unconfined.contains(&Model::Selinux));
    assert_eq!(p.plan.dac_ids, Some((107, 108)));
    assert!(p.plan.resources.iter().all(|r| r.selinux.is_none()));
    assert_eq!(
        p.plan.resources[0].dac,
        DacAction::OwnGuest { private: true }
    );
    assert_eq!(
        p.plan.resources[1].dac,
        DacAction::Owner { uid: 300, gid: 301 }
    );
    let rep = report(&p.plan, &[], &p.warnings);
    assert_eq!(rep.process["selinux"], None);
    assert_eq!(rep.process["dac"].as_deref(), Some("107:108"));
    assert_eq!(rep.resources[0].labels["selinux"], None);
    assert_eq!(
        rep.resources[0].labels["dac"].as_deref(),
        Some("chown 107:108 mode owner-only")
    );
    // A per-device model that is not loaded (apparmor is not planned by default).
    let devs = "<disk type='file'><source file='@DIR@/a.img'><seclabel model='apparmor' relabel='no'/></source><target dev='vda'/></disk>";
    let e = c.plan(devs).unwrap_err().to_string();
    assert!(e.contains("'apparmor'") && e.contains("not loaded"), "{e}");
    // ... but a domain naming apparmor plans it.
    let p = c
        .plan_with(devs, "<seclabel type='dynamic' model='apparmor'/>", "")
        .unwrap();
    assert!(p.plan.models.contains(&Model::Apparmor));
    // Its column is the profile's rule for the disk: read-write and lockable.
    let rep = svirt_domain::report(&p.plan, &[Model::Apparmor], &[]);
    assert_eq!(rep.resources[0].labels["apparmor"].as_deref(), Some("rwk"));
}

#[test]
fn json_report_shape() {
    let c = case();
    c.file("a.img");
    let p = c.plan_with(&disk("a.img", "vda", ""), "", "").unwrap();
    let rep = report(&p.plan, &[Model::Dac], &p.warnings);
    let v: serde_json::Value = serde_json::to_value(&rep).unwrap();
    assert_eq!(v["process"]["selinux"], "system_u:system_r:svirt_t:@LEVEL@");
    assert_eq!(v["level"], "@LEVEL@");
    assert_eq!(v["cannot_run"], serde_json::json!(["selinux", "landlock"]));
    let r = &v["resources"][0];
    assert_eq!(r["path"], c.dir.join("a.img").to_str().unwrap());
    assert_eq!(r["kind"], "disk-image");
    assert_eq!(r["access"], "rw");
    assert_eq!(
        r["labels"]["selinux"],
        "system_u:object_r:svirt_image_t:@LEVEL@"
    );
    assert_eq!(r["labels"]["landlock"], "rw");
    assert!(
        r["reasons"]["selinux"]
            .as_str()
            .unwrap()
            .contains("image label")
    );
}

/// `<rng>`: /dev/urandom (the default) and /dev/random are system devices every VMM may
/// read, never planned; any other source is the guest's own device node, read-only, with
/// the guest's image label (as libvirt labels it). An egd backend (a chardev) and a
/// non-virtio model are refused, naming them.
#[test]
fn rng_sources_are_planned_like_libvirt() {
    let c = case();
    let p = c
        .plan("<rng model='virtio'><backend model='random'/></rng><rng model='virtio'><backend model='random'>/dev/random</backend></rng><rng model='virtio'><backend model='builtin'/></rng>")
        .unwrap();
    assert!(p.plan.resources.is_empty(), "{:?}", p.plan.resources);
    assert_eq!(p.domain.rngs.len(), 3);
    assert_eq!(
        p.domain.rngs[0].backend,
        svirt_domain::RngBackend::Random {
            device: "/dev/urandom".into()
        }
    );
    let hw = c.file("hwrng");
    let p = c
        .plan("<rng model='virtio'><backend model='random'>@DIR@/hwrng</backend></rng>")
        .unwrap();
    let r = &p.plan.resources[0];
    assert_eq!(r.resource.path, hw);
    assert_eq!(r.resource.kind, ResourceKind::HostdevNode);
    assert_eq!(r.path_access, Access::Ro);
    assert_eq!(r.resource.device, "rng 0");
    assert_eq!(
        selinux_of(&p, &hw).as_deref(),
        Some("system_u:object_r:svirt_image_t:s0:c1,c2")
    );
    let e = c
        .plan("<rng model='virtio'><backend model='egd' type='tcp'><source mode='connect' host='1.2.3.4' service='1234'/></backend></rng>")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/domain/devices/rng/backend@model") && e.contains("egd"),
        "{e}"
    );
    let e = c
        .plan("<rng model='other'><backend model='random'/></rng>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("rng@model"), "{e}");
}

/// The host's own firmware (OVMF, SeaBIOS) named as a read-only loader is not the guest's
/// object: not planned (every VMM may read it, nothing changes it). A path that only
/// spells its way there (`..`), or a loader QEMU would write, is planned and judged like
/// any other object, and refused under /usr.
#[test]
fn system_firmware_loaders_are_the_hosts_not_planned() {
    let c = case();
    let fw = c.root.path().join("usr/share/OVMF");
    std::fs::create_dir_all(&fw).unwrap();
    std::fs::write(fw.join("OVMF_CODE_4M.fd"), b"code").unwrap();
    let os = |loader: &str| {
        format!(
            "<loader readonly='{loader}' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
        )
    };
    let p = c.plan_with("", "", &os("yes")).unwrap();
    assert!(p.plan.resources.is_empty(), "{:?}", p.plan.resources);
    let e = c.plan_with("", "", &os("no")).unwrap_err().to_string();
    assert!(
        e.contains("system tree /usr"),
        "a written loader under /usr: {e}"
    );
    let e = c
        .plan_with(
            "",
            "",
            "<loader readonly='yes' type='pflash'>/usr/share/OVMF/../../../etc/passwd</loader>",
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("/etc/passwd") || e.contains("/etc"), "{e}");
    assert!(svirt_domain::in_system_firmware_dir(std::path::Path::new(
        "/usr/share/seabios/bios.bin"
    )));
    assert!(!svirt_domain::in_system_firmware_dir(std::path::Path::new(
        "/usr/share/OVMF"
    )));
}

/// The listening socket of a chardev QEMU serves is bound by svirt (QEMU in its jail gets
/// the fd): a fresh one is made root's alone; one an earlier run left (nothing listens)
/// is replaced; one something listens on is refused, naming it; a non-socket (a symlink
/// included, never followed) is left for planning to judge.
#[test]
fn chardev_sockets_are_bound_for_qemu_replacing_only_stale_ones() {
    use std::os::unix::fs::PermissionsExt;
    let c = case();
    let host = Host::new("/");
    let p = c.dir.join("console.sock");
    let l = host.bind_socket("serial 0", &p).unwrap().expect("bound");
    let m = std::fs::symlink_metadata(&p).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    // It listens: a client gets through.
    std::os::unix::net::UnixStream::connect(&p).unwrap();
    // While it listens, a second bind is refused.
    let e = host.bind_socket("serial 0", &p).unwrap_err().to_string();
    assert!(e.contains("console.sock") && e.contains("listens"), "{e}");
    // Stale (the listener gone): replaced by a new socket that listens.
    drop(l);
    assert!(
        std::os::unix::net::UnixStream::connect(&p).is_err(),
        "stale"
    );
    let l2 = host.bind_socket("serial 0", &p).unwrap().expect("rebound");
    std::os::unix::net::UnixStream::connect(&p).unwrap();
    drop(l2);
    // Another user's socket there (stale or not) is not svirt's to remove.
    std::os::unix::fs::chown(&p, Some(4000), None).unwrap();
    let e = host.bind_socket("serial 0", &p).unwrap_err().to_string();
    assert!(e.contains("not svirt's"), "{e}");
    assert!(std::fs::symlink_metadata(&p).is_ok(), "left in place");
    // A regular file there: not touched (planning refuses it as a socket chardev).
    let f = c.dir.join("file.sock");
    std::fs::write(&f, b"data").unwrap();
    assert!(host.bind_socket("serial 1", &f).unwrap().is_none());
    assert_eq!(std::fs::read(&f).unwrap(), b"data");
    // A symlink as the socket's own name is never followed: nothing is made where it
    // points, and the link is left for planning to judge.
    let other = c.dir.join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    let link = c.dir.join("link.sock");
    symlink(other.join("target.sock"), &link).unwrap();
    assert!(host.bind_socket("serial 2", &link).unwrap().is_none());
    assert!(!other.join("target.sock").exists());
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}
