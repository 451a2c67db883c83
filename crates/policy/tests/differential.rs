//! Differential test: the model against libsepol on Debian's binary policy.
//!
//! libsepol (`sepol_compute_av_reason_buffer`) computes offline what the kernel computes:
//! TE, conditional rules under the booleans, constraints, the RBAC check. The oracle is
//! `tools/sepol_oracle.py` (python3 + ctypes on libsepol.so.2). Random queries over the
//! modelled types, classes, permissions, users, levels (equal, dominating, dominated,
//! incomparable, ranges) and boolean settings; every permission's verdict (allowed / which
//! check denied it / whether the denial is logged) must agree.
//!
//! Knobs: SVIRT_DIFF_SEED (default fixed, always printed), SVIRT_DIFF_QUERIES (default
//! 24000), SVIRT_POLICY (default /etc/selinux/default/policy/policy.33).
//! Run: `cargo test -p svirt-policy --test differential -- --nocapture`

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use svirt_labels::{CategorySet, Context, Identifier, Level, MlsRange};
use svirt_policy::generated::{BOOLEANS, CLASSES, SUBJECT_TYPES, TYPES};
use svirt_policy::{Booleans, Decision, Outcome, access_vector, decide};

const DEFAULT_SEED: u64 = 0x5356_4952_5400_0007;
const DEFAULT_QUERIES: usize = 24_000;
const PYTHON: &str = "/usr/bin/python3";

struct Rng(u64);

impl Rng {
    // splitmix64: tiny, deterministic, good enough for test generation.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn libsepol_present() -> bool {
    [
        "/usr/lib/x86_64-linux-gnu/libsepol.so.2",
        "/usr/lib/aarch64-linux-gnu/libsepol.so.2",
        "/lib/x86_64-linux-gnu/libsepol.so.2",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

/// Makes sure python3, libsepol and the policy are there; installs them (idempotent).
fn ensure_tools(policy: &Path) -> Result<(), String> {
    if Path::new(PYTHON).exists() && libsepol_present() && policy.exists() {
        return Ok(());
    }
    eprintln!("differential: installing python3, libsepol2 and selinux-policy-default (apt)");
    let ok = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "python3",
            "libsepol2",
            "selinux-policy-default",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let _ = Command::new("apt-get").arg("update").status();
        let _ = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "python3",
                "libsepol2",
                "selinux-policy-default",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    if Path::new(PYTHON).exists() && libsepol_present() && policy.exists() {
        Ok(())
    } else {
        Err(format!(
            "need {PYTHON}, libsepol.so.2 and {} (apt-get install failed or not Debian)",
            policy.display()
        ))
    }
}

fn ctx(user: &str, role: &str, ty: &str, range: MlsRange) -> Context {
    let id = |s: &str| Identifier::new(s).unwrap_or_else(|e| panic!("identifier {s}: {e}"));
    Context {
        user: id(user),
        role: id(role),
        type_: id(ty),
        range: Some(range),
    }
}

/// Categories drawn mostly from a small pool so that equal, dominating and incomparable
/// levels all occur often.
fn level(rng: &mut Rng) -> Level {
    let mut cats = CategorySet::new();
    if rng.chance(3) {
        return Level {
            sensitivity: 0,
            categories: CategorySet::range(0, 1023),
        };
    }
    for _ in 0..rng.below(4) {
        let c = if rng.chance(85) {
            *rng.pick(&[0u16, 1, 2, 3, 4, 5, 1023])
        } else {
            rng.below(1024) as u16
        };
        cats.insert(c);
    }
    Level {
        sensitivity: 0,
        categories: cats,
    }
}

fn related(rng: &mut Rng, base: &Level) -> Level {
    match rng.below(6) {
        0 | 1 => *base,
        2 => {
            // dominated by base: drop categories
            let mut l = *base;
            for c in base.categories.iter().collect::<Vec<_>>() {
                if rng.chance(50) {
                    l.categories.remove(c);
                }
            }
            l
        }
        3 => {
            // dominates base: add categories
            let mut l = *base;
            l.categories.insert(*rng.pick(&[0u16, 1, 2, 3, 4, 5, 1023]));
            l
        }
        _ => level(rng),
    }
}

fn range_around(rng: &mut Rng, low: Level) -> MlsRange {
    if rng.chance(20) {
        let mut high = low;
        if rng.chance(30) {
            high.categories = CategorySet::range(0, 1023);
        } else {
            high.categories
                .insert(*rng.pick(&[0u16, 1, 2, 3, 4, 5, 1023]));
        }
        MlsRange { low, high }
    } else {
        MlsRange::single(low)
    }
}

struct Query {
    s: Context,
    t: Context,
    class: &'static str,
    perms: Vec<&'static str>,
    bools: usize,
}

fn code(outcome: Outcome, audited: bool) -> String {
    let c = match outcome {
        Outcome::Allowed => return "A".to_owned(),
        Outcome::NoTeRule => "T",
        Outcome::Constraint(_) => "C",
        Outcome::RoleChange => "R",
    };
    format!("{c}/{}", if audited { 1 } else { 0 })
}

#[test]
fn model_agrees_with_libsepol() {
    let policy = PathBuf::from(
        std::env::var("SVIRT_POLICY")
            .unwrap_or_else(|_| "/etc/selinux/default/policy/policy.33".into()),
    );
    if let Err(why) = ensure_tools(&policy) {
        svirt_testkit::skip("policy-tools", format!("differential test: {why}"));
        return;
    }
    let seed = std::env::var("SVIRT_DIFF_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(DEFAULT_SEED);
    let n: usize = std::env::var("SVIRT_DIFF_QUERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_QUERIES);
    eprintln!(
        "differential: seed {seed:#x} (SVIRT_DIFF_SEED={seed:x} to replay), {n} queries, policy {}",
        policy.display()
    );
    if let Ok(bytes) = std::fs::read(&policy) {
        let _ = bytes; // provenance is printed by the generator; a different policy shows up as disagreement
    }
    let mut rng = Rng(seed);

    // Boolean settings: the defaults, one per modelled boolean flipped alone, and random mixes.
    let mut settings: Vec<Vec<(&str, bool)>> = vec![vec![]];
    for b in BOOLEANS {
        settings.push(vec![(b.name, !b.default)]);
    }
    for _ in 0..24 {
        settings.push(
            BOOLEANS
                .iter()
                .filter(|_| rng.chance(50))
                .map(|b| (b.name, !b.default))
                .collect(),
        );
    }
    let booleans: Vec<Booleans> = settings
        .iter()
        .map(|v| {
            let mut b = Booleans::defaults();
            for (name, value) in v {
                b.set(name, *value).unwrap_or_else(|e| panic!("{e}"));
            }
            b
        })
        .collect();

    // (subject, class, target) triples with some TE allow under some setting: to get
    // plenty of allows and constraint checks, not only "no rule".
    let all_on = {
        let mut b = Booleans::defaults();
        for d in BOOLEANS {
            b.set(d.name, true).unwrap_or_else(|e| panic!("{e}"));
        }
        b
    };
    let probe = MlsRange::single(Level::new(0));
    let mut interesting = Vec::new();
    for s in SUBJECT_TYPES {
        for c in CLASSES {
            for t in TYPES {
                let role = if matches!(c.name, "process" | "unix_stream_socket")
                    && SUBJECT_TYPES.contains(&t.name)
                {
                    "system_r"
                } else {
                    "object_r"
                };
                let av = access_vector(
                    &ctx("system_u", "system_r", s, probe),
                    &ctx("system_u", role, t.name, probe),
                    c.name,
                    &all_on,
                )
                .unwrap_or_else(|u| panic!("{u}"));
                if av.verdicts.iter().any(|v| v.outcome != Outcome::NoTeRule) {
                    interesting.push((*s, c.name, t.name));
                }
            }
        }
    }
    assert!(
        interesting.len() > 100,
        "only {} interesting triples",
        interesting.len()
    );

    let domain_targets: Vec<&str> = SUBJECT_TYPES.iter().copied().chain(["xserver_t"]).collect();
    let mut queries = Vec::with_capacity(n);
    for _ in 0..n {
        let (sty, class, tty) = if rng.chance(65) {
            *rng.pick(&interesting)
        } else {
            (
                *rng.pick(SUBJECT_TYPES),
                rng.pick(CLASSES).name,
                rng.pick(TYPES).name,
            )
        };
        let suser = *rng.pick(&["system_u", "system_u", "system_u", "unconfined_u", "root"]);
        let slow = level(&mut rng);
        let s = ctx(suser, "system_r", sty, range_around(&mut rng, slow));
        let tlow = related(&mut rng, &slow);
        let trange = range_around(&mut rng, tlow);
        let domain_class = matches!(class, "process" | "unix_stream_socket");
        let t = if domain_class && (domain_targets.contains(&tty) || rng.chance(60)) {
            let tty = if domain_targets.contains(&tty) {
                tty
            } else {
                *rng.pick(&domain_targets)
            };
            let tuser = *rng.pick(&["system_u", "system_u", "unconfined_u", "root"]);
            ctx(tuser, "system_r", tty, trange)
        } else {
            let tuser = *rng.pick(&[
                "system_u",
                "system_u",
                "system_u",
                "unconfined_u",
                "staff_u",
                "user_u",
                "sysadm_u",
                "root",
                "xdm",
            ]);
            ctx(tuser, "object_r", tty, trange)
        };
        let bools = if rng.chance(30) {
            0
        } else {
            rng.below(booleans.len())
        };
        let cdef = CLASSES
            .iter()
            .find(|c| c.name == class)
            .unwrap_or_else(|| panic!("class {class}"));
        let av = access_vector(&s, &t, class, &booleans[bools]).unwrap_or_else(|u| panic!("{u}"));
        let te_ok: Vec<&'static str> = av
            .verdicts
            .iter()
            .filter(|v| v.outcome != Outcome::NoTeRule)
            .map(|v| v.perm)
            .collect();
        let mut perms: Vec<&'static str> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let p = if !te_ok.is_empty() && rng.chance(70) {
                *rng.pick(&te_ok)
            } else {
                *rng.pick(cdef.perms)
            };
            if !perms.contains(&p) {
                perms.push(p);
            }
        }
        queries.push(Query {
            s,
            t,
            class,
            perms,
            bools,
        });
    }
    queries.sort_by_key(|q| q.bools);

    // Drive the oracle.
    let oracle = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/sepol_oracle.py");
    let mut child = Command::new(PYTHON)
        .arg(&oracle)
        .arg(&policy)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", oracle.display()));
    let mut input = String::new();
    let mut current = usize::MAX;
    let mut lines_per_query = Vec::new();
    for q in &queries {
        if q.bools != current {
            current = q.bools;
            let list: Vec<String> = settings[q.bools]
                .iter()
                .map(|(k, v)| format!("{k}={}", u8::from(*v)))
                .collect();
            input.push_str(&format!("B\t{}\n", list.join(",")));
            lines_per_query.push(None);
        }
        input.push_str(&format!(
            "Q\t{}\t{}\t{}\t{}\n",
            q.s,
            q.t,
            q.class,
            q.perms.join(",")
        ));
        lines_per_query.push(Some(q));
    }
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("oracle stdin"));
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| panic!("oracle stdout"));
    let answers: Vec<String> = BufReader::new(stdout)
        .lines()
        .map(|l| l.unwrap_or_default())
        .collect();
    let _ = writer.join();
    let status = child.wait().unwrap_or_else(|e| panic!("oracle wait: {e}"));
    assert!(status.success(), "oracle failed: {status}");
    assert_eq!(
        answers.len(),
        lines_per_query.len(),
        "oracle answered {} of {} lines",
        answers.len(),
        lines_per_query.len()
    );

    let mut mismatches = Vec::new();
    let (mut checks, mut allow_q, mut deny_q) = (0usize, 0usize, 0usize);
    let mut per_code = std::collections::BTreeMap::<String, usize>::new();
    for (ans, q) in answers.iter().zip(&lines_per_query) {
        let Some(q) = q else {
            assert_eq!(ans, "ok", "boolean setting");
            continue;
        };
        let av = access_vector(&q.s, &q.t, q.class, &booleans[q.bools])
            .unwrap_or_else(|u| panic!("{u}"));
        let expected: Vec<String> = q
            .perms
            .iter()
            .map(|p| {
                let v = av.verdict(p).unwrap_or_else(|| panic!("perm {p}"));
                code(v.outcome, v.audited)
            })
            .collect();
        let expected = expected.join(",");
        checks += q.perms.len();
        for c in ans.split(',') {
            *per_code.entry(c.to_owned()).or_default() += 1;
        }
        // The decision API must agree with the per-permission verdicts.
        let dec = decide(&q.s, &q.t, q.class, &q.perms, &booleans[q.bools]);
        let all_allowed = ans.split(',').all(|c| c == "A");
        match (&dec, all_allowed) {
            (Decision::Allow, true) => allow_q += 1,
            (Decision::Deny(_), false) => deny_q += 1,
            _ => mismatches.push(format!("decide() {dec:?} vs libsepol {ans}")),
        }
        if *ans != expected {
            mismatches.push(format!(
                "{}\t{}\t{}\t{}\tbools {:?}: model {expected}, libsepol {ans}",
                q.s,
                q.t,
                q.class,
                q.perms.join(","),
                settings[q.bools]
            ));
        }
    }
    let summary = format!(
        "differential: {n} queries, {checks} permission checks, {} boolean settings, seed {seed:#x}: \
         {} disagreements; queries allowed {allow_q}, denied {deny_q}; per-permission libsepol verdicts {per_code:?}",
        settings.len(),
        mismatches.len()
    );
    eprintln!("{summary}");
    if !mismatches.is_empty() {
        for m in mismatches.iter().take(25) {
            eprintln!("  MISMATCH {m}");
        }
        panic!("{summary}");
    }
    // Guard against a vacuous run: every kind of verdict must occur often.
    for (code, min) in [("A", 2000), ("T/1", 1000), ("C/1", 1000), ("T/0", 20)] {
        let got = per_code.get(code).copied().unwrap_or(0);
        assert!(
            got >= min,
            "only {got} '{code}' verdicts (want >= {min}); {summary}"
        );
    }
    assert!(
        n >= 20_000 || std::env::var("SVIRT_DIFF_QUERIES").is_ok(),
        "at least 20000 queries"
    );
}
