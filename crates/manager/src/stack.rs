//! Choosing and building the driver stack, from the drivers' registrations
//! ([`svirt_drivers::registry`]): no driver is named here.

use std::sync::Arc;

use svirt_drivers::SecurityDriver;
use svirt_drivers::registry::{self, OpenContext, Registration};
use svirt_store::Store;

use crate::config::{Config, DriverSelection};
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
    /// Drivers of models not stacked whose records remain in the ledger (an earlier
    /// configuration's): they only recover.
    pub retired: Vec<Arc<dyn SecurityDriver>>,
    /// Why a retired driver could not be opened (reported by the open's recovery).
    pub retired_errors: Vec<String>,
}

/// Builds the stack `config` asks for, probing each driver.
pub(crate) fn build(
    config: &Config,
    store: &Arc<Store>,
    progress: &Arc<crate::progress::Board>,
) -> Result<Stack> {
    let board = progress.clone();
    let callback = move |model| board.callback(model);
    let ctx = OpenContext {
        root_dir: &config.root_dir,
        state_dir: &config.state_dir,
        run_dir: &config.run_dir,
        store,
        settings: &config.driver_settings,
        progress: &callback,
    };
    let (auto_chosen, auto_why, probed) = registry::auto(&config.root_dir);
    let (wanted, why): (Vec<&'static Registration>, String) = match &config.drivers {
        DriverSelection::Explicit(list) => {
            // Checked and ordered here too: a configuration may come from a file, not
            // only from `--drivers`.
            let ordered = registry::order(list).map_err(ManagerError::Config)?;
            let names: Vec<&str> = if ordered.is_empty() {
                vec![registry::NONE]
            } else {
                ordered.iter().map(|r| r.name).collect()
            };
            (
                ordered,
                format!("configured explicitly: {}", names.join(",")),
            )
        }
        DriverSelection::Auto => (auto_chosen, auto_why),
    };
    let mut drivers: Vec<Arc<dyn SecurityDriver>> = Vec::new();
    let mut reports = Vec::new();
    for r in &wanted {
        let d =
            (r.open)(&ctx).map_err(|e| ManagerError::Config(format!("driver {}: {e}", r.name)))?;
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
    // The MAC models not stacked, with what their probe said.
    for (model, reason) in probed {
        if !wanted.iter().any(|r| r.model == model) {
            reports.push(DriverReport {
                model,
                active: false,
                reason,
            });
        }
    }
    // A model not stacked whose records remain in the ledger (an earlier configuration):
    // a driver only for the open's recovery, so that they are put back and released,
    // not kept for ever.
    let (mut retired, mut retired_errors) = (Vec::new(), Vec::new());
    for r in registry::all() {
        if wanted.iter().any(|w| w.model == r.model) {
            continue;
        }
        match (r.has_records)(store) {
            Ok(false) => {}
            Ok(true) => match (r.open_retired)(&ctx) {
                Ok(d) => retired.push(d),
                Err(e) => retired_errors.push(format!("{} records not swept: {e}", r.name)),
            },
            Err(e) => retired_errors.push(format!("{} records not read: {e}", r.name)),
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
