//! `svirt console NAME`: attach to a running guest's serial console, as `virsh console`
//! does. The console is the guest's first `<serial>` or `<console>` on a unix socket QEMU
//! listens on (`<serial type='unix'><source mode='bind' path='…'/>`), read from the live
//! XML svirtd gives; svirt connects to it directly (as root, or as a user the socket lets
//! in) and relays bytes both ways.
//!
//! On a terminal: raw mode, `Ctrl+]` detaches (the terminal is restored on every way out).
//! Without one (scripts, tests): standard input goes to the console; svirt exits when the
//! console printed `--until TEXT`, when `--timeout` passed (an error), when the guest
//! closed the console, or once standard input ended and the console has been quiet for a
//! second. Whatever the guest prints is hostile input to nobody but the terminal it is
//! shown on: it is passed through as is, as every serial console does.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use svirt_api as api;
use svirt_domain::{ChardevRole, ChardevSource, SocketMode};

use super::client::Client;
use crate::{CliError, CmdResult};

/// `Ctrl+]`, virsh's escape.
const ESCAPE: u8 = 0x1d;

/// The socket of `name`'s console, from its live XML.
fn console_socket(client: &Client, name: &str) -> Result<PathBuf, CliError> {
    let v = client.call(
        "GET",
        &format!("/v1/domains/{}/xml", super::guest::enc(name)),
        None,
    )?;
    let api::DomainXml { xml } =
        serde_json::from_value(v).map_err(|e| CliError::failed(format!("svirtd's reply: {e}")))?;
    let parsed = svirt_domain::parse(&xml)
        .map_err(|e| CliError::failed(format!("guest {name:?}: its live XML: {e}")))?;
    let first = parsed
        .domain
        .chardevs
        .iter()
        .find(|c| matches!(c.role, ChardevRole::Serial | ChardevRole::Console));
    match first.map(|c| &c.source) {
        Some(ChardevSource::Unix {
            path,
            mode: SocketMode::Bind,
        }) => Ok(path.clone()),
        Some(other) => Err(CliError::input(format!(
            "guest {name:?}: its console is {}; svirt console attaches to a \
             <serial type='unix'> with <source mode='bind' path='…'/>",
            describe(other)
        ))),
        None => Err(CliError::input(format!(
            "guest {name:?} has no <serial> or <console>"
        ))),
    }
}

fn describe(s: &ChardevSource) -> &'static str {
    match s {
        ChardevSource::File { .. } => "a file (type='file')",
        ChardevSource::Pipe { .. } => "a pipe (type='pipe')",
        ChardevSource::Dev { .. } => "a host device (type='dev')",
        ChardevSource::Unix { .. } => "a unix socket QEMU connects to (mode='connect')",
        ChardevSource::UnixInRuntimeDir => "a unix socket without a path",
        ChardevSource::Pty => "a pty (type='pty')",
        ChardevSource::Tcp { .. } => "a tcp socket (type='tcp')",
        _ => "not a unix socket",
    }
}

/// Restores the terminal's settings when dropped.
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enter() -> Result<RawTerminal, CliError> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios on this stack.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Err(CliError::failed(format!(
                    "the terminal: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return Err(CliError::failed(format!(
                    "the terminal: {}",
                    std::io::Error::last_os_error()
                )));
            }
            Ok(RawTerminal { saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

enum Event {
    Output(Vec<u8>),
    Closed,
    InputEnded,
    Escape,
}

/// Runs `svirt console`.
pub fn run(client: &Client, name: &str, until: Option<&str>, timeout: Option<u64>) -> CmdResult {
    if until == Some("") {
        return Err(CliError::input("--until: empty text"));
    }
    let path = console_socket(client, name)?;
    let sock = UnixStream::connect(&path).map_err(|e| {
        CliError::failed(format!(
            "guest {name:?}: connect to its console {}: {e} (is it running?)",
            path.display()
        ))
    })?;
    let tty = std::io::stdin().is_terminal();
    let _raw = if tty {
        eprint!("Connected to domain '{name}'\r\nEscape character is ^] (Ctrl + ])\r\n");
        Some(RawTerminal::enter()?)
    } else {
        None
    };
    // Bounded: a guest flooding its console while stdout is slow (a pager) blocks the
    // reader thread (and then QEMU's side) instead of growing this process's memory.
    let (tx, rx) = mpsc::sync_channel::<Event>(64);
    let mut reader = sock
        .try_clone()
        .map_err(|e| CliError::failed(format!("console socket: {e}")))?;
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = out_tx.send(Event::Closed);
                    return;
                }
                Ok(n) => {
                    if out_tx.send(Event::Output(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut writer = sock;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Event::InputEnded);
                    return;
                }
                Ok(n) => {
                    let data = &buf[..n];
                    let (data, escape) = match tty.then(|| data.iter().position(|&b| b == ESCAPE)) {
                        Some(Some(i)) => (&data[..i], true),
                        _ => (data, false),
                    };
                    if writer.write_all(data).is_err() {
                        let _ = tx.send(Event::Closed);
                        return;
                    }
                    if escape {
                        let _ = tx.send(Event::Escape);
                        return;
                    }
                }
            }
        }
    });
    let deadline = timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let mut stdout = std::io::stdout().lock();
    // The tail of the output, long enough to find `until` across reads.
    let mut tail: Vec<u8> = Vec::new();
    let mut input_ended = false;
    loop {
        let wait = match (deadline, input_ended) {
            (_, true) => Duration::from_secs(1),
            (Some(d), false) => d.saturating_duration_since(Instant::now()),
            (None, false) => Duration::from_secs(3600),
        };
        let wait = match deadline {
            Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
            None => wait,
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Output(b)) => {
                let _ = stdout.write_all(&b);
                let _ = stdout.flush();
                if let Some(u) = until {
                    tail.extend_from_slice(&b);
                    if tail.windows(u.len()).any(|w| w == u.as_bytes()) {
                        return Ok(ExitCode::SUCCESS);
                    }
                    let keep = u.len().saturating_sub(1);
                    if tail.len() > keep {
                        tail.drain(..tail.len() - keep);
                    }
                }
            }
            Ok(Event::Closed) => {
                if tty {
                    eprint!("\r\n");
                }
                return match until {
                    Some(u) => Err(CliError::failed(format!(
                        "guest {name:?}: the console closed before it printed {u:?}"
                    ))),
                    None => Ok(ExitCode::SUCCESS),
                };
            }
            Ok(Event::Escape) => {
                eprint!("\r\n");
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Event::InputEnded) => input_ended = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(CliError::failed(match until {
                        Some(u) => {
                            format!("guest {name:?}: the console did not print {u:?} in time")
                        }
                        None => format!("guest {name:?}: console timeout"),
                    }));
                }
                if input_ended && until.is_none() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(ExitCode::SUCCESS),
        }
    }
}
