//! Progress of large tree operations end to end: a real svirtd (DAC + Landlock here), real
//! QEMU (TCG, paused), the real `svirt` CLI with its stderr a pipe (not a terminal), and a
//! `<filesystem>` share of 60,000 files. The DAC driver reports counts every 4,096 entries:
//! what the CLI prints is the counted form (`svirt: labeling PATH: N/TOTAL`), or the
//! uncounted one (`svirt: labeling PATH (dac, N s)`) when it polls before the first report.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, make_guest};
use serde_json::Value;

/// Enough for the labeling to outlast the CLI's first poll (300 ms after the request) with
/// room to spare on an idle machine: with 15,000 files the whole start took 0.34 s and the
/// CLI had nothing to print.
const FILES: usize = 60_000;

#[test]
fn svirt_start_prints_progress_lines_and_the_api_lists_the_share() {
    skip_unless_capable!();
    let mut d = Daemon::start(&[]);
    let share = d.path("share");
    std::fs::create_dir(&share).expect("mkdir");
    for i in 0..FILES / 1000 {
        let sub = share.join(format!("d{i}"));
        std::fs::create_dir(&sub).expect("mkdir");
        for f in 0..1000 {
            std::fs::File::create(sub.join(format!("f{f}"))).expect("create");
        }
    }
    let xml_path = make_guest(&d, "tree", false, None);
    let xml = std::fs::read_to_string(&xml_path).expect("xml");
    let fs = format!(
        "<filesystem type='mount' accessmode='passthrough'><source dir='{}'/><target dir='share'/></filesystem>\n</devices>",
        share.display()
    );
    assert!(xml.contains("</devices>"));
    std::fs::write(&xml_path, xml.replacen("</devices>", &fs, 1)).expect("xml");

    let (status, v) = d.api("GET", "/v1/domains/tree/progress", None);
    assert_eq!(status, 404, "unknown guest: {v}");

    let started = Instant::now();
    let child = Command::new(common::svirt_bin())
        .arg("--connect")
        .arg(format!("unix:{}", d.socket.display()))
        .args(["start", "--paused"])
        .arg(&xml_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run svirt start");
    // Meanwhile, the API as any client sees it.
    let mut seen: Vec<Value> = Vec::new();
    let output = {
        let mut child = child;
        loop {
            let (status, v) = d.api("GET", "/v1/domains/tree/progress", None);
            if status == 200
                && let Some(a) = v.as_array()
            {
                seen.extend(a.iter().cloned());
            }
            if child.try_wait().expect("wait").is_some() {
                break child.wait_with_output().expect("output");
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "svirt start hangs"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "svirt start failed: {stdout}\n{stderr}\nsvirtd log:\n{}",
        d.log()
    );
    eprintln!("svirt start with {FILES} files took {took:?}; its stderr:\n{stderr}");
    let share_s = share.display().to_string();
    assert!(
        seen.iter()
            .any(|t| t["path"] == share_s.as_str() && t["phase"] == "labeling"),
        "the API never listed the share while the start labeled it: {seen:?}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("svirt: "))
        .collect();
    let counted = |l: &str| {
        l.strip_prefix(&format!("svirt: labeling {share_s}: "))
            .and_then(|c| c.split_once('/'))
            .is_some_and(|(done, total)| {
                matches!((done.parse::<u64>(), total.parse::<u64>()), (Ok(d), Ok(t)) if d <= t)
            })
    };
    assert!(
        lines
            .iter()
            .any(|l| counted(l) || l.starts_with(&format!("svirt: labeling {share_s} (dac, "))),
        "no progress line on stderr: {stderr}"
    );
    // "At most a few": one per tree and phase (a DAC share is scanned, then labeled), then
    // one per 5 s per tree and phase.
    let phases = ["scanning", "labeling"]
        .iter()
        .filter(|p| lines.iter().any(|l| l.starts_with(&format!("svirt: {p} "))))
        .count()
        .max(1);
    let max = phases * (1 + (took.as_secs() / 5) as usize);
    assert!(
        lines.len() <= max,
        "{} lines in {took:?}: {stderr}",
        lines.len()
    );
    assert!(stdout.starts_with("Domain 'tree' started"), "{stdout}");

    // Over: the list is empty (not 404: the guest exists).
    let (status, v) = d.api("GET", "/v1/domains/tree/progress", None);
    assert_eq!((status, v), (200, serde_json::json!([])));
    let info = d.json(&["info", "tree", "--json"]);
    assert_eq!(info["state"], "paused");

    // --no-progress: nothing but the result, and the share restored.
    let out = d.svirt(&["destroy", "--no-progress", "tree"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("svirt: "), "{stderr}");
    let meta = std::fs::metadata(share.join("d3/f3")).expect("stat");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        0,
        "owner restored"
    );
}
