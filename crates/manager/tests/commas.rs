//! File names with a comma reach QEMU as the file named, by every option that takes one.
//! QEMU 7.2 takes `-kernel`, `-initrd` and `-bios` whole (machine properties, no option
//! parsing): a doubled comma names another file (before the fix the guest did not start:
//! "could not open kernel file '…,,…'"). `-blockdev` (JSON) takes names as they are;
//! chardev and fsdev paths are option strings where a comma is doubled. Real QEMU.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Env, require_env};
use serde_json::json;
use svirt_manager::{Manager, StartOptions};

/// A minimal Linux boot-protocol 2.02 image (setup header only, "HdrS", loaded high):
/// enough for QEMU's x86 loader to accept it with an initrd. The guest stays paused.
fn tiny_kernel() -> Vec<u8> {
    let mut b = vec![0u8; 65536];
    b[0x1f1] = 4;
    b[0x1fe] = 0x55;
    b[0x1ff] = 0xaa;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x0202u16.to_le_bytes());
    b[0x211] = 1;
    b
}

#[test]
fn paths_with_commas_reach_qemu_as_named() {
    require_env!();
    let env = Env::new("commas");
    let dir = env.path("images/a,b");
    std::fs::create_dir(&dir).unwrap();
    let (kernel, initrd, bios, disk, serial) = (
        dir.join("k,1"),
        dir.join("i,2"),
        dir.join("bios,3"),
        dir.join("d,4.img"),
        dir.join("s,5.log"),
    );
    std::fs::write(&kernel, tiny_kernel()).unwrap();
    std::fs::write(&initrd, b"initrd").unwrap();
    std::fs::write(&bios, vec![0u8; 256 << 10]).unwrap();
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // Nothing exists under the doubled spellings: if QEMU starts, it opened the files named.
    assert!(!env.path("images/a,,b").exists());
    let (m, _) = Manager::open(env.config("none")).unwrap();
    let paused = StartOptions { paused: true };
    let dom = |name: &str, os: &str| {
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type>{os}</os><devices>\
             <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>\
             <serial type='file'><source path='{}'/><target port='0'/></serial>\
             </devices></domain>",
            disk.display(),
            serial.display()
        )
    };
    let k = dom(
        "k",
        &format!(
            "<kernel>{}</kernel><initrd>{}</initrd><cmdline>console=ttyS0,115200</cmdline>",
            kernel.display(),
            initrd.display()
        ),
    );
    let info = m
        .start(&k, paused)
        .unwrap_or_else(|e| panic!("kernel + initrd with commas: {e}"));
    let argv = &info.command_line;
    let after = |opt: &str| argv.iter().skip_while(|a| *a != opt).nth(1).cloned();
    assert_eq!(after("-kernel"), Some(kernel.display().to_string()));
    assert_eq!(after("-initrd"), Some(initrd.display().to_string()));
    assert_eq!(after("-append").as_deref(), Some("console=ttyS0,115200"));
    let st = m
        .qemu_monitor_command("k", json!({"execute": "query-status"}))
        .unwrap();
    assert_eq!(st["return"]["status"], "prelaunch", "{st}");
    // The disk (JSON -blockdev: the name as is) and the serial log (option string: doubled)
    // are open in QEMU under their real names.
    let pid = info.pid.unwrap();
    let open: Vec<std::path::PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert!(open.contains(&disk), "disk not open: {open:?}");
    assert!(open.contains(&serial), "serial log not open: {open:?}");
    m.destroy("k").unwrap();

    let b = dom(
        "b",
        &format!("<loader type='rom'>{}</loader>", bios.display()),
    );
    let info = m
        .start(&b, paused)
        .unwrap_or_else(|e| panic!("bios with commas: {e}"));
    let after = |opt: &str| {
        info.command_line
            .iter()
            .skip_while(|a| *a != opt)
            .nth(1)
            .cloned()
    };
    assert_eq!(after("-bios"), Some(bios.display().to_string()));
    m.destroy("b").unwrap();
    drop(m);
    env.assert_store_clean("commas");
}
