//! `svirt label …`: canonical form, dominance and translation of labels.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use svirt_labels::setrans::Translations;
use svirt_labels::{Context, Level, LevelOrdering, MlsLimits, MlsRange};

use crate::{CliError, CmdResult};

/// `svirt label` subcommands.
#[derive(Subcommand)]
pub enum LabelCommand {
    /// Print the kernel-canonical form of a security context (or of a bare level/range).
    Canon {
        /// `user:role:type[:level[-level]]`, or a level such as `s0:c3,c1`.
        label: String,
    },
    /// Exit 0 if level A dominates level B, 1 if not (2 on bad input).
    Dominates {
        /// Level (or context, whose low level is used) A.
        a: String,
        /// Level (or context) B.
        b: String,
    },
    /// Translate a level to its human-readable name or a name to its level (mcstrans syntax).
    Translate(TranslateArgs),
}

/// Arguments of `svirt label translate`.
#[derive(Args)]
pub struct TranslateArgs {
    /// The translation table (default: the policy's setrans.conf).
    #[arg(long, value_name = "FILE")]
    setrans: Option<PathBuf>,
    /// List every translation, like `chcat -L`.
    #[arg(long, conflicts_with = "level_or_name")]
    list: bool,
    /// A level/range (`s0:c0`) or a name (`CompanyConfidential`).
    #[arg(required_unless_present = "list")]
    level_or_name: Option<String>,
}

/// Runs a `svirt label` subcommand.
pub fn run(cmd: LabelCommand) -> CmdResult {
    match cmd {
        LabelCommand::Canon { label } => {
            println!("{}", canon(&label)?);
            Ok(ExitCode::SUCCESS)
        }
        LabelCommand::Dominates { a, b } => {
            let (la, lb) = (level_of(&a)?, level_of(&b)?);
            let rel = match la.compare(&lb) {
                LevelOrdering::Equal => "equals",
                LevelOrdering::Dominates => "dominates",
                LevelOrdering::DominatedBy => "is dominated by",
                LevelOrdering::Incomparable => "is incomparable with",
            };
            println!("{la} {rel} {lb}");
            Ok(if la.dominates(&lb) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        LabelCommand::Translate(args) => translate(args),
    }
}

/// A context's canonical text, or a bare range's when the input is not a context.
fn canon(input: &str) -> Result<String, CliError> {
    if looks_like_level(input) {
        return MlsRange::parse(input)
            .map(|r| r.to_string())
            .map_err(|e| CliError::input(format!("invalid level `{input}`: {e}")));
    }
    Context::parse(input)
        .map(|c| c.to_string())
        .map_err(|e| CliError::input(format!("invalid context `{input}`: {e}")))
}

/// A level starts with `s<digit>`; a context starts with a user name.
fn looks_like_level(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0] == b's' && b[1].is_ascii_digit()
}

fn level_of(input: &str) -> Result<Level, CliError> {
    if looks_like_level(input) {
        if input.contains('-') {
            return Err(CliError::input(format!(
                "`{input}` is a range; dominance compares single levels (give one end)"
            )));
        }
        return Level::parse(input)
            .map_err(|e| CliError::input(format!("invalid level `{input}`: {e}")));
    }
    let c = Context::parse(input)
        .map_err(|e| CliError::input(format!("invalid level `{input}`: {e}")))?;
    c.level()
        .ok_or_else(|| CliError::input(format!("context `{input}` has no MLS level")))
}

/// The policy's setrans.conf: `/etc/selinux/<SELINUXTYPE>/setrans.conf`.
fn default_setrans(root: &Path) -> PathBuf {
    let config = std::fs::read_to_string(root.join("etc/selinux/config")).unwrap_or_default();
    let policy = config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SELINUXTYPE="))
        .map(str::trim)
        .find(|t| !t.is_empty() && !t.contains('/'))
        .unwrap_or("default");
    root.join("etc/selinux").join(policy).join("setrans.conf")
}

fn translate(args: TranslateArgs) -> CmdResult {
    let file = args
        .setrans
        .unwrap_or_else(|| default_setrans(Path::new("/")));
    let text = std::fs::read_to_string(&file).map_err(|e| {
        CliError::input(format!(
            "cannot read translation table {}: {e}",
            file.display()
        ))
    })?;
    let limits = MlsLimits::default();
    let table = Translations::parse(&text, limits)
        .map_err(|e| CliError::input(format!("{}: {e}", file.display())))?;
    if args.list {
        for e in table.entries() {
            println!("{:<30} {}", e.range.to_string(), e.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let input = args.level_or_name.unwrap_or_default();
    if looks_like_level(&input) {
        let range = MlsRange::parse(&input)
            .map_err(|e| CliError::input(format!("invalid level `{input}`: {e}")))?;
        println!("{}", table.to_name(&range));
    } else {
        let range = table.range_of_name(&input, limits).ok_or_else(|| {
            CliError::input(format!(
                "no translation for `{input}` in {}",
                file.display()
            ))
        })?;
        println!("{range}");
    }
    Ok(ExitCode::SUCCESS)
}
