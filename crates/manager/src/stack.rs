//! Choosing and building the driver stack.

use std::sync::Arc;

use svirt_domain::Model;
use svirt_drivers::SecurityDriver;
use svirt_drivers::dac::{DacConfig, DacDriver};
use svirt_drivers::landlock::{LandlockConfig, LandlockDriver};
use svirt_drivers::relabel::Relabeler;
use svirt_drivers::selinux::SelinuxDriver;
use svirt_hostfs::FsRoot;
use svirt_store::{AllocatorConfig, IdAllocator, IdConfig, LevelAllocator, Store};

use crate::config::{Config, DriverName, DriverSelection};
use crate::error::{ManagerError, Result};
use crate::types::DriverReport;

/// The chosen stack.
pub struct Stack {
    /// Drivers in order (set in this order, restored in reverse).
    pub drivers: Vec<Arc<dyn SecurityDriver>>,
    /// One line on why.
    pub why: String,
    /// Every driver considered.
    pub reports: Vec<DriverReport>,
    /// Drivers of models not stacked whose records remain in the state dir (SELinux's
    /// relabel records of an earlier configuration): they only recover.
    pub retired: Vec<Arc<dyn SecurityDriver>>,
    /// Why a retired driver could not be opened (reported by the open's recovery).
    pub retired_errors: Vec<String>,
}

fn selinux_enabled(config: &Config) -> (bool, String) {
    let fs = config.root_dir.join("sys/fs/selinux");
    match std::fs::read_to_string(fs.join("enforce")) {
        Ok(v) => (
            true,
            format!(
                "selinuxfs mounted at {}, {}",
                fs.display(),
                if v.trim() == "1" {
                    "enforcing"
                } else {
                    "permissive"
                }
            ),
        ),
        Err(_) => (
            false,
            format!("SELinux not enabled (no {})", fs.join("enforce").display()),
        ),
    }
}

/// The DAC driver on `store`, with the configured uid range.
fn dac_driver(
    config: &Config,
    store: &Arc<Store>,
    progress: &Arc<crate::progress::Board>,
) -> Result<Arc<DacDriver>> {
    let range = config.uid_range.unwrap_or_default();
    let ids = IdAllocator::open(
        store.clone(),
        IdConfig {
            first: range.first,
            last: range.last,
            root: config.root_dir.clone(),
        },
    )
    .map_err(|source| ManagerError::StoreFor {
        what: "uid allocator",
        source,
    })?
    // The start writes the guest record durably before the uid is used (the runtime dir
    // chown comes after it): one fsync fewer per start.
    .with_deferred_commits(true);
    let d = Arc::new(DacDriver::new(
        DacConfig {
            accounts_root: config.root_dir.clone(),
            fs_root: config.root_dir.clone(),
            ..DacConfig::default()
        },
        store.clone(),
        Arc::new(ids),
    ));
    d.set_progress(Some(progress.callback(Model::Dac)));
    Ok(d)
}

/// Builds the stack `config` asks for, probing each driver.
pub(crate) fn build(
    config: &Config,
    store: &Arc<Store>,
    progress: &Arc<crate::progress::Board>,
) -> Result<Stack> {
    let (se_on, se_reason) = selinux_enabled(config);
    let (wanted, why): (Vec<DriverName>, String) = match &config.drivers {
        DriverSelection::Explicit(list) => {
            // Checked and ordered here too: a configuration may come from a file, not
            // only from `--drivers`.
            let ordered = crate::config::stack_order(list)?;
            let names: Vec<&str> = ordered.iter().map(|d| d.as_str()).collect();
            (
                ordered
                    .iter()
                    .copied()
                    .filter(|d| *d != DriverName::None)
                    .collect(),
                format!("configured explicitly: {}", names.join(",")),
            )
        }
        DriverSelection::Auto if se_on => (
            vec![DriverName::Selinux, DriverName::Dac],
            format!("auto: {se_reason}: SELinux first, then DAC (per-guest uid)"),
        ),
        DriverSelection::Auto => (
            vec![DriverName::Dac, DriverName::Landlock],
            format!("auto: {se_reason}: DAC (per-guest uid) + Landlock"),
        ),
    };
    let mut drivers: Vec<Arc<dyn SecurityDriver>> = Vec::new();
    let mut reports = Vec::new();
    for name in &wanted {
        let d: Arc<dyn SecurityDriver> = match name {
            DriverName::Dac => dac_driver(config, store, progress)?,
            DriverName::Landlock => Arc::new(LandlockDriver::new(LandlockConfig::default())),
            DriverName::Selinux => {
                let alloc = LevelAllocator::open(store.clone(), level_config(config))
                    .map_err(|source| ManagerError::StoreFor {
                        what: "level allocator",
                        source,
                    })?
                    // As for uids: the guest record is durable before the level is used.
                    .with_deferred_commits(true);
                let root = FsRoot::open(&config.root_dir)
                    .map_err(|e| ManagerError::io("open root", &config.root_dir, e))?;
                // Two workers: tree relabels must not starve the host's other work.
                let relabeler = Relabeler::open(store.clone(), root, 2)
                    .map_err(|e| ManagerError::Config(format!("relabel engine: {e}")))?;
                relabeler.set_progress(Some(progress.callback(Model::Selinux)));
                Arc::new(SelinuxDriver::new(
                    config.root_dir.clone(),
                    relabeler,
                    Some(Arc::new(alloc)),
                ))
            }
            DriverName::None => continue,
        };
        let p = d.probe();
        if !p.usable {
            return Err(ManagerError::Config(format!(
                "driver {} is not usable on this host: {}",
                p.model, p.reason
            )));
        }
        reports.push(DriverReport {
            model: p.model,
            active: true,
            reason: p.reason,
        });
        drivers.push(d);
    }
    if !wanted.contains(&DriverName::Selinux) {
        reports.push(DriverReport {
            model: Model::Selinux,
            active: false,
            reason: se_reason,
        });
    }
    // SELinux not stacked, but what it recorded remains (an earlier configuration): the
    // relabel engine's records, or levels reserved in the ledger. A driver only for the
    // open's recovery, with the engine and a level allocator, so that both are put back
    // and released and nothing of them is kept for ever.
    let (mut retired, mut retired_errors): (Vec<Arc<dyn SecurityDriver>>, _) =
        (Vec::new(), Vec::new());
    let selinux_records = if wanted.contains(&DriverName::Selinux) {
        false
    } else {
        let relabel = Relabeler::has_records(store).unwrap_or_else(|e| {
            retired_errors.push(format!("relabel records not read: {e}"));
            false
        });
        let levels = store.level_reservations().map_or_else(
            |e| {
                retired_errors.push(format!("level reservations not read: {e}"));
                false
            },
            |l| !l.is_empty(),
        );
        relabel || levels
    };
    if selinux_records {
        let opened = FsRoot::open(&config.root_dir)
            .map_err(|e| e.to_string())
            .and_then(|root| Relabeler::open(store.clone(), root, 1).map_err(|e| e.to_string()))
            .and_then(|r| {
                // Every category: whatever range reserved them, they are released here.
                LevelAllocator::open(store.clone(), AllocatorConfig::default())
                    .map(|a| (r, a))
                    .map_err(|e| format!("level allocator: {e}"))
            });
        match opened {
            Ok((r, levels)) => retired.push(Arc::new(SelinuxDriver::new(
                config.root_dir.clone(),
                r,
                Some(Arc::new(levels)),
            ))),
            Err(e) => retired_errors.push(format!("SELinux records not swept: {e}")),
        }
    }
    // DAC not stacked, but the ledger holds what it recorded (uids, originals, trees of an
    // earlier configuration): a DAC driver only for the open's recovery.
    if !wanted.contains(&DriverName::Dac) {
        match DacDriver::has_records(store) {
            Ok(false) => {}
            Ok(true) => match dac_driver(config, store, progress) {
                Ok(d) => retired.push(d),
                Err(e) => retired_errors.push(format!("DAC records not swept: {e}")),
            },
            Err(e) => retired_errors.push(format!("DAC records not read: {e}")),
        }
    }
    Ok(Stack {
        drivers,
        why,
        reports,
        retired,
        retired_errors,
    })
}

/// The category pool: the configured range, else the manager's own context's range
/// (`s0-s0:c0.c1023`), else c0..c1023.
fn level_config(config: &Config) -> AllocatorConfig {
    if let Some(r) = config.category_range {
        return AllocatorConfig::with_categories(r.first, r.last);
    }
    let own = std::fs::read(config.root_dir.join("proc/self/attr/current")).ok();
    let range = own
        .as_deref()
        .map(|b| {
            String::from_utf8_lossy(b)
                .trim_end_matches(['\0', '\n'])
                .to_string()
        })
        .and_then(|s| s.parse::<svirt_labels::Context>().ok())
        .and_then(|c| c.range);
    match range {
        Some(r) => AllocatorConfig::from_range(&r),
        None => AllocatorConfig::with_categories(0, 1023),
    }
}
