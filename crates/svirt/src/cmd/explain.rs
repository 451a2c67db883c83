//! `svirt explain` and `svirt denials`: why a guest was denied something, in one step.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use svirt_bpf::events::Denial as BpfDenial;
use svirt_drivers::apparmor::audit::{self, AppArmorRecord};
use svirt_drivers::smack::audit::{self as smack_audit, SmackRecord};
use svirt_labels::{Context, Level};
use svirt_policy::{AvcRecord, Booleans, Decision, explain, is_avc_line, parse_avc, run_batch};

use super::client::{Client, ConnectArgs};
use crate::{CliError, CmdResult};

/// Arguments of `svirt explain`.
#[derive(Args)]
pub struct ExplainArgs {
    /// Read `SCONTEXT<TAB>TCONTEXT<TAB>CLASS<TAB>PERM[,PERM…][<TAB>bool=on,…]` lines on stdin;
    /// print `allow` or `deny<TAB>REASON` per line.
    #[arg(long, conflicts_with_all = ["avc", "request"])]
    batch: bool,
    /// Explain kernel AVC records: the given line, or lines on stdin when none is given.
    #[arg(long, num_args = 0..=1, value_name = "LINE", conflicts_with = "request")]
    avc: Option<Option<String>>,
    /// Set a boolean for the decision (repeatable): `--bool virt_use_nfs=on`.
    #[arg(long = "bool", value_name = "NAME=on|off")]
    booleans: Vec<String>,
    /// SCONTEXT TCONTEXT CLASS PERM...
    #[arg(value_name = "SCONTEXT TCONTEXT CLASS PERM", num_args = 0..)]
    request: Vec<String>,
}

/// Arguments of `svirt denials`.
#[derive(Args)]
pub struct DenialsArgs {
    /// Read AVC, AppArmor and BPF-LSM records from this file (an audit.log or a saved kernel log) instead of the
    /// kernel log; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// Explain each AVC denial under the policy model.
    #[arg(long)]
    explain: bool,
}

fn booleans(list: &[String]) -> Result<Booleans, CliError> {
    let mut b = Booleans::defaults();
    for item in list {
        b.set_from_str(item)
            .map_err(|e| CliError::input(format!("--bool {item}: {e}")))?;
    }
    Ok(b)
}

/// Runs `svirt explain`.
pub fn run_explain(args: ExplainArgs, connect: &ConnectArgs) -> CmdResult {
    let b = booleans(&args.booleans)?;
    if args.batch {
        run_batch(io::stdin().lock(), io::stdout().lock())
            .map_err(|e| CliError::failed(format!("batch: {e}")))?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(line) = args.avc {
        let lines = match line {
            Some(l) => vec![l],
            None => read_lines(io::stdin().lock())?,
        };
        let records = parse_records(&lines)?;
        if records.is_empty() {
            return Err(CliError::input("no AVC record in the input"));
        }
        let guests = GuestNames::lookup(connect);
        for rec in &records {
            let who = guests.describe(rec);
            if !who.is_empty() {
                println!("{who}");
            }
            print!("{}", rec.explain(&b));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let [s, t, class, perms @ ..] = args.request.as_slice() else {
        return Err(CliError::input(
            "usage: svirt explain SCONTEXT TCONTEXT CLASS PERM... (or --batch, --avc)",
        ));
    };
    if perms.is_empty() {
        return Err(CliError::input("name at least one permission (e.g. read)"));
    }
    let s = Context::parse(s)
        .map_err(|e| CliError::input(format!("invalid source context `{s}`: {e}")))?;
    let t = Context::parse(t)
        .map_err(|e| CliError::input(format!("invalid target context `{t}`: {e}")))?;
    let perms: Vec<&str> = perms
        .iter()
        .flat_map(|p| p.split(','))
        .filter(|p| !p.is_empty())
        .collect();
    let e = explain(&s, &t, class, &perms, &b);
    print!("{e}");
    Ok(match e.decision {
        Decision::Allow => ExitCode::SUCCESS,
        Decision::Deny(_) => ExitCode::from(1),
        Decision::UnknownToModel { .. } => ExitCode::from(2),
    })
}

fn read_lines(r: impl BufRead) -> Result<Vec<String>, CliError> {
    r.lines()
        .collect::<Result<_, _>>()
        .map_err(|e| CliError::failed(format!("reading input: {e}")))
}

fn parse_records(lines: &[String]) -> Result<Vec<AvcRecord>, CliError> {
    lines
        .iter()
        .filter(|l| is_avc_line(l))
        .map(|l| {
            parse_avc(l).map_err(|e| {
                CliError::input(format!("cannot parse AVC record `{}`: {e}", l.trim()))
            })
        })
        .collect()
}

/// Guest names by MCS level, from svirtd when it runs (best effort: without svirtd the
/// levels themselves identify the guests).
struct GuestNames {
    by_level: HashMap<Level, String>,
    /// By uuid, lower case without dashes (AppArmor profiles are named by uuid).
    by_uuid: HashMap<String, String>,
    /// By SMACK label.
    by_smack: HashMap<String, String>,
}

impl GuestNames {
    fn lookup(connect: &ConnectArgs) -> GuestNames {
        let mut by_level = HashMap::new();
        let mut by_uuid = HashMap::new();
        let mut by_smack = HashMap::new();
        let list = Client::new(connect).and_then(|c| c.call("GET", "/v1/domains?all=true", None));
        // Names are a courtesy: without svirtd (or with a reply this svirt cannot read)
        // levels are shown without them.
        let guests: Vec<svirt_api::Summary> = list
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        for g in guests {
            by_uuid.insert(uuid_key(&g.uuid), g.name.clone());
            if let Some(l) = g.labels.get("smack") {
                by_smack.insert(l.clone(), g.name.clone());
            }
            // SELinux's process label, or BPF-LSM's level (the same MCS level).
            let level = g
                .labels
                .get("selinux")
                .and_then(|l| Context::parse(l).ok())
                .and_then(|c| c.level())
                .or_else(|| g.labels.get("bpf-lsm").and_then(|l| Level::parse(l).ok()));
            if let Some(level) = level {
                by_level.insert(level, g.name);
            }
        }
        GuestNames {
            by_level,
            by_uuid,
            by_smack,
        }
    }

    /// The guest a profile `svirt-<uuid>` belongs to: its name when svirtd knows it,
    /// else the profile itself says which guest (`guest svirt-<uuid>`).
    fn name_of_profile(&self, profile: &str) -> Option<String> {
        let uuid = svirt_drivers::apparmor::audit::uuid_of_profile(profile)?;
        Some(
            self.by_uuid
                .get(&uuid_key(uuid))
                .cloned()
                .unwrap_or_else(|| format!("guest {profile}")),
        )
    }

    fn name_of(&self, c: &Context) -> Option<String> {
        let level = c.level()?;
        if !is_guest_type(c) {
            return None;
        }
        Some(
            self.by_level
                .get(&level)
                .cloned()
                .unwrap_or_else(|| format!("guest at {level}")),
        )
    }

    /// The guest at a level given as text (`s0:c1,c2`); `s0` is everyone's (shared).
    fn name_of_level(&self, text: &str) -> String {
        match Level::parse(text) {
            Ok(l) if l.categories.is_empty() => "shared (s0)".into(),
            Ok(l) => self
                .by_level
                .get(&l)
                .cloned()
                .unwrap_or_else(|| format!("guest at {l}")),
            Err(_) => text.to_string(),
        }
    }

    /// Whose a SMACK label is: a guest's (by name when svirtd knows it), the labels every
    /// guest shares, or `None` for the host's.
    fn name_of_smack(&self, label: &str) -> Option<String> {
        if let Some(n) = self.by_smack.get(label) {
            return Some(n.clone());
        }
        match label {
            svirt_domain::smack::SHARED => Some("shared".into()),
            svirt_domain::smack::CONTENT => Some("read-only content".into()),
            l if l.starts_with(svirt_labels::smack::GUEST_PREFIX) => Some(format!("guest {l}")),
            _ => None,
        }
    }

    /// `guest A (svirt_t:s0:c1,c2) -> guest B's object` style heading.
    fn describe(&self, rec: &AvcRecord) -> String {
        let src = self
            .name_of(&rec.scontext)
            .unwrap_or_else(|| rec.scontext.type_.to_string());
        let dst = match self.name_of(&rec.tcontext) {
            Some(n) => format!("{n}'s {}", rec.tclass),
            None => format!("{} {}", rec.tcontext.type_, rec.tclass),
        };
        format!("== {src} -> {dst}")
    }
}

/// A uuid as compared: lower case, without dashes (libvirt accepts both spellings).
fn uuid_key(u: &str) -> String {
    u.chars()
        .filter(|c| *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn is_guest_type(c: &Context) -> bool {
    matches!(
        c.type_.as_str(),
        "svirt_t"
            | "svirt_tcg_t"
            | "svirt_prot_exec_t"
            | "qemu_t"
            | "svirt_image_t"
            | "svirt_tmpfs_t"
            | "svirt_tmp_t"
    ) || c.level().is_some_and(|l| l.categories.len() == 2)
}

/// Runs `svirt denials`: AVC denials from the kernel (or audit) log, grouped per guest.
pub fn run_denials(args: DenialsArgs, connect: &ConnectArgs) -> CmdResult {
    let lines = match &args.from {
        Some(p) if p.as_os_str() == "-" => read_lines(io::stdin().lock())?,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| CliError::input(format!("{}: {e}", p.display())))?;
            text.lines().map(str::to_owned).collect()
        }
        None => kernel_log()?,
    };
    let records: Vec<AvcRecord> = lines
        .iter()
        .filter(|l| is_avc_line(l))
        .filter_map(|l| parse_avc(l).ok())
        .collect();
    let records: Vec<&AvcRecord> = records.iter().filter(|r| r.denied).collect();
    let guests = GuestNames::lookup(connect);
    let mut per_guest: BTreeMap<String, Vec<&AvcRecord>> = BTreeMap::new();
    for r in &records {
        let key = guests
            .name_of(&r.scontext)
            .or_else(|| guests.name_of(&r.tcontext))
            .unwrap_or_else(|| "(not a guest)".to_owned());
        per_guest.entry(key).or_default().push(r);
    }
    // AppArmor's records (a host runs one major LSM, but a log may hold both).
    let aa: Vec<AppArmorRecord> = lines
        .iter()
        .filter(|l| audit::is_apparmor_line(l))
        .filter_map(|l| audit::parse(l))
        .filter(|r| r.outcome == "DENIED")
        .collect();
    let mut aa_per_guest: BTreeMap<String, Vec<&AppArmorRecord>> = BTreeMap::new();
    for r in &aa {
        let key = guests
            .name_of_profile(&r.profile)
            .unwrap_or_else(|| "(not a guest)".to_owned());
        aa_per_guest.entry(key).or_default().push(r);
    }
    // BPF-LSM's (svirtd logs the programs' denials to the kernel log).
    let bpf: Vec<BpfDenial> = lines
        .iter()
        .filter_map(|l| BpfDenial::parse_line(l))
        .collect();
    let mut bpf_per_guest: BTreeMap<String, Vec<&BpfDenial>> = BTreeMap::new();
    for d in &bpf {
        bpf_per_guest
            .entry(guests.name_of_level(&d.subject))
            .or_default()
            .push(d);
    }
    // SMACK's.
    let smack: Vec<SmackRecord> = lines
        .iter()
        .filter(|l| smack_audit::is_smack_line(l))
        .filter_map(|l| smack_audit::parse(l))
        .filter(|r| r.action == "denied")
        .collect();
    let mut smack_per_guest: BTreeMap<String, Vec<&SmackRecord>> = BTreeMap::new();
    for r in &smack {
        let key = guests
            .name_of_smack(&r.subject)
            .unwrap_or_else(|| "(not a guest)".to_owned());
        smack_per_guest.entry(key).or_default().push(r);
    }
    if per_guest.is_empty()
        && aa_per_guest.is_empty()
        && bpf_per_guest.is_empty()
        && smack_per_guest.is_empty()
    {
        println!("no AVC, AppArmor, BPF-LSM or SMACK denials found");
        return Ok(ExitCode::SUCCESS);
    }
    for (guest, recs) in &smack_per_guest {
        println!("{guest}: {} SMACK denial(s)", recs.len());
        for r in recs {
            let target = guests
                .name_of_smack(&r.object)
                .map(|n| format!(" [{n}]"))
                .unwrap_or_default();
            let field = |k: &str| {
                r.fields
                    .get(k)
                    .map(|v| format!(" {k}={v}"))
                    .unwrap_or_default()
            };
            // A getattr's or a connect's record names the object by `path`, an open's by
            // `name`. A ptrace record's `opid` is the tracer itself (the kernel's task
            // field): the object label already says whose task it was.
            let other = if r.function.contains("ptrace") {
                String::new()
            } else {
                field("opid")
            };
            println!(
                "  {{ {} }} {} {} -> {}{target}{}{}{}{}{other}",
                r.requested,
                r.function,
                r.subject,
                r.object,
                field("pid"),
                field("comm"),
                field("name"),
                field("path"),
            );
        }
    }
    for (guest, recs) in &bpf_per_guest {
        println!("{guest}: {} BPF-LSM denial(s)", recs.len());
        for d in recs {
            let target = if d.object == "unlabeled" {
                " (unlabeled: no plan names it)".to_string()
            } else {
                format!(" [{}]", guests.name_of_level(&d.object))
            };
            println!(
                "  {{ {} }} {} pid={} comm={} {} -> {}{target}{}{}",
                d.want,
                d.hook,
                d.pid,
                d.comm,
                d.subject,
                d.object,
                d.inode
                    .as_ref()
                    .map(|(dev, ino)| format!(" dev={dev} ino={ino}"))
                    .unwrap_or_default(),
                d.target_pid
                    .map(|t| format!(" tpid={t}"))
                    .unwrap_or_default()
            );
        }
    }
    for (guest, recs) in &aa_per_guest {
        println!("{guest}: {} AppArmor denial(s)", recs.len());
        for r in recs {
            let peer = r
                .peer
                .as_deref()
                .map(|p| {
                    let who = guests
                        .name_of_profile(p)
                        .map(|n| format!(" [{n}]"))
                        .unwrap_or_default();
                    format!(" peer={p}{who}")
                })
                .unwrap_or_default();
            println!(
                "  {{ {} }} {} profile={}{}{}",
                r.denied.as_deref().unwrap_or("?"),
                r.operation,
                r.profile,
                r.name
                    .as_deref()
                    .map(|n| format!(" name={n}"))
                    .unwrap_or_default(),
                peer
            );
        }
    }
    let b = Booleans::defaults();
    for (guest, recs) in &per_guest {
        println!("{guest}: {} denial(s)", recs.len());
        for r in recs {
            let target = guests
                .name_of(&r.tcontext)
                .map(|n| format!(" [{n}]"))
                .unwrap_or_default();
            println!(
                "  {{ {} }} {} -> {}{} tclass={}{}",
                r.perms.join(" "),
                r.scontext,
                r.tcontext,
                target,
                r.tclass,
                r.name
                    .as_deref()
                    .map(|n| format!(" name={n}"))
                    .unwrap_or_default()
            );
            if args.explain {
                for line in r.explain(&b).to_string().lines() {
                    println!("    {line}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The kernel log, through `dmesg` (it knows the record format of every kernel version);
/// the audit log when auditd keeps one.
fn kernel_log() -> Result<Vec<String>, CliError> {
    let mut lines = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/var/log/audit/audit.log") {
        lines.extend(text.lines().map(str::to_owned));
    }
    match std::process::Command::new("dmesg").output() {
        Ok(o) if o.status.success() => lines.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned),
        ),
        Ok(o) => {
            if lines.is_empty() {
                return Err(CliError::failed(format!(
                    "cannot read the kernel log: dmesg: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )));
            }
        }
        Err(e) if lines.is_empty() => {
            return Err(CliError::failed(format!(
                "cannot read the kernel log: dmesg: {e}"
            )));
        }
        Err(_) => {}
    }
    Ok(lines)
}
