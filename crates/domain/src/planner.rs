//! Resources → a [`Plan`]: what every model does to every resource, and why.
//!
//! The SELinux part follows the reference table (see `docs/domain-plan.md`), with the
//! base contexts read from the policy's context files when the host has them.

use std::path::{Path, PathBuf};

use svirt_labels::{Context, Identifier, MlsRange};

use crate::domain::{Domain, SecLabelType, VirtType};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::model::*;
use crate::resources::Resources;

/// Base contexts of the SELinux model, from the policy's context files or the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelinuxContexts {
    /// Process base (`system_u:system_r:svirt_t:s0`): `virtual_domain_context` line 1.
    pub process: Context,
    /// Process type for emulated (TCG) guests: `virtual_domain_context` line 2.
    pub tcg_type: Option<Identifier>,
    /// Image base (`system_u:object_r:svirt_image_t:s0`): `virtual_image_context` line 1.
    pub image: Context,
    /// Read-only content (`system_u:object_r:virt_content_t:s0`): line 2.
    pub content: Context,
    /// The files they came from (empty for the defaults).
    pub sources: Vec<PathBuf>,
}

fn ctx(s: &str) -> Context {
    // The literals below are valid contexts; a failure is a bug caught by the tests.
    Context::parse(s).unwrap_or_else(|e| panic!("built-in context {s}: {e}"))
}

impl Default for SelinuxContexts {
    fn default() -> Self {
        SelinuxContexts {
            process: ctx("system_u:system_r:svirt_t:s0"),
            tcg_type: None,
            image: ctx("system_u:object_r:svirt_image_t:s0"),
            content: ctx("system_u:object_r:virt_content_t:s0"),
            sources: Vec::new(),
        }
    }
}

impl SelinuxContexts {
    /// Reads `<root>/etc/selinux/config` (`SELINUXTYPE=`) and then
    /// `<root>/etc/selinux/<type>/contexts/virtual_domain_context` and
    /// `virtual_image_context`. Missing files fall back to the defaults, file by file;
    /// a file that exists but does not parse is an error naming it.
    pub fn load(root: &Path) -> Result<SelinuxContexts> {
        let mut out = SelinuxContexts::default();
        let config = root.join("etc/selinux/config");
        let Some(text) = read_optional(&config)? else {
            return Ok(out);
        };
        let Some(ty) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("SELINUXTYPE="))
            .map(|t| t.trim().to_string())
        else {
            return Ok(out);
        };
        if ty.is_empty() || ty.contains('/') || ty.starts_with('.') {
            return Err(Error::PolicyConfig {
                path: config,
                message: format!("invalid SELINUXTYPE '{ty}'"),
            });
        }
        let dir = root.join("etc/selinux").join(&ty).join("contexts");
        let dom = dir.join("virtual_domain_context");
        if let Some(text) = read_optional(&dom)? {
            let mut lines = significant_lines(&text);
            let first = lines.next().ok_or_else(|| Error::PolicyConfig {
                path: dom.clone(),
                message: "empty".into(),
            })?;
            out.process = parse_ctx(&dom, first, None)?;
            if let Some(second) = lines.next() {
                // Fedora writes a full context; only its type is used.
                let t = match Context::parse(second) {
                    Ok(c) => c.type_,
                    Err(_) => Identifier::new(second).map_err(|e| Error::PolicyConfig {
                        path: dom.clone(),
                        message: format!("line 2 '{second}': {e}"),
                    })?,
                };
                out.tcg_type = Some(t);
            }
            out.sources.push(dom);
        }
        let img = dir.join("virtual_image_context");
        if let Some(text) = read_optional(&img)? {
            let mut lines = significant_lines(&text);
            let first = lines.next().ok_or_else(|| Error::PolicyConfig {
                path: img.clone(),
                message: "empty".into(),
            })?;
            out.image = parse_ctx(&img, first, Some(&out.image))?;
            if let Some(second) = lines.next() {
                out.content = parse_ctx(&img, second, Some(&out.content))?;
            }
            out.sources.push(img);
        }
        Ok(out)
    }
}

fn read_optional(p: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::PolicyConfig {
            path: p.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

fn significant_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// A full context, or `type:level` (the short form) completed with `base`'s user and role.
fn parse_ctx(path: &Path, line: &str, base: Option<&Context>) -> Result<Context> {
    let bad = |e: String| Error::PolicyConfig {
        path: path.to_path_buf(),
        message: format!("'{line}': {e}"),
    };
    match Context::parse(line) {
        Ok(c) => Ok(c),
        Err(full_err) => match (base, line.split_once(':')) {
            (Some(b), Some((t, lvl))) => {
                let type_ = Identifier::new(t).map_err(|e| bad(e.to_string()))?;
                let range = MlsRange::parse(lvl).map_err(|e| bad(e.to_string()))?;
                Ok(Context {
                    user: b.user.clone(),
                    role: b.role.clone(),
                    type_,
                    range: Some(range),
                })
            }
            _ => Err(bad(full_err.to_string())),
        },
    }
}

/// What the planner needs besides the domain and its resources.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// Models the host configuration names (default: selinux, dac, landlock). Models a
    /// domain `<seclabel>` names are planned too.
    pub models: Vec<Model>,
    /// SELinux base contexts.
    pub contexts: SelinuxContexts,
    /// The manager's own context: user and role of generated process labels, and the
    /// user of object labels. `None`: those of the base contexts.
    pub manager_context: Option<Context>,
    /// Where `etc/passwd` and `etc/group` are, to resolve DAC labels given by name.
    pub root: PathBuf,
    /// DAC: show a private filesystem share to the guest's uid through an idmapped mount
    /// in the VMM's jail ([`DacAction::IdmapGuest`]) instead of a chown of every entry.
    /// The manager sets it where the VMM gets its own mount namespace.
    pub idmap_trees: bool,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            models: vec![Model::Selinux, Model::Dac, Model::Landlock],
            contexts: SelinuxContexts::default(),
            manager_context: None,
            root: PathBuf::from("/"),
            idmap_trees: false,
        }
    }
}

impl PlanConfig {
    /// The defaults, with the SELinux contexts and DAC names read under the host's root.
    pub fn for_host(host: &Host) -> Result<PlanConfig> {
        Ok(PlanConfig {
            contexts: SelinuxContexts::load(host.root())?,
            root: host.root().to_path_buf(),
            ..PlanConfig::default()
        })
    }
}

/// Plans every resource for every model (the resources' warnings are the caller's to
/// report).
pub fn plan(domain: &Domain, resources: Resources, cfg: &PlanConfig) -> Result<Plan> {
    let Resources {
        resources,
        disk_chains,
        warnings: _,
    } = resources;
    let mut models: Vec<Model> = cfg.models.clone();
    for s in &domain.seclabels {
        if !models.contains(&s.model) {
            models.push(s.model);
        }
    }
    models.sort();
    models.dedup();
    // A per-device seclabel for a model that is not planned cannot be honoured.
    for r in &resources {
        for m in r.overrides.keys() {
            if !models.contains(m) {
                return Err(Error::UnknownModel {
                    at: r.device.clone(),
                    model: m.to_string(),
                    why: "not loaded",
                });
            }
        }
    }
    let mut unconfined: Vec<Model> = domain
        .seclabels
        .iter()
        .filter(|s| s.sec_type == SecLabelType::None && models.contains(&s.model))
        .map(|s| s.model)
        .collect();

    // SELinux's labels are planned for every model that labels by MCS level: the BPF-LSM
    // enforcer decides with the same levels SELinux would set.
    let se = selinux_part(domain, cfg, Model::MCS.iter().any(|m| models.contains(m)))?;
    if models.contains(&Model::Selinux)
        && se.process == ProcessLabel::Unconfined
        && !unconfined.contains(&Model::Selinux)
    {
        unconfined.push(Model::Selinux);
    }
    let dac = dac_part(domain, cfg, models.contains(&Model::Dac))?;

    let mut planned = Vec::with_capacity(resources.len());
    for r in resources {
        let (selinux, selinux_reason, selinux_restore) = se.label_for(&r)?;
        let dac_action = dac.action_for(&r, &cfg.root)?;
        let path_access = r.access;
        planned.push(PlannedResource {
            resource: r,
            selinux,
            selinux_reason,
            selinux_restore,
            dac: dac_action,
            path_access,
        });
    }
    Ok(Plan {
        name: domain.name.clone(),
        uuid: domain.uuid.to_string(),
        models,
        selinux_process: se.process,
        level: se.level,
        selinux_relabel: se.relabel,
        dac_enabled: dac.enabled,
        resources: planned,
        dac_ids: dac.ids,
        unconfined,
        disk_chains,
    })
}

struct SelinuxPart {
    planned: bool,
    process: ProcessLabel,
    level: LevelSource,
    relabel: bool,
    /// Why nothing is relabeled, when `relabel` is false.
    off_reason: &'static str,
    image: Option<LabelTemplate>,
    shared: LabelTemplate,
    content: LabelTemplate,
}

fn template(c: &Context, level: LevelSpec) -> LabelTemplate {
    LabelTemplate {
        user: c.user.clone(),
        role: c.role.clone(),
        type_: c.type_.clone(),
        level,
    }
}

fn fixed(c: &Context) -> LabelTemplate {
    let s0 = MlsRange::single(svirt_labels::Level::new(0));
    template(c, LevelSpec::Fixed(c.range.unwrap_or(s0)))
}

fn selinux_part(domain: &Domain, cfg: &PlanConfig, planned: bool) -> Result<SelinuxPart> {
    let c = &cfg.contexts;
    let mut image_base = c.image.clone();
    if let Some(m) = &cfg.manager_context {
        image_base.user = m.user.clone();
    }
    let mut part = SelinuxPart {
        planned,
        process: ProcessLabel::Unconfined,
        level: LevelSource::None,
        relabel: false,
        off_reason: "selinux is not planned",
        image: None,
        shared: fixed(&image_base),
        content: fixed(&c.content),
    };
    if !planned {
        return Ok(part);
    }
    let sl = domain.seclabel(Model::Selinux);
    let at = "/domain/seclabel[@model='selinux']";
    let sec_type = sl.map_or(SecLabelType::Dynamic, |s| s.sec_type);
    match sec_type {
        SecLabelType::None => {
            part.off_reason = "domain seclabel type='none': unconfined, nothing relabeled";
        }
        SecLabelType::Dynamic => {
            let mut base = c.process.clone();
            if domain.virt_type == VirtType::Qemu
                && let Some(t) = &c.tcg_type
            {
                base.type_ = t.clone();
            }
            if let Some(m) = &cfg.manager_context {
                base.user = m.user.clone();
                base.role = m.role.clone();
            }
            if let Some(b) = sl.and_then(|s| s.baselabel.as_deref()) {
                let b = Context::parse(b).map_err(|e| Error::Seclabel {
                    at: format!("{at}/baselabel"),
                    message: format!("invalid baselabel '{b}': {e}"),
                })?;
                base.user = b.user;
                base.role = b.role;
                base.type_ = b.type_;
            }
            part.process = ProcessLabel::Label(template(&base, LevelSpec::Guest));
            part.level = LevelSource::Dynamic;
            part.relabel = true;
            part.image = Some(template(&image_base, LevelSpec::Guest));
        }
        SecLabelType::Static => {
            let text = sl.and_then(|s| s.label.as_deref()).unwrap_or_default();
            let label = Context::parse(text).map_err(|e| Error::Seclabel {
                at: format!("{at}/label"),
                message: format!("invalid label '{text}': {e}"),
            })?;
            let Some(range) = label.range else {
                return Err(Error::Seclabel {
                    at: format!("{at}/label"),
                    message: format!("static label '{text}' has no level"),
                });
            };
            part.process = ProcessLabel::Label(LabelTemplate::from_context(&label));
            part.level = LevelSource::Static(range);
            part.relabel = sl.is_some_and(|s| s.relabel);
            part.off_reason = "domain seclabel type='static' relabel='no': nothing relabeled";
            part.image = Some(template(&image_base, LevelSpec::Fixed(range)));
        }
    }
    Ok(part)
}

impl SelinuxPart {
    fn label_for(&self, r: &Resource) -> Result<(Option<LabelTemplate>, String, bool)> {
        if !self.planned {
            return Ok((None, self.off_reason.into(), false));
        }
        match r.overrides.get(&Model::Selinux) {
            Some(DeviceOverride::NoRelabel) => {
                return Ok((
                    None,
                    "per-device seclabel relabel='no': left untouched".into(),
                    false,
                ));
            }
            Some(DeviceOverride::Label(l)) if self.relabel => {
                let c = Context::parse(l).map_err(|e| Error::Seclabel {
                    at: r.device.clone(),
                    message: format!("invalid per-device label '{l}': {e}"),
                })?;
                return Ok((
                    Some(LabelTemplate::from_context(&c)),
                    "per-device seclabel <label> wins".into(),
                    true,
                ));
            }
            _ => {}
        }
        let (Some(image), true) = (&self.image, self.relabel) else {
            return Ok((None, self.off_reason.into(), false));
        };
        let (label, reason, restore): (Option<LabelTemplate>, &str, bool) =
            match (r.kind, r.sharing) {
                (ResourceKind::Loader, _) => {
                    (None, "loader (firmware code) is never labeled", false)
                }
                (ResourceKind::Kernel | ResourceKind::Initrd | ResourceKind::Dtb, _) => (
                    Some(self.content.clone()),
                    "kernel/initrd/dtb: read-only content label, restored at stop",
                    true,
                ),
                (ResourceKind::BackingImage, Sharing::ReadOnlyContent) => (
                    Some(self.content.clone()),
                    "backing image below the top: read-only content label",
                    false,
                ),
                (_, Sharing::Shared) => (
                    Some(self.shared.clone()),
                    "<shareable/>: image type without categories, never restored",
                    false,
                ),
                (_, Sharing::ReadOnlyContent) => (
                    Some(self.content.clone()),
                    "read-only (<readonly/>, CD-ROM): content label, never restored",
                    false,
                ),
                (kind, Sharing::Private) => (Some(image.clone()), private_reason(kind), true),
            };
        Ok((label, reason.into(), restore))
    }
}

fn private_reason(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Nvram => "nvram (UEFI VARS): the guest's image label",
        ResourceKind::FilesystemTree => "filesystem tree: the guest's image label, recursively",
        ResourceKind::TpmState => "TPM state: the guest's image label, recursively",
        ResourceKind::ChardevFile | ResourceKind::ChardevPipe | ResourceKind::ChardevDevice => {
            "chardev: the guest's image label"
        }
        ResourceKind::ChardevSocket => "unix socket: the guest's image label",
        ResourceKind::HostdevNode => "host device node: the guest's image label",
        ResourceKind::MemoryBacking => "memory backing: the guest's image label",
        _ => "private, writable: the guest's image label",
    }
}

struct DacPart {
    planned: bool,
    enabled: bool,
    relabel: bool,
    ids: Option<(u32, u32)>,
    idmap_trees: bool,
}

fn dac_part(domain: &Domain, cfg: &PlanConfig, planned: bool) -> Result<DacPart> {
    if !planned {
        return Ok(DacPart {
            planned,
            enabled: false,
            relabel: false,
            ids: None,
            idmap_trees: false,
        });
    }
    let at = "/domain/seclabel[@model='dac']";
    Ok(match domain.seclabel(Model::Dac) {
        None => DacPart {
            planned,
            enabled: true,
            relabel: true,
            ids: None,
            idmap_trees: cfg.idmap_trees,
        },
        Some(s) => match s.sec_type {
            SecLabelType::None => DacPart {
                planned,
                enabled: false,
                relabel: false,
                ids: None,
                idmap_trees: false,
            },
            SecLabelType::Dynamic => DacPart {
                planned,
                enabled: true,
                relabel: true,
                ids: None,
                idmap_trees: cfg.idmap_trees,
            },
            SecLabelType::Static => {
                let text = s.label.as_deref().unwrap_or_default();
                let ids = dac_ids(text, &cfg.root).map_err(|m| Error::Seclabel {
                    at: format!("{at}/label"),
                    message: m,
                })?;
                DacPart {
                    planned,
                    enabled: true,
                    relabel: s.relabel,
                    ids: Some(ids),
                    idmap_trees: cfg.idmap_trees,
                }
            }
        },
    })
}

impl DacPart {
    fn action_for(&self, r: &Resource, root: &Path) -> Result<DacAction> {
        if !self.planned || !self.enabled {
            return Ok(DacAction::Untouched);
        }
        match r.overrides.get(&Model::Dac) {
            Some(DeviceOverride::NoRelabel) => return Ok(DacAction::Untouched),
            Some(DeviceOverride::Label(l)) => {
                let (uid, gid) = dac_ids(l, root).map_err(|m| Error::Seclabel {
                    at: r.device.clone(),
                    message: format!("dac label: {m}"),
                })?;
                return Ok(DacAction::Owner { uid, gid });
            }
            None => {}
        }
        if !self.relabel {
            return Ok(DacAction::Untouched);
        }
        Ok(match (r.kind, r.sharing) {
            (ResourceKind::Loader, _) | (_, Sharing::ReadOnlyContent) => DacAction::GrantRead,
            (ResourceKind::Kernel | ResourceKind::Initrd | ResourceKind::Dtb, _) => {
                DacAction::GrantRead
            }
            (_, Sharing::Shared) => DacAction::SharedGroup,
            // A private share: shown to the guest through an idmapped mount, in O(1).
            (ResourceKind::FilesystemTree, Sharing::Private) if self.idmap_trees => {
                DacAction::IdmapGuest
            }
            // Sockets and device nodes keep their mode: others (the listener, udev rules)
            // rely on it; only the owner changes.
            (
                ResourceKind::ChardevSocket
                | ResourceKind::ChardevDevice
                | ResourceKind::HostdevNode,
                _,
            ) => DacAction::OwnGuest { private: false },
            _ => DacAction::OwnGuest { private: true },
        })
    }
}

/// Why the DAC model does what the plan says to a resource.
pub fn dac_reason(plan: &Plan, r: &PlannedResource) -> &'static str {
    if !plan.models.contains(&Model::Dac) {
        return "dac is not planned";
    }
    if !plan.dac_enabled {
        return "domain seclabel model='dac' type='none': nothing changed";
    }
    match (&r.dac, r.resource.overrides.get(&Model::Dac)) {
        (DacAction::Untouched, Some(DeviceOverride::NoRelabel)) => {
            "per-device seclabel relabel='no': left untouched"
        }
        (DacAction::Untouched, _) => "domain seclabel model='dac' relabel='no': nothing changed",
        (DacAction::Owner { .. }, _) => "per-device seclabel <label> wins",
        (DacAction::GrantRead, _) => {
            "read-only content: read granted to the guest uid alone (ACL entry), owner and mode unchanged"
        }
        (DacAction::SharedGroup, _) => "<shareable/>: shared guest group, read-write",
        (DacAction::OwnGuest { private: true }, _) => {
            "private: owned by the guest's uid, owner-only mode"
        }
        (DacAction::OwnGuest { private: false }, _) => {
            "socket or device node: owned by the guest's uid, mode kept"
        }
        (DacAction::IdmapGuest, _) => {
            "private share: shown to the guest's uid through an idmapped mount in its jail; nothing on disk changes"
        }
    }
}

/// `+107:+107`, `107:107`, or `user:group` names looked up in `<root>/etc/passwd` and
/// `<root>/etc/group`.
pub fn dac_ids(label: &str, root: &Path) -> std::result::Result<(u32, u32), String> {
    let (u, g) = label
        .split_once(':')
        .ok_or_else(|| format!("'{label}' is not USER:GROUP"))?;
    let uid = dac_id(u, &root.join("etc/passwd"))?;
    let gid = dac_id(g, &root.join("etc/group"))?;
    Ok((uid, gid))
}

fn dac_id(s: &str, db: &Path) -> std::result::Result<u32, String> {
    if let Some(n) = s.strip_prefix('+') {
        return n.parse().map_err(|_| format!("'{s}' is not a numeric id"));
    }
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(db)
        .map_err(|e| format!("cannot resolve '{s}': {}: {e}", db.display()))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?;
            (name == s).then(|| id.parse::<u32>().ok()).flatten()
        })
        .next()
        .ok_or_else(|| format!("no '{s}' in {}", db.display()))
}

/// Parse, resolve and plan in one call, as `svirt plan` and the daemon do.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The parsed domain (the daemon builds the QEMU command line from it).
    pub domain: Domain,
    /// The plan.
    pub plan: Plan,
    /// Parser and builder warnings, one line each.
    pub warnings: Vec<String>,
}

/// Parses `xml`, builds its resources on `host` and plans them with `cfg`.
pub fn plan_xml(xml: &str, host: &Host, cfg: &PlanConfig) -> Result<Planned> {
    let parsed = crate::parse(xml)?;
    let mut res = crate::build_resources(&parsed.domain, host)?;
    let mut warnings = parsed.warnings;
    warnings.append(&mut res.warnings);
    let plan = plan(&parsed.domain, res, cfg)?;
    warnings.extend(crate::check_trees(&plan, host)?);
    Ok(Planned {
        domain: parsed.domain,
        plan,
        warnings,
    })
}
