//! SMACK access rules: the ones a guest's plan needs, loaded through smackfs, recorded per
//! guest before they are loaded, revoked when no running guest needs them any more.
//!
//! A guest's label reaches its own objects without a rule (SMACK's "same label" rule), and
//! the floor `_` (the host's unlabeled files) for read and execute. Everything else needs
//! a rule `subject object access`; svirt loads only `guest-label svirt-shared rwxal` and
//! `guest-label svirt-content rx` (and a rule for a label a device's own `<seclabel>`
//! names), each only when the plan has such an object. SMACK cannot delete a rule: it is
//! revoked by loading it with no access (`-`), which denies exactly as no rule does.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use svirt_domain::Access;
use svirt_labels::SmackLabel;

use crate::guest_records::GuestRecords;

/// One rule: `subject` may access objects labeled `object` with `access` (SMACK's letters
/// `rwxatl`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// The subject label (the guest's).
    pub subject: String,
    /// The object label.
    pub object: String,
    /// The access granted.
    pub access: String,
}

impl Rule {
    /// The line `load2` takes for the rule.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.subject, self.object, self.access)
    }

    /// The line that revokes it.
    pub fn revoke_line(&self) -> String {
        format!("{} {} -", self.subject, self.object)
    }
}

/// Labels SMACK itself decides for every subject: the floor (`_`: read and execute for
/// all), star (`*`: everything), hat (`^`) and web (`@`). A rule naming one is never loaded.
fn builtin(label: &str) -> bool {
    matches!(label, "_" | "*" | "^" | "@")
}

/// The rules a guest labeled `guest` needs for objects labeled as `objects` says (label,
/// and what the guest needs of it): one per label other than its own and SMACK's built-in
/// ones, read-write (`rwxal`: read, write, search, append, lock) if any object of that
/// label needs it, else read (`rx`).
pub fn rules_for<'a>(
    guest: &SmackLabel,
    objects: impl IntoIterator<Item = (&'a str, Access)>,
) -> Vec<Rule> {
    let mut need: BTreeMap<&str, Access> = BTreeMap::new();
    for (label, access) in objects {
        if label == guest.as_str() || builtin(label) {
            continue;
        }
        let e = need.entry(label).or_insert(Access::Ro);
        if access == Access::Rw {
            *e = Access::Rw;
        }
    }
    need.into_iter()
        .map(|(object, access)| Rule {
            subject: guest.to_string(),
            object: object.to_string(),
            access: match access {
                Access::Rw => svirt_domain::smack::SHARED_ACCESS,
                Access::Ro => svirt_domain::smack::CONTENT_ACCESS,
            }
            .to_string(),
        })
        .collect()
}

/// smackfs's rule interface.
#[derive(Debug, Clone)]
pub struct RuleLoader {
    load2: PathBuf,
}

impl RuleLoader {
    /// The loader writing to `<smackfs>/load2`.
    pub fn new(smackfs: &Path) -> RuleLoader {
        RuleLoader {
            load2: smackfs.join("load2"),
        }
    }

    /// Writes one line (one open and write per rule: the interface takes one rule per
    /// write on every kernel).
    fn write(&self, line: &str) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.load2)?;
        f.write_all(format!("{line}\n").as_bytes())
    }

    /// Loads `rule`; the error names the rule and the file.
    pub fn load(&self, rule: &Rule) -> Result<(), String> {
        self.write(&rule.line()).map_err(|e| {
            format!(
                "load rule {:?} into {}: {e}",
                rule.line(),
                self.load2.display()
            )
        })
    }

    /// Revokes `rule`.
    pub fn revoke(&self, rule: &Rule) -> Result<(), String> {
        self.write(&rule.revoke_line()).map_err(|e| {
            format!(
                "revoke rule {:?} in {}: {e}",
                rule.line(),
                self.load2.display()
            )
        })
    }
}

/// A guest's record: its label and the rules loaded for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RuleRecord {
    /// The guest's name.
    pub guest: String,
    /// Its label.
    pub label: String,
    /// The rules loaded (or about to be) for it.
    pub rules: Vec<Rule>,
}

/// The rule records (`<state>/smack/`) and the loader.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    records: GuestRecords,
    loader: RuleLoader,
}

impl Rules {
    pub(crate) fn new(records: PathBuf, loader: RuleLoader) -> Rules {
        Rules {
            records: GuestRecords::new(records),
            loader,
        }
    }

    /// Every guest with a record.
    pub(crate) fn guests(&self) -> io::Result<Vec<String>> {
        self.records.guests()
    }

    /// The access every guest but `guest` holds, per (subject, object) pair: SMACK keeps
    /// one access per pair, so a pair another guest holds is reloaded with what that guest
    /// needs, never revoked under it.
    fn held_by_others(
        &self,
        guest: &str,
    ) -> io::Result<BTreeMap<(String, String), BTreeSet<char>>> {
        let mut held: BTreeMap<(String, String), BTreeSet<char>> = BTreeMap::new();
        for g in self.records.guests()? {
            if g != guest
                && let Some(r) = self.records.read::<RuleRecord>(&g)?
            {
                for rule in r.rules {
                    held.entry((rule.subject, rule.object))
                        .or_default()
                        .extend(rule.access.chars());
                }
            }
        }
        Ok(held)
    }

    /// Records `rules` for `guest`, durably, then loads them. On a failure, undoes what it
    /// did (as [`Rules::release`]) and returns the first error.
    pub(crate) fn grant(&self, guest: &str, label: &str, rules: &[Rule]) -> Result<(), String> {
        // A record an earlier start left (its revoke failed) is kept in the new one: its
        // rules are still loaded until a release revokes them.
        let earlier: Vec<Rule> = self
            .records
            .read::<RuleRecord>(guest)
            .map_err(|e| {
                format!(
                    "read the rules of {guest} in {}: {e}",
                    self.records.dir().display()
                )
            })?
            .map(|r| r.rules)
            .unwrap_or_default();
        let mut all = earlier.clone();
        for r in rules {
            if !all.contains(r) {
                all.push(r.clone());
            }
        }
        let rec = RuleRecord {
            guest: guest.to_string(),
            label: label.to_string(),
            rules: all,
        };
        self.records.write(guest, &rec).map_err(|e| {
            format!(
                "record the rules of {guest} in {}: {e}",
                self.records.dir().display()
            )
        })?;
        for (i, r) in rules.iter().enumerate() {
            if let Err(e) = self.loader.load(r) {
                // Only what was loaded is revoked (with what an earlier start left): the
                // record first says so.
                let mut was = earlier;
                for r in &rules[..i] {
                    if !was.contains(r) {
                        was.push(r.clone());
                    }
                }
                let loaded = RuleRecord { rules: was, ..rec };
                let undo = self
                    .records
                    .write(guest, &loaded)
                    .map_err(|e| e.to_string())
                    .and_then(|()| self.release(guest));
                if let Err(more) = undo {
                    tracing::error!("undoing the rules of {guest}: {more}");
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Revokes `guest`'s rules that no other guest's record holds, then removes its
    /// record. A failed revoke keeps the record (for the next stop or the open's
    /// recovery) and is returned.
    pub(crate) fn release(&self, guest: &str) -> Result<(), String> {
        let dir = self.records.dir().display().to_string();
        let Some(rec) = self
            .records
            .read::<RuleRecord>(guest)
            .map_err(|e| format!("read the rules of {guest} in {dir}: {e}"))?
        else {
            return Ok(());
        };
        let others = self
            .held_by_others(guest)
            .map_err(|e| format!("read the rule records in {dir}: {e}"))?;
        let mut first = None;
        for r in &rec.rules {
            let step = match others.get(&(r.subject.clone(), r.object.clone())) {
                None => self.loader.revoke(r),
                Some(access) => {
                    let wanted: String = access.iter().collect();
                    if wanted
                        == r.access
                            .chars()
                            .collect::<BTreeSet<char>>()
                            .iter()
                            .collect::<String>()
                    {
                        continue;
                    }
                    self.loader.load(&Rule {
                        access: wanted,
                        ..r.clone()
                    })
                }
            };
            if let Err(e) = step {
                first.get_or_insert(e);
            }
        }
        if let Some(e) = first {
            return Err(e);
        }
        self.records
            .remove(guest)
            .map_err(|e| format!("remove the rule record of {guest} in {dir}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str) -> SmackLabel {
        SmackLabel::new(s).expect("label")
    }

    #[test]
    fn one_rule_per_label_the_plan_uses() {
        let g = label("svirt-c1-c2");
        let rules = rules_for(
            &g,
            [
                ("svirt-c1-c2", Access::Rw),
                ("svirt-shared", Access::Ro),
                ("svirt-shared", Access::Rw),
                ("svirt-content", Access::Ro),
                ("svirt-content", Access::Ro),
                ("_", Access::Rw),
                ("*", Access::Ro),
            ],
        );
        let lines: Vec<String> = rules.iter().map(Rule::line).collect();
        assert_eq!(
            lines,
            [
                "svirt-c1-c2 svirt-content rx",
                "svirt-c1-c2 svirt-shared rwxal"
            ]
        );
        assert!(rules_for(&g, [("svirt-c1-c2", Access::Rw)]).is_empty());
    }

    #[test]
    fn rules_are_recorded_loaded_and_revoked_unless_another_guest_holds_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let load2 = tmp.path().join("load2");
        std::fs::write(&load2, b"").expect("load2");
        let rules = Rules::new(tmp.path().join("smack"), RuleLoader::new(tmp.path()));
        let r = |s: &str, o: &str, a: &str| Rule {
            subject: s.into(),
            object: o.into(),
            access: a.into(),
        };
        let a = [r("svirt-c1", "svirt-shared", "rwxal")];
        // Two guests of one (static) label share a rule: the first stop keeps it.
        rules.grant("a", "svirt-c1", &a).expect("grant a");
        rules.grant("b", "svirt-c1", &a).expect("grant b");
        assert_eq!(rules.guests().expect("guests"), ["a", "b"]);
        rules.release("a").expect("release a");
        rules.release("b").expect("release b");
        rules.release("b").expect("release b twice");
        assert!(rules.guests().expect("guests").is_empty());
        assert_eq!(
            std::fs::read_to_string(&load2).expect("read"),
            "svirt-c1 svirt-shared rwxal\nsvirt-c1 svirt-shared rwxal\nsvirt-c1 svirt-shared -\n"
        );
    }

    #[test]
    fn a_pair_another_guest_holds_is_reloaded_with_its_access_not_revoked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let load2 = tmp.path().join("load2");
        std::fs::write(&load2, b"").expect("load2");
        let rules = Rules::new(tmp.path().join("smack"), RuleLoader::new(tmp.path()));
        let r = |a: &str| Rule {
            subject: "svirt-c1".into(),
            object: "svirt-x".into(),
            access: a.into(),
        };
        rules.grant("a", "svirt-c1", &[r("rx")]).expect("grant a");
        rules
            .grant("b", "svirt-c1", &[r("rwxal")])
            .expect("grant b");
        // B stops: the pair goes back to what A needs.
        rules.release("b").expect("release b");
        // A stops: revoked.
        rules.release("a").expect("release a");
        assert_eq!(
            std::fs::read_to_string(&load2).expect("read"),
            "svirt-c1 svirt-x rx\nsvirt-c1 svirt-x rwxal\nsvirt-c1 svirt-x rx\nsvirt-c1 svirt-x -\n"
        );
    }

    #[test]
    fn a_rule_that_cannot_be_loaded_leaves_no_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // No load2: smackfs is not there.
        let rules = Rules::new(tmp.path().join("smack"), RuleLoader::new(tmp.path()));
        let rule = Rule {
            subject: "svirt-c1".into(),
            object: "svirt-content".into(),
            access: "rx".into(),
        };
        let e = rules
            .grant("a", "svirt-c1", &[rule])
            .expect_err("no smackfs");
        assert!(
            e.contains("svirt-c1 svirt-content rx") && e.contains("load2"),
            "{e}"
        );
        // Nothing was loaded, so nothing is left to revoke, and no record.
        assert!(rules.guests().expect("guests").is_empty());
    }
}
