//! The DAC + Landlock stack on real processes: a helper started under both drivers' child
//! hooks cannot reach another guest's image, /root, /etc/shadow, or signal a process outside
//! itself (even one running under its own uid), and can use its own resources; the same
//! helper without the hooks can do all of it. Device access through the device group's ACL.

mod dac_support;

use std::path::Path;

use dac_support::*;
use svirt_drivers::landlock::{LandlockConfig, LandlockDriver, kernel_abi};
use svirt_drivers::{ChildHook, GuestSecurity, SecurityDriver};

fn hooks(
    drivers: &[&dyn SecurityDriver],
    p: &svirt_domain::Plan,
    g: &GuestSecurity,
    ctx: &svirt_drivers::ExecContext,
) -> Vec<ChildHook> {
    let mut v = Vec::new();
    for d in drivers {
        v.extend(d.child_hooks(p, g, ctx).expect("child hooks"));
    }
    v
}

#[test]
fn dac_landlock_stack_confines_a_real_process() {
    if skip_unless_root() {
        return;
    }
    if kernel_abi() < 6 {
        svirt_testkit::skip(
            "landlock-abi-6",
            format!("kernel Landlock ABI {} < 6 (signal scoping)", kernel_abi()),
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    traversable(dir.path());
    let acc = root_accounts(dir.path());
    let dac = dac_driver(&dir.path().join("state"), &acc, 610_000, 610_050, None);
    let ll = LandlockDriver::new(LandlockConfig::default());

    let mk = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).expect("mkdir");
        traversable(&d);
        let img = d.join("disk.img");
        std::fs::write(&img, b"image").expect("img");
        chmod(&img, 0o644);
        let run = d.join("run");
        std::fs::create_dir(&run).expect("run");
        (img, run)
    };
    let (a_img, a_run) = mk("a");
    let (b_img, _b_run) = mk("b");
    let iso = dir.path().join("a/cd.iso");
    std::fs::write(&iso, b"iso").expect("iso");
    chmod(&iso, 0o600);

    let pa = plan("stack-a", vec![disk(&a_img), cdrom(&iso)]);
    let pb = plan("stack-b", vec![disk(&b_img)]);
    let mut ga = guest("stack-a");
    let mut gb = guest("stack-b");
    for d in [&dac as &dyn SecurityDriver, &ll] {
        d.reserve(&pa, &mut ga).expect("reserve a");
        d.reserve(&pb, &mut gb).expect("reserve b");
    }
    dac.set_all(&pa, &ga).expect("set a");
    dac.set_all(&pb, &gb).expect("set b");
    let (uid, gid) = ga.ids.expect("ids");
    // The run dir belongs to the guest (the manager creates it so).
    std::os::unix::fs::chown(&a_run, Some(uid), Some(gid)).expect("chown run");

    // A process outside the guest but under the guest's own uid: only Landlock's signal
    // scoping stands between the VMM and it.
    let mut same_uid = Sleeper::start(Some((uid, gid)));
    let mut root_proc = Sleeper::start(None);
    let created = a_run.join("qmp.sock");
    let ops = vec![
        op("ids", ""),
        op("read", a_img.display()),
        op("write", a_img.display()),
        op("read", iso.display()),
        op("create", created.display()),
        op("read", b_img.display()),
        op("write", b_img.display()),
        op("readdir", "/root"),
        op("read", "/etc/shadow"),
        op("signal", format!("{}:15", same_uid.pid())),
        op("signal", format!("{}:15", root_proc.pid())),
    ];
    let ctx = exec_ctx(&a_run);

    let m = run(hooks(&[&dac, &ll], &pa, &ga, &ctx), &ops);
    eprintln!("DAC + Landlock: {m:#?}");
    let ids = m.get("ids").expect("ids line");
    assert!(
        ids.starts_with(&format!(
            "uid={uid},{uid},{uid} gid={gid},{gid},{gid} groups= "
        )),
        "{ids}"
    );
    assert!(
        ids.contains("caps=0,0,0 ambient=0 bounding=0 nnp=1"),
        "{ids}"
    );
    for (o, a) in [
        ("read", a_img.display().to_string()),
        ("write", a_img.display().to_string()),
        ("read", iso.display().to_string()),
        ("create", created.display().to_string()),
    ] {
        assert_eq!(result(&m, o, &a), "ok", "{o} {a}: own resources must work");
    }
    for (o, a) in [
        ("read", b_img.display().to_string()),
        ("write", b_img.display().to_string()),
        ("readdir", "/root".into()),
        ("read", "/etc/shadow".into()),
    ] {
        assert_eq!(result(&m, o, &a), "err 13", "{o} {a} must be denied");
    }
    assert_eq!(
        result(&m, "signal", format!("{}:15", same_uid.pid())),
        "err 1"
    );
    assert_eq!(
        result(&m, "signal", format!("{}:15", root_proc.pid())),
        "err 1"
    );
    assert!(same_uid.alive() && root_proc.alive());

    // DAC alone: the same uid may signal its own uid's process; Landlock is what stops it.
    let m = run(
        hooks(&[&dac], &pa, &ga, &ctx),
        &[
            op("signal", format!("{}:0", same_uid.pid())),
            op("read", b_img.display()),
        ],
    );
    assert_eq!(result(&m, "signal", format!("{}:0", same_uid.pid())), "ok");
    assert_eq!(
        result(&m, "read", b_img.display()),
        "err 13",
        "DAC alone keeps b's image"
    );
    // Landlock alone (as root): b's image is still out of reach.
    let m = run(
        hooks(&[&ll], &pa, &ga, &ctx),
        &[op("read", b_img.display()), op("read", "/etc/shadow")],
    );
    assert_eq!(result(&m, "read", b_img.display()), "err 13");
    assert_eq!(result(&m, "read", "/etc/shadow"), "err 13");

    // The stack disabled: all of it works (so the confined run above can fail).
    std::fs::remove_file(&created).expect("rm");
    let m = run(Vec::new(), &ops);
    eprintln!("no stack: {m:#?}");
    for o in ops.iter().skip(1) {
        let (k, a) = o.split_once(':').expect("op");
        assert_eq!(result(&m, k, a), "ok", "{o} without the stack");
    }
    // SIGTERM went through: both sleepers are gone.
    let _ = same_uid.0.wait();
    let _ = root_proc.0.wait();

    assert!(dac.restore_all(&pa, &ga).is_empty());
    assert!(dac.restore_all(&pb, &gb).is_empty());
    assert_eq!(owner_mode(&a_img), (0, 0, 0o644));
    assert_eq!(owner_mode(&b_img), (0, 0, 0o644));
    assert_eq!(owner_mode(&iso), (0, 0, 0o600));
}

/// `mknod(path, S_IFCHR|mode, makedev(1, 3))`: a private copy of /dev/null to stand for
/// /dev/kvm (root:root 0600 here) without touching the host's node.
fn mknod_null(path: &Path, mode: u32) -> bool {
    // SAFETY: mknod with a NUL-terminated path.
    let r = unsafe {
        libc::mknod(
            cpath(path).as_ptr(),
            libc::S_IFCHR | mode,
            libc::makedev(1, 3),
        )
    };
    if r != 0 {
        svirt_testkit::skip(
            "mknod",
            format!(
                "mknod {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ),
        );
        return false;
    }
    chmod(path, mode);
    true
}

#[test]
fn dac_device_group_acl_grants_and_restores() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    traversable(dir.path());
    let acc = accounts(
        dir.path(),
        "root:x:0:0::/root:/bin/sh\n",
        "root:x:0:\nkvm:x:610993:\n",
    );
    let dac = dac_driver(&dir.path().join("state"), &acc, 610_000, 610_050, None);
    let ll = LandlockDriver::new(LandlockConfig::default());
    let kvm = dir.path().join("kvm");
    if !mknod_null(&kvm, 0o600) {
        return;
    }
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).expect("run");
    let before = owner_mode(&kvm);
    let acl_before = get_acl(&kvm);
    assert_eq!(acl_before, None);

    let p = plan("kvm-a", Vec::new());
    let p2 = plan("kvm-b", Vec::new());
    let mut g = guest("kvm-a");
    let mut g2 = guest("kvm-b");
    dac.reserve(&p, &mut g).expect("reserve");
    dac.reserve(&p2, &mut g2).expect("reserve");
    let mut ctx = exec_ctx(&run_dir);

    // Without the device in the exec context: no group, no ACL, the node cannot be opened.
    let m = run(
        hooks(&[&dac], &p, &g, &ctx),
        &[op("ids", ""), op("write", kvm.display())],
    );
    assert_eq!(result(&m, "write", kvm.display()), "err 13");

    ctx.devices = vec![kvm.clone()];
    let creds = dac.prepare_credentials(&p, &g, &ctx).expect("credentials");
    assert_eq!(creds.groups, vec![610_993]);
    assert!(get_acl(&kvm).is_some(), "ACL written");
    let mut all = hooks(&[&dac], &p, &g, &ctx);
    if kernel_abi() >= 6 {
        all.extend(hooks(&[&ll], &p, &g, &ctx));
    }
    let m = run(
        all,
        &[
            op("ids", ""),
            op("write", kvm.display()),
            op("read", kvm.display()),
        ],
    );
    eprintln!("with device: {m:#?}");
    assert!(
        m.get("ids").is_some_and(|s| s.contains("groups=610993 ")),
        "{m:?}"
    );
    assert_eq!(result(&m, "write", kvm.display()), "ok");
    assert_eq!(result(&m, "read", kvm.display()), "ok");

    // A second guest joins the grant; the first stopping keeps it.
    dac.child_hooks(&p2, &g2, &ctx).expect("second guest");
    assert!(dac.restore_all(&p, &g).is_empty());
    assert!(get_acl(&kvm).is_some(), "kvm-b still runs");
    let m = run(
        hooks(&[&dac], &p2, &g2, &ctx),
        &[op("write", kvm.display())],
    );
    assert_eq!(result(&m, "write", kvm.display()), "ok");
    assert!(dac.restore_all(&p2, &g2).is_empty());
    assert_eq!(
        get_acl(&kvm),
        None,
        "ACL removed when the last user stopped"
    );
    assert_eq!(owner_mode(&kvm), before, "mode exactly restored");
}
