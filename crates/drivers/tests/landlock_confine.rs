//! Landlock driver against the real kernel: a helper process started under the prepared
//! ruleset, compared with the same helper started without it.

mod dac_support;

use std::net::TcpListener;

use dac_support::*;
use svirt_drivers::landlock::{LandlockConfig, LandlockDriver, kernel_abi};
use svirt_drivers::{DriverError, GuestSecurity, SecurityDriver};

fn skip_without_landlock(min: u32) -> bool {
    let abi = kernel_abi();
    if abi < min {
        svirt_testkit::skip(
            &format!("landlock-abi-{min}"),
            format!("kernel Landlock ABI {abi} < {min} needed by this test"),
        );
        return true;
    }
    false
}

struct Fixture {
    _dir: tempfile::TempDir,
    own_img: std::path::PathBuf,
    own_ro: std::path::PathBuf,
    other_img: std::path::PathBuf,
    run: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let own = dir.path().join("a");
    let other = dir.path().join("b");
    let run = dir.path().join("run-a");
    for d in [&own, &other, &run] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let own_img = own.join("disk.img");
    let own_ro = own.join("cd.iso");
    let other_img = other.join("disk.img");
    for f in [&own_img, &own_ro, &other_img] {
        std::fs::write(f, b"image").expect("write");
    }
    Fixture {
        _dir: dir,
        own_img,
        own_ro,
        other_img,
        run,
    }
}

#[test]
fn landlock_confines_files_signals_and_tcp() {
    if skip_without_landlock(6) {
        return;
    }
    let f = fixture();
    let plan = plan("ll-a", vec![disk(&f.own_img), cdrom(&f.own_ro)]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let mut sleeper = Sleeper::start(None);
    let created = f.run.join("qmp.sock");
    let ops = vec![
        op("read", f.own_img.display()),
        op("write", f.own_img.display()),
        op("read", f.own_ro.display()),
        op("write", f.own_ro.display()),
        op("read", f.other_img.display()),
        op("read", "/etc/shadow"),
        op("readdir", "/root"),
        op("read", "/dev/null"),
        op("create", created.display()),
        op("tcp", port),
        op("signal", format!("{}:0", sleeper.pid())),
    ];
    let driver = LandlockDriver::new(LandlockConfig::default());
    let guest = GuestSecurity {
        name: "ll-a".into(),
        level: None,
        ids: None,
    };
    let hooks = driver
        .child_hooks(&plan, &guest, &exec_ctx(&f.run))
        .expect("hooks");
    let m = run(hooks, &ops);
    eprintln!("confined: {m:#?}");
    assert_eq!(result(&m, "read", f.own_img.display()), "ok");
    assert_eq!(result(&m, "write", f.own_img.display()), "ok");
    assert_eq!(result(&m, "read", f.own_ro.display()), "ok");
    assert_eq!(result(&m, "write", f.own_ro.display()), "err 13");
    assert_eq!(result(&m, "read", f.other_img.display()), "err 13");
    assert_eq!(result(&m, "read", "/etc/shadow"), "err 13");
    assert_eq!(result(&m, "readdir", "/root"), "err 13");
    assert_eq!(result(&m, "read", "/dev/null"), "ok");
    assert_eq!(result(&m, "create", created.display()), "ok");
    assert_eq!(result(&m, "tcp", port), "err 13");
    assert_eq!(
        result(&m, "signal", format!("{}:0", sleeper.pid())),
        "err 1"
    );
    assert!(sleeper.alive());

    // The listed TCP port is allowed.
    let mut ctx = exec_ctx(&f.run);
    ctx.tcp_ports = vec![port];
    let hooks = driver.child_hooks(&plan, &guest, &ctx).expect("hooks");
    let m = run(hooks, &[op("tcp", port)]);
    assert_eq!(result(&m, "tcp", port), "ok");

    // Control: the same helper without the ruleset can do all of it (we are root).
    std::fs::remove_file(&created).expect("rm");
    let m = run(Vec::new(), &ops);
    eprintln!("unconfined: {m:#?}");
    for o in &ops {
        let (k, a) = o.split_once(':').expect("op");
        assert_eq!(result(&m, k, a), "ok", "{o} unconfined");
    }
    drop(listener);
}

#[test]
fn landlock_refuses_a_kernel_below_the_minimum_abi() {
    let f = fixture();
    let plan = plan("ll-min", vec![disk(&f.own_img)]);
    let driver = LandlockDriver::new(LandlockConfig {
        min_abi: 99,
        ..LandlockConfig::default()
    });
    let mut guest = GuestSecurity {
        name: "ll-min".into(),
        level: None,
        ids: None,
    };
    let e = driver
        .reserve(&plan, &mut guest)
        .expect_err("ABI 99 must refuse the guest");
    assert!(matches!(e, DriverError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("99"), "{e}");
    let e = driver
        .child_hooks(&plan, &guest, &exec_ctx(&f.run))
        .err()
        .expect("no hooks below the minimum");
    assert!(matches!(e, DriverError::Unavailable { .. }), "{e}");
    assert!(!driver.probe().usable);

    // Best effort, explicitly configured: the guest starts with what the kernel offers.
    let driver = LandlockDriver::new(LandlockConfig {
        min_abi: 99,
        best_effort: true,
        ..LandlockConfig::default()
    });
    driver
        .reserve(&plan, &mut guest)
        .expect("best effort accepts");
    let p = driver.prepare(&plan, &exec_ctx(&f.run)).expect("prepare");
    assert_eq!(p.abi(), kernel_abi().min(9));
}

#[test]
fn landlock_probe_reports_the_kernel_abi() {
    let driver = LandlockDriver::new(LandlockConfig::default());
    let r = driver.probe();
    eprintln!("probe: {r:?}");
    let abi = kernel_abi();
    assert!(r.reason.contains(&format!("ABI {abi}")), "{}", r.reason);
    assert_eq!(r.usable, abi >= 6);
}

#[test]
fn landlock_refuses_a_symlinked_resource() {
    if skip_without_landlock(1) {
        return;
    }
    let f = fixture();
    let link = f.run.join("evil.img");
    std::os::unix::fs::symlink("/etc/shadow", &link).expect("symlink");
    let plan = plan("ll-link", vec![disk(&link)]);
    let driver = LandlockDriver::new(LandlockConfig::default());
    let e = driver
        .prepare(&plan, &exec_ctx(&f.run))
        .expect_err("symlink refused");
    assert!(e.to_string().contains("evil.img"), "{e}");
}
