//! A minimal QMP server so a manager treats the probe like any VMM: greeting,
//! `qmp_capabilities`, `query-status`, `cont`/`stop`, `query-kvm`, `system_powerdown`,
//! `quit`. It serves the listening socket the manager passes the way it passes one to
//! QEMU: `-chardev socket,id=charmonitor,fd=N,server=on,wait=off` plus
//! `-mon chardev=charmonitor,mode=control`.

use std::io::{BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

/// The fd of the QMP listening socket in qemu-style arguments, if any.
pub fn monitor_fd(args: &[String]) -> Option<RawFd> {
    // Only a chardev used by a control-mode monitor is QMP.
    let control: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "-mon" && w[1].split(',').any(|o| o == "mode=control"))
        .filter_map(|w| w[1].split(',').find_map(|o| o.strip_prefix("chardev=")))
        .collect();
    args.windows(2)
        .filter(|w| w[0] == "-chardev")
        .find_map(|w| {
            let mut opts = w[1].split(',');
            if opts.next() != Some("socket") {
                return None;
            }
            let opts: Vec<&str> = opts.collect();
            let id = opts.iter().find_map(|o| o.strip_prefix("id="))?;
            if !control.contains(&id) {
                return None;
            }
            opts.iter()
                .find_map(|o| o.strip_prefix("fd="))?
                .parse()
                .ok()
        })
}

/// Whether the VMM was asked to start with vCPUs stopped.
pub fn starts_paused(args: &[String]) -> bool {
    args.iter().any(|a| a == "-S")
}

/// What a QMP command does to the VMM besides its reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing.
    None,
    /// Exit the process after replying (`quit`, `system_powerdown`).
    Exit,
}

/// The reply to one QMP message, and its effect. `running` is the vCPU state.
pub fn answer(msg: &Value, running: &AtomicBool) -> (Value, Effect) {
    let id = msg.get("id").cloned();
    let with_id = |mut v: Value| {
        if let (Some(id), Some(obj)) = (&id, v.as_object_mut()) {
            obj.insert("id".into(), id.clone());
        }
        v
    };
    let Some(cmd) = msg.get("execute").and_then(Value::as_str) else {
        return (
            with_id(
                json!({"error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}),
            ),
            Effect::None,
        );
    };
    let ok = json!({"return": {}});
    let (reply, effect) = match cmd {
        "qmp_capabilities" => (ok, Effect::None),
        "query-status" => {
            let r = running.load(Ordering::SeqCst);
            (
                json!({"return": {"status": if r { "running" } else { "paused" }, "running": r, "singlestep": false}}),
                Effect::None,
            )
        }
        "cont" => {
            running.store(true, Ordering::SeqCst);
            (ok, Effect::None)
        }
        "stop" => {
            running.store(false, Ordering::SeqCst);
            (ok, Effect::None)
        }
        "query-kvm" => (
            json!({"return": {"enabled": false, "present": false}}),
            Effect::None,
        ),
        "quit" | "system_powerdown" => (ok, Effect::Exit),
        other => (
            json!({"error": {"class": "CommandNotFound", "desc": format!("The command {other} has not been found")}}),
            Effect::None,
        ),
    };
    (with_id(reply), effect)
}

/// Serve QMP on the inherited listening socket `fd` in a background thread.
/// Exits the whole process on `quit` / `system_powerdown`, as QEMU does.
pub fn serve(fd: RawFd, paused: bool) {
    // SAFETY: the manager handed us this fd as a listening unix socket for exactly this
    // use; nothing else in the process owns it.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    let running = Arc::new(AtomicBool::new(!paused));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if serve_conn(conn, &running) == Effect::Exit {
                std::process::exit(0);
            }
        }
    });
}

fn serve_conn(mut conn: UnixStream, running: &AtomicBool) -> Effect {
    let greeting = json!({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
        "package": "svirt-probe"}, "capabilities": []}});
    if writeln!(conn, "{greeting}\r").is_err() {
        return Effect::None;
    }
    let Ok(reader) = conn.try_clone() else {
        return Effect::None;
    };
    for msg in serde_json::Deserializer::from_reader(BufReader::new(reader)).into_iter::<Value>() {
        let Ok(msg) = msg else { return Effect::None };
        let (reply, effect) = answer(&msg, running);
        let _ = writeln!(conn, "{reply}\r");
        if effect == Effect::Exit {
            if msg.get("execute").and_then(Value::as_str) == Some("system_powerdown") {
                let _ = writeln!(
                    conn,
                    "{}\r",
                    json!({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}})
                );
            }
            return Effect::Exit;
        }
    }
    Effect::None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn finds_the_control_monitor_fd() {
        let args = s(&[
            "-name",
            "guest=A",
            "-chardev",
            "socket,id=charmonitor,fd=5,server=on,wait=off",
            "-mon",
            "chardev=charmonitor,id=monitor,mode=control",
            "-S",
        ]);
        assert_eq!(monitor_fd(&args), Some(5));
        assert!(starts_paused(&args));
        // A socket chardev that is not a control monitor (a serial port) is not QMP.
        let serial = s(&[
            "-chardev",
            "socket,id=ser0,fd=7,server=on",
            "-mon",
            "chardev=x,mode=control",
        ]);
        assert_eq!(monitor_fd(&serial), None);
    }

    #[test]
    fn answers_like_qemu() {
        let running = AtomicBool::new(false);
        let (r, e) = answer(&json!({"execute": "query-status", "id": 3}), &running);
        assert_eq!(r["return"]["status"], "paused");
        assert_eq!(r["id"], 3);
        assert_eq!(e, Effect::None);
        answer(&json!({"execute": "cont"}), &running);
        assert_eq!(
            answer(&json!({"execute": "query-status"}), &running).0["return"]["running"],
            true
        );
        assert_eq!(
            answer(&json!({"execute": "nope"}), &running).0["error"]["class"],
            "CommandNotFound"
        );
        assert_eq!(
            answer(&json!({"execute": "quit"}), &running).1,
            Effect::Exit
        );
        assert!(
            answer(&json!({"foo": 1}), &running)
                .0
                .get("error")
                .is_some()
        );
    }

    #[test]
    fn serves_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // The server thread of `serve` would exit the test process on quit; drive one
        // connection by hand instead.
        let running = AtomicBool::new(true);
        let t = std::thread::spawn(move || {
            let (c, _) = listener.accept().unwrap();
            serve_conn(c, &running)
        });
        let mut c = UnixStream::connect(&path).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"QMP\""));
        writeln!(
            c,
            "{{\"execute\":\"qmp_capabilities\"}}{{\"execute\":\"query-status\"}}"
        )
        .unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "{\"return\":{}}");
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"running\""), "{line}");
        writeln!(c, "{{\"execute\":\"quit\"}}").unwrap();
        assert_eq!(t.join().unwrap(), Effect::Exit);
    }
}
