//! Guest commands, shaped like virsh: `start`, `list`, `info`, `dumpxml`, `shutdown`,
//! `destroy`, `console`, `qemu-monitor-command`. Each is one or two calls to svirtd's API (see
//! docs/api.md); `--json` prints the API's JSON as is (shapes in docs/cli.md).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};
use svirt_api as api;

use super::client::{Client, ConnectArgs, io_text};
use crate::{CliError, CmdResult};

/// The guest subcommands (flattened into the top level of `svirt`).
#[derive(Subcommand, Debug)]
pub enum GuestCommand {
    /// Start a guest from libvirt domain XML (returns once its QEMU answers QMP).
    Start {
        /// Domain XML file (`-` for standard input).
        xml: PathBuf,
        /// Start with the vCPUs stopped (QEMU -S).
        #[arg(long)]
        paused: bool,
        /// Print the started guest's info as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bar (or progress lines) for large filesystem shares / TPM state.
        #[arg(long)]
        no_progress: bool,
    },
    /// List guests: name, state, QEMU pid, process label per driver.
    List {
        /// Also list shut-off guests.
        #[arg(long)]
        all: bool,
        /// JSON output (an array; see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Everything about a guest: labels, uid/gid, cgroups, every resource with its labels.
    Info {
        /// Guest name.
        name: String,
        /// JSON output (see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// The live domain XML, with the <seclabel> labels in use.
    Dumpxml {
        /// Guest name.
        name: String,
    },
    /// ACPI power-down; QEMU is killed if the guest has not stopped after the timeout.
    Shutdown {
        /// Guest name.
        name: String,
        /// Seconds to wait before killing (default: svirtd's --shutdown-timeout).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Print the exit record as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bar (or progress lines) while large trees are restored.
        #[arg(long)]
        no_progress: bool,
    },
    /// Kill the guest's QEMU at once.
    Destroy {
        /// Guest name.
        name: String,
        /// Print the exit record as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bar (or progress lines) while large trees are restored.
        #[arg(long)]
        no_progress: bool,
    },
    /// Attach to the guest's serial console (its first <serial>/<console> on a unix socket
    /// QEMU listens on). On a terminal, Ctrl+] detaches.
    Console {
        /// Guest name.
        name: String,
        /// Exit (0) once the console printed this text.
        #[arg(long, value_name = "TEXT")]
        until: Option<String>,
        /// Give up (exit 1) after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Pass one QMP command to the guest's QEMU and print its reply (exit 1 if QEMU refuses).
    #[command(name = "qemu-monitor-command")]
    QemuMonitorCommand {
        /// Guest name.
        name: String,
        /// The QMP command, e.g. '{"execute":"query-status"}'.
        command: String,
        /// Indent the reply.
        #[arg(long)]
        pretty: bool,
    },
}

/// Runs a guest subcommand against svirtd.
pub fn run(cmd: GuestCommand, connect: &ConnectArgs) -> CmdResult {
    super::client::default_sigpipe();
    let client = Client::new(connect)?;
    match cmd {
        GuestCommand::Start {
            xml,
            paused,
            json,
            no_progress,
        } => start(&client, &xml, paused, json, !no_progress),
        GuestCommand::List { all, json } => list(&client, all, json),
        GuestCommand::Info { name, json } => info(&client, &name, json),
        GuestCommand::Console {
            name,
            until,
            timeout,
        } => super::console::run(&client, &name, until.as_deref(), timeout),
        GuestCommand::Dumpxml { name } => {
            let v = client.call("GET", &format!("/v1/domains/{}/xml", enc(&name)), None)?;
            let api::DomainXml { xml } = typed(&v)?;
            print!("{xml}");
            if !xml.ends_with('\n') {
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
        GuestCommand::Shutdown {
            name,
            timeout,
            json,
            no_progress,
        } => {
            let body = json!({ "timeout_secs": timeout });
            let v = stop_request(&client, &name, "shutdown", Some(&body), !no_progress);
            stopped(&name, &v?, json, "shut down")
        }
        GuestCommand::Destroy {
            name,
            json,
            no_progress,
        } => {
            let v = stop_request(&client, &name, "destroy", None, !no_progress);
            stopped(&name, &v?, json, "destroyed")
        }
        GuestCommand::QemuMonitorCommand {
            name,
            command,
            pretty,
        } => qemu_monitor_command(&client, &name, &command, pretty),
    }
}

/// `POST /v1/domains/{name}/{verb}` (shutdown, destroy), waiting as long as svirtd takes
/// (it answers once every label is restored), showing progress when it is slow.
fn stop_request(
    client: &Client,
    name: &str,
    verb: &str,
    body: Option<&serde_json::Value>,
    progress: bool,
) -> Result<serde_json::Value, CliError> {
    progress::watching(
        client,
        progress,
        || Some(name.to_string()),
        |slow| {
            client.waiting().call_patiently(
                "POST",
                &format!("/v1/domains/{}/{verb}", enc(name)),
                body,
                slow,
            )
        },
    )
}

/// Percent-encodes a guest name for a URL path segment.
pub(crate) fn enc(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn print_json(v: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::failed(format!("cannot encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Reads the domain XML of `start` (`-`: standard input), refusing one over svirtd's
/// limit ([`svirt_domain::MAX_XML_BYTES`]) before anything is sent: one line naming the
/// file and the limit (reading stops just past the limit).
fn read_xml(path: &PathBuf) -> Result<String, CliError> {
    use std::io::Read;
    let limit = svirt_domain::MAX_XML_BYTES;
    let (name, reader): (String, Box<dyn Read>) = if path.as_os_str() == "-" {
        ("standard input".into(), Box::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(path).map_err(|e| {
            CliError::input(format!("cannot read {}: {}", path.display(), io_text(&e)))
        })?;
        (path.display().to_string(), Box::new(f))
    };
    let mut bytes = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::input(format!("cannot read {name}: {}", io_text(&e))))?;
    if bytes.len() > limit {
        let size = if path.as_os_str() == "-" {
            "more than".to_string()
        } else {
            std::fs::metadata(path).map_or_else(|_| "more than".into(), |m| m.len().to_string())
        };
        return Err(CliError::input(format!(
            "{name}: {size} bytes: a domain XML may have at most {limit} bytes (1 MiB)"
        )));
    }
    String::from_utf8(bytes).map_err(|_| CliError::input(format!("{name}: not UTF-8 text")))
}

fn start(client: &Client, path: &PathBuf, paused: bool, json: bool, progress: bool) -> CmdResult {
    let xml = read_xml(path)?;
    // The guest's name is only needed once polling starts (after a delay most starts never
    // reach): parse the XML then.
    let v = progress::watching(
        client,
        progress,
        || svirt_domain::parse(&xml).ok().map(|p| p.domain.name),
        |slow| {
            client.waiting().call_patiently(
                "POST",
                "/v1/domains",
                Some(&json!({ "xml": xml, "paused": paused })),
                slow,
            )
        },
    )?;
    if json {
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let info: api::Info = typed(&v)?;
    println!(
        "Domain '{}' started from {} (pid {}, {}, {})",
        info.name,
        path.display(),
        opt(info.pid),
        info.state.as_str(),
        info.accel
    );
    Ok(ExitCode::SUCCESS)
}

/// svirtd's reply as the API type it is documented to be (`svirt_api`, the types the
/// daemon serializes).
fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, CliError> {
    serde_json::from_value(v.clone()).map_err(|e| {
        CliError::failed(format!(
            "svirtd sent a reply this svirt does not understand ({e}): are both the same version?"
        ))
    })
}

/// A number, or `-` when absent.
fn opt(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Renders rows as a virsh-style table: a header, a rule, left-aligned columns.
fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                let _ = write!(s, " {c}");
            } else {
                let _ = write!(s, " {c:<w$}  ");
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header);
    out.push('\n');
    let total: usize = widths.iter().map(|w| w + 3).sum();
    out.push_str(&"-".repeat(total.max(20)));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

fn list(client: &Client, all: bool, json: bool) -> CmdResult {
    let v = client.call("GET", &format!("/v1/domains?all={all}"), None)?;
    if json {
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let guests: Vec<api::Summary> = typed(&v)?;
    // One label column per driver model present, in a stable order.
    let mut models: Vec<String> = guests
        .iter()
        .flat_map(|g| g.labels.keys().cloned())
        .collect();
    models.sort();
    models.dedup();
    let mut header: Vec<String> = ["Name", "State", "PID"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(models.iter().map(|m| format!("{m} label")));
    let rows: Vec<Vec<String>> = guests
        .iter()
        .map(|g| {
            let mut r = vec![g.name.clone(), g.state.as_str().to_string(), opt(g.pid)];
            r.extend(
                models
                    .iter()
                    .map(|m| g.labels.get(m).map_or("-", String::as_str).to_string()),
            );
            r
        })
        .collect();
    print!("{}", table(&header, &rows));
    Ok(ExitCode::SUCCESS)
}

fn info(client: &Client, name: &str, json: bool) -> CmdResult {
    let v = client.call("GET", &format!("/v1/domains/{}", enc(name)), None)?;
    if json {
        print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_info(&typed(&v)?));
    Ok(ExitCode::SUCCESS)
}

/// The human form of `info`.
pub fn render_info(v: &api::Info) -> String {
    let mut o = String::new();
    let kv = |o: &mut String, k: &str, val: String| {
        let _ = writeln!(o, "{:<14}{val}", format!("{k}:"));
    };
    kv(&mut o, "Name", v.name.clone());
    kv(&mut o, "UUID", v.uuid.clone());
    kv(&mut o, "State", v.state.as_str().into());
    kv(&mut o, "PID", opt(v.pid));
    kv(&mut o, "Accelerator", v.accel.clone());
    kv(&mut o, "uid:gid", format!("{}:{}", opt(v.uid), opt(v.gid)));
    kv(
        &mut o,
        "cgroups",
        if v.cgroups.is_empty() {
            "-".into()
        } else {
            v.cgroups.join(", ")
        },
    );
    kv(&mut o, "Runtime dir", v.runtime_dir.clone());
    kv(&mut o, "QMP socket", v.qmp_socket.clone());
    let _ = writeln!(o, "Security labels:");
    for l in &v.labels {
        let _ = writeln!(
            o,
            "  {:<9} process: {}   image: {}",
            l.model,
            l.process.as_deref().unwrap_or("(unconfined)"),
            l.image.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(o, "Resources:");
    for r in &v.resources {
        let _ = writeln!(
            o,
            "  {}  [{}, {}, {}, {}]",
            r.path, r.device, r.kind, r.access, r.sharing
        );
        for (model, label) in &r.labels {
            let _ = writeln!(
                o,
                "      {model:<9} {}",
                label.as_deref().unwrap_or("(untouched)")
            );
        }
    }
    if let Some(exit) = &v.exit {
        let _ = writeln!(o, "Exit:         {}", exit.reason);
    }
    o
}

fn stopped(name: &str, v: &Value, json: bool, verb: &str) -> CmdResult {
    let exit: api::Exit = typed(v)?;
    let errors = &exit.restore_errors;
    if json {
        print_json(v)?;
    } else if errors.is_empty() {
        println!(
            "Domain '{name}' {verb} ({}); every label and owner restored",
            exit.reason
        );
    } else {
        println!("Domain '{name}' {verb} ({})", exit.reason);
    }
    if errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::failed(format!(
            "{name}: restore incomplete: {}",
            errors.join("; ")
        )))
    }
}

fn qemu_monitor_command(client: &Client, name: &str, command: &str, pretty: bool) -> CmdResult {
    let cmd: Value = serde_json::from_str(command)
        .map_err(|e| CliError::input(format!("the QMP command is not JSON: {e}")))?;
    if !cmd.get("execute").is_some_and(Value::is_string) {
        return Err(CliError::input(
            r#"a QMP command is an object with "execute", e.g. '{"execute":"query-status"}'"#,
        ));
    }
    let reply = client.call(
        "POST",
        &format!("/v1/domains/{}/qemu-monitor-command", enc(name)),
        Some(&cmd),
    )?;
    let out = if pretty {
        serde_json::to_string_pretty(&reply)
    } else {
        serde_json::to_string(&reply)
    };
    println!(
        "{}",
        out.map_err(|e| CliError::failed(format!("cannot encode JSON: {e}")))?
    );
    match reply.get("error") {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => Err(CliError::failed(format!(
            "QEMU refused {}: {}",
            cmd["execute"].as_str().unwrap_or("-"),
            e.get("desc")
                .and_then(Value::as_str)
                .unwrap_or("(no description)")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_for_paths() {
        assert_eq!(enc("guest-a_1.x"), "guest-a_1.x");
        assert_eq!(enc("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["Name".into(), "State".into()],
            &[
                vec!["a".into(), "running".into()],
                vec!["longer".into(), "paused".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], " Name     State");
        assert_eq!(lines[2], " a        running");
        assert_eq!(lines[3], " longer   paused");
    }
}

/// Progress of large tree operations (filesystem shares, TPM state) while a start or stop
/// request is in flight: a second thread polls `GET /v1/domains/{name}/progress`.
mod progress {
    use std::collections::HashMap;
    use std::io::{IsTerminal, Write};
    use std::sync::{Arc, Condvar, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    use serde_json::Value;

    use super::enc;
    use crate::cmd::client::Client;

    /// No polling before this: a small start is over by then and pays nothing (not even
    /// the polling thread).
    const DELAY: Duration = Duration::from_millis(300);
    /// Poll period.
    const PERIOD: Duration = Duration::from_millis(150);
    /// Trees with fewer entries get no bar (their counts are known and small).
    const MIN_ENTRIES: u64 = 1000;
    /// Plain lines: one per tree and phase when it shows up, then at most one per this.
    const LINE_EVERY: Duration = Duration::from_secs(5);

    type Stop = Arc<(Mutex<bool>, Condvar)>;

    /// The polling thread; dropping it stops the thread and clears the bars.
    pub struct Watch {
        stop: Stop,
        thread: Option<JoinHandle<()>>,
    }

    /// Runs `call` (one request, given what to do if it is slow); if `enabled` and no
    /// answer has come after [`DELAY`], shows the progress of the guest `name()` names
    /// until the answer is in.
    pub fn watching<T>(
        client: &Client,
        enabled: bool,
        name: impl FnOnce() -> Option<String>,
        call: impl FnOnce(Option<(Duration, &mut dyn FnMut())>) -> T,
    ) -> T {
        if !enabled {
            return call(None);
        }
        let mut name = Some(name);
        let mut watch = None;
        let mut start = || {
            if let Some(n) = name.take().and_then(|f| f()) {
                watch = Some(Watch::start(client, n));
            }
        };
        let r = call(Some((DELAY, &mut start)));
        drop(watch);
        r
    }

    impl Watch {
        /// Starts watching the guest `name` now.
        fn start(client: &Client, name: String) -> Watch {
            let stop: Stop = Arc::new((Mutex::new(false), Condvar::new()));
            let client = client.clone();
            let st = stop.clone();
            let thread = std::thread::Builder::new()
                .name("svirt-progress".into())
                .spawn(move || run(&client, &name, &st))
                .ok();
            Watch { stop, thread }
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            let (m, cv) = &*self.stop;
            *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Waits `d` or until stopped; true when stopped.
    fn sleep(stop: &Stop, d: Duration) -> bool {
        let (m, cv) = &**stop;
        let deadline = Instant::now() + d;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        while !*g {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = cv
                .wait_timeout(g, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }

    /// One tree as the API reports it.
    struct Tree {
        path: String,
        model: String,
        phase: String,
        done: Option<u64>,
        total: Option<u64>,
        elapsed_ms: u64,
    }

    fn trees(v: &Value) -> Vec<Tree> {
        // A reply this svirt cannot read shows no bars; the main request reports errors.
        serde_json::from_value::<Vec<svirt_api::TreeProgress>>(v.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|t| Tree {
                path: t.path,
                model: t.model,
                phase: t.phase.as_str().to_string(),
                done: t.done,
                total: t.total,
                elapsed_ms: t.elapsed_ms,
            })
            // Small trees with known counts are over before anyone could read a bar.
            .filter(|t| t.total.is_none_or(|n| n >= MIN_ENTRIES))
            .collect()
    }

    fn run(client: &Client, name: &str, stop: &Stop) {
        let path = format!("/v1/domains/{}/progress", enc(name));
        let mut view: Box<dyn View> = if std::io::stderr().is_terminal() {
            Box::new(Bars::default())
        } else {
            Box::new(Lines::default())
        };
        loop {
            // Errors (404 before the daemon has registered the guest, a daemon busy
            // elsewhere) are not this thread's to report: the main request will.
            if let Ok(r) = client.request("GET", &path, None)
                && r.status == 200
            {
                view.show(&trees(&r.body));
            }
            if sleep(stop, PERIOD) {
                break;
            }
        }
        view.finish();
    }

    trait View {
        fn show(&mut self, trees: &[Tree]);
        fn finish(&mut self);
    }

    /// Plain lines for logs and pipes: `svirt: labeling /srv/share: 50000/100000`.
    #[derive(Default)]
    struct Lines {
        /// (path, phase) → when its last line was printed.
        last: HashMap<(String, String), Instant>,
    }

    impl View for Lines {
        fn show(&mut self, trees: &[Tree]) {
            let mut err = std::io::stderr().lock();
            for t in trees {
                let key = (t.path.clone(), t.phase.clone());
                if self
                    .last
                    .get(&key)
                    .is_some_and(|at| at.elapsed() < LINE_EVERY)
                {
                    continue;
                }
                self.last.insert(key, Instant::now());
                let _ = match (t.done, t.total) {
                    (Some(d), Some(n)) => {
                        writeln!(err, "svirt: {} {}: {d}/{n}", t.phase, t.path)
                    }
                    _ => writeln!(
                        err,
                        "svirt: {} {} ({}, {:.1} s)",
                        t.phase,
                        t.path,
                        t.model,
                        t.elapsed_ms as f64 / 1000.0
                    ),
                };
            }
        }

        fn finish(&mut self) {}
    }

    /// indicatif bars on a terminal, one per tree.
    struct Bars {
        multi: MultiProgress,
        bars: HashMap<String, (ProgressBar, String)>,
    }

    impl Default for Bars {
        fn default() -> Self {
            Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: HashMap::new(),
            }
        }
    }

    fn counted_style() -> ProgressStyle {
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
    }

    fn spinner_style() -> ProgressStyle {
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
    }

    impl View for Bars {
        fn show(&mut self, trees: &[Tree]) {
            for t in trees {
                let counted = t.done.is_some() && t.total.is_some();
                let (bar, phase) = self.bars.entry(t.path.clone()).or_insert_with(|| {
                    // Styled before it is added: `add` draws it at once.
                    let style = if counted {
                        counted_style()
                    } else {
                        spinner_style()
                    };
                    let b = self.multi.add(ProgressBar::no_length().with_style(style));
                    (b, String::new())
                });
                if *phase != t.phase {
                    // A new phase counts afresh (its rate too).
                    bar.reset();
                    *phase = t.phase.clone();
                }
                match (t.done, t.total) {
                    (Some(d), Some(n)) => {
                        bar.set_style(counted_style());
                        bar.set_length(n.max(d));
                        bar.set_position(d);
                        bar.set_message(format!("{} {}", t.phase, t.path));
                    }
                    _ => {
                        bar.set_style(spinner_style());
                        bar.set_message(format!("{} {} ({})", t.phase, t.path, t.model));
                        bar.tick();
                    }
                }
            }
            // Trees no longer reported are done.
            self.bars.retain(|path, (bar, _)| {
                let live = trees.iter().any(|t| t.path == *path);
                if !live {
                    bar.finish_and_clear();
                }
                live
            });
        }

        fn finish(&mut self) {
            for (bar, _) in self.bars.values() {
                bar.finish_and_clear();
            }
            let _ = self.multi.clear();
        }
    }
}
