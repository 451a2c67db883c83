//! Choosing and building the driver stack.

use std::sync::Arc;

use svirt_domain::Model;
use svirt_drivers::SecurityDriver;
use svirt_drivers::dac::{DacConfig, DacDriver};
use svirt_drivers::landlock::{LandlockConfig, LandlockDriver};
use svirt_store::{IdAllocator, IdConfig, Store};

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
}

fn selinux_enabled(config: &Config) -> (bool, String) {
    let fs = config.root_dir.join("sys/fs/selinux");
    match std::fs::read_to_string(fs.join("enforce")) {
        Ok(v) => (
            true,
            format!(
                "selinuxfs mounted at {}, {}",
                fs.display(),
                if v.trim() == "1" { "enforcing" } else { "permissive" }
            ),
        ),
        Err(_) => (false, format!("SELinux not enabled (no {})", fs.join("enforce").display())),
    }
}

/// Builds the stack `config` asks for, probing each driver.
pub fn build(config: &Config, store: &Arc<Store>) -> Result<Stack> {
    let (se_on, se_reason) = selinux_enabled(config);
    let (wanted, why): (Vec<DriverName>, String) = match &config.drivers {
        DriverSelection::Explicit(list) => {
            let names: Vec<&str> = list
                .iter()
                .map(|d| match d {
                    DriverName::Selinux => "selinux",
                    DriverName::Dac => "dac",
                    DriverName::Landlock => "landlock",
                    DriverName::None => "none",
                })
                .collect();
            (
                list.iter().copied().filter(|d| *d != DriverName::None).collect(),
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
            DriverName::Dac => {
                let range = config.uid_range.unwrap_or_default();
                let ids = IdAllocator::open(
                    store.clone(),
                    IdConfig {
                        first: range.first,
                        last: range.last,
                        root: config.root_dir.clone(),
                    },
                )
                .map_err(|e| ManagerError::Store(format!("uid allocator: {e}")))?;
                Arc::new(DacDriver::new(
                    DacConfig {
                        accounts_root: config.root_dir.clone(),
                        fs_root: config.root_dir.clone(),
                        ..DacConfig::default()
                    },
                    store.clone(),
                    Arc::new(ids),
                ))
            }
            DriverName::Landlock => Arc::new(LandlockDriver::new(LandlockConfig::default())),
            DriverName::Selinux => {
                return Err(ManagerError::Config(
                    "the SELinux driver is not available in this build".into(),
                ));
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
    Ok(Stack {
        drivers,
        why,
        reports,
    })
}
