//! The stack on real files: a driver failing after SELinux labeled everything rolls SELinux
//! back; restore runs every driver and reports every error; hooks run in stack order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod selinux_support;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use selinux_support::*;
use svirt_domain::*;
use svirt_drivers::selinux::SelinuxDriver;
use svirt_drivers::stack::Stack;
use svirt_drivers::{
    ChildHook, DriverError, ExecContext, GuestSecurity, ProbeReport, SecurityDriver,
};
use svirt_labels::{Context, MlsRange};

/// A test driver under another model: fails `set_all` (or `restore_all`) on demand and
/// writes a marker file from its child hook, to observe ordering.
struct Failing {
    model: Model,
    fail_set: bool,
    fail_restore: bool,
    log: Arc<Mutex<Vec<String>>>,
    marker: PathBuf,
}

impl SecurityDriver for Failing {
    fn model(&self) -> Model {
        self.model
    }
    fn probe(&self) -> ProbeReport {
        ProbeReport {
            model: self.model,
            usable: true,
            reason: "test".into(),
        }
    }
    fn reserve(&self, _: &Plan, _: &mut GuestSecurity) -> Result<(), DriverError> {
        Ok(())
    }
    fn release(&self, _: &GuestSecurity) -> Result<(), DriverError> {
        Ok(())
    }
    fn set_all(&self, _: &Plan, _: &GuestSecurity) -> Result<(), DriverError> {
        self.log.lock().unwrap().push(format!("set {}", self.model));
        if self.fail_set {
            return Err(DriverError::Other {
                model: self.model,
                message: "injected set failure".into(),
            });
        }
        Ok(())
    }
    fn restore_all(&self, _: &Plan, _: &GuestSecurity) -> Vec<DriverError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("restore {}", self.model));
        if self.fail_restore {
            return vec![DriverError::Other {
                model: self.model,
                message: "injected restore failure".into(),
            }];
        }
        Vec::new()
    }
    fn child_hooks(
        &self,
        _: &Plan,
        _: &GuestSecurity,
        _: &ExecContext,
    ) -> Result<Vec<ChildHook>, DriverError> {
        // Appends one byte naming the model to the marker file, in the child.
        let path = std::ffi::CString::new(self.marker.as_os_str().as_encoded_bytes()).unwrap();
        let byte = [self.model.as_str().as_bytes()[0]];
        Ok(vec![Box::new(move || {
            // SAFETY: open/write/close only.
            unsafe {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC,
                );
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::write(fd, byte.as_ptr().cast(), 1);
                libc::close(fd);
            }
            Ok(())
        })])
    }
    fn process_label(&self, _: i32) -> Result<Option<String>, DriverError> {
        Ok(None)
    }
}

fn planned(path: PathBuf, label: &str, restore: bool) -> PlannedResource {
    PlannedResource {
        resource: Resource {
            path,
            kind: ResourceKind::DiskImage,
            access: Access::Rw,
            sharing: Sharing::Private,
            recursive: false,
            device: "disk".into(),
            overrides: Default::default(),
            identity: None,
        },
        selinux: Some(LabelTemplate::from_context(&Context::parse(label).unwrap())),
        selinux_reason: "test".into(),
        selinux_restore: restore,
        dac: DacAction::Untouched,
        path_access: Access::Rw,
    }
}

fn plan_for(dir: &std::path::Path) -> Plan {
    let mut tree = planned(
        dir.join("share"),
        "system_u:object_r:svirt_image_t:s0:c1,c2",
        true,
    );
    tree.resource.recursive = true;
    tree.resource.kind = ResourceKind::FilesystemTree;
    Plan {
        name: "g".into(),
        uuid: "00000000-0000-4000-8000-000000000000".into(),
        models: vec![Model::Selinux, Model::Dac, Model::Landlock],
        selinux_process: ProcessLabel::Label(LabelTemplate::from_context(
            &Context::parse("system_u:system_r:svirt_t:s0:c1,c2").unwrap(),
        )),
        level: LevelSource::Static(MlsRange::parse("s0:c1,c2").unwrap()),
        selinux_relabel: true,
        dac_enabled: true,
        dac_ids: None,
        unconfined: vec![],
        disk_chains: vec![],
        resources: vec![
            planned(
                dir.join("a.raw"),
                "system_u:object_r:svirt_image_t:s0:c1,c2",
                true,
            ),
            planned(
                dir.join("iso"),
                "system_u:object_r:virt_content_t:s0",
                false,
            ),
            tree,
        ],
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: tempfile::TempDir,
    env: Env,
    objects: Vec<PathBuf>,
    dir: PathBuf,
}

fn setup() -> Option<Setup> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    if !xattrs_work(&dir) {
        return None;
    }
    let mut objects = vec![dir.join("a.raw"), dir.join("iso"), dir.join("share")];
    std::fs::write(&objects[0], b"a").unwrap();
    std::fs::write(&objects[1], b"i").unwrap();
    std::fs::create_dir(&objects[2]).unwrap();
    for i in 0..50 {
        let p = dir.join(format!("share/f{i}"));
        std::fs::write(&p, b"f").unwrap();
        objects.push(p);
    }
    for o in &objects {
        set_label(o, INITIAL);
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("proc/thread-self/attr")).unwrap();
    std::fs::write(root.path().join("proc/thread-self/attr/exec"), b"").unwrap();
    Some(Setup {
        _tmp: tmp,
        root,
        env: env(),
        objects,
        dir,
    })
}

#[test]
fn failing_later_driver_rolls_back_selinux() {
    let Some(s) = setup() else { return };
    let before: Vec<State> = s.objects.iter().map(|p| state(p)).collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let selinux = Arc::new(SelinuxDriver::new(
        s.root.path(),
        s.env.relabeler.clone(),
        None,
    ));
    let failing = Arc::new(Failing {
        model: Model::Dac,
        fail_set: true,
        fail_restore: false,
        log: log.clone(),
        marker: s.dir.join("marker"),
    });
    // Given in the wrong order on purpose: the stack sorts (SELinux first).
    let stack = Stack::new(vec![failing, selinux]);
    assert_eq!(stack.drivers()[0].model(), Model::Selinux);
    let plan = plan_for(&s.dir);
    let mut guest = GuestSecurity {
        name: "g".into(),
        level: None,
        ids: None,
    };
    stack.reserve(&plan, &mut guest).unwrap();
    assert_eq!(
        guest.level.map(|l| l.to_string()).as_deref(),
        Some("s0:c1,c2")
    );
    let err = stack.set_all(&plan, &guest).unwrap_err();
    assert!(err.to_string().contains("injected set failure"), "{err}");
    assert!(err.rollback.is_empty(), "{err}");
    let after: Vec<State> = s.objects.iter().map(|p| state(p)).collect();
    assert_eq!(
        after, before,
        "SELinux labels left behind after the DAC driver failed"
    );
    assert!(s.env.store.list_originals().unwrap().is_empty());
}

#[test]
fn restore_runs_every_driver_and_reports_every_error() {
    let Some(s) = setup() else { return };
    let before: Vec<State> = s.objects.iter().map(|p| state(p)).collect();
    let log = Arc::new(Mutex::new(Vec::new()));
    let marker = s.dir.join("marker");
    std::fs::write(&marker, b"").unwrap();
    let mk = |model, fail_restore| {
        Arc::new(Failing {
            model,
            fail_set: false,
            fail_restore,
            log: log.clone(),
            marker: marker.clone(),
        }) as Arc<dyn SecurityDriver>
    };
    let selinux = Arc::new(SelinuxDriver::new(
        s.root.path(),
        s.env.relabeler.clone(),
        None,
    ));
    let stack = Stack::new(vec![
        mk(Model::Landlock, true),
        mk(Model::Dac, true),
        selinux,
    ]);
    let plan = plan_for(&s.dir);
    let mut guest = GuestSecurity {
        name: "g".into(),
        level: None,
        ids: None,
    };
    stack.reserve(&plan, &mut guest).unwrap();
    stack.set_all(&plan, &guest).unwrap();
    assert_eq!(
        label(&s.objects[0]).as_deref(),
        Some("system_u:object_r:svirt_image_t:s0:c1,c2")
    );

    // Hooks in stack order, in a real child: SELinux exec label, then DAC, then Landlock.
    let exec = ExecContext {
        emulator: "/bin/true".into(),
        runtime_dir: s.dir.clone(),
        devices: vec![],
        tcp_ports: vec![],
        inherited: vec![],
        procfs: None,
    };
    let mut hooks = stack.child_hooks(&plan, &guest, &exec).unwrap();
    assert_eq!(hooks.len(), 3);
    let mut cmd = std::process::Command::new("/bin/true");
    // SAFETY: hooks only make system calls.
    unsafe {
        cmd.pre_exec(move || {
            for h in hooks.iter_mut() {
                h()?;
            }
            Ok(())
        });
    }
    assert!(cmd.status().unwrap().success());
    assert_eq!(
        std::fs::read(&marker).unwrap(),
        b"dl",
        "DAC hook before Landlock hook"
    );
    assert_eq!(
        std::fs::read(s.root.path().join("proc/thread-self/attr/exec")).unwrap(),
        b"system_u:system_r:svirt_t:s0:c1,c2\0"
    );

    let errs = stack.restore_all(&plan, &guest);
    assert_eq!(errs.len(), 2, "{errs:?}");
    let after: Vec<State> = s.objects.iter().map(|p| state(p)).collect();
    assert_eq!(
        after, before,
        "SELinux must restore although other drivers failed"
    );
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        ["set dac", "set landlock", "restore landlock", "restore dac"]
    );
}
