//! The client side of svirtd's API: HTTP/1.1 + JSON over a unix socket.
//!
//! A deliberately small blocking client (one request per connection, `Connection: close`):
//! the CLI makes one or two calls per run, and starting a tokio runtime and a hyper client
//! for that would cost more than the calls themselves (`svirt start` is on the path the
//! start-latency benchmark measures).

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::CliError;

/// Where svirtd listens when neither `--connect` nor `SVIRT_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/svirt/svirtd.sock";

/// `--connect`, shared by every command that talks to svirtd.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectArgs {
    /// svirtd's API socket, as `unix:PATH` (or a plain path). Default: /run/svirt/svirtd.sock.
    #[arg(long, global = true, env = "SVIRT_SOCKET", value_name = "unix:PATH")]
    pub connect: Option<String>,
}

/// One answer of svirtd.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body, decoded as JSON (`Value::Null` when empty).
    pub body: Value,
}

/// How long a call waits for svirtd's answer unless told otherwise: ample for every call
/// whose work is bounded (a hung daemon still ends the command).
pub const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// A connection target.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    /// `None`: wait for the answer as long as svirtd keeps the connection open.
    read_timeout: Option<Duration>,
}

/// Restores the default SIGPIPE action, so `svirt list | head` ends quietly like other
/// Unix tools instead of panicking on a closed stdout (Rust ignores SIGPIPE by default).
pub fn default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

pub use svirt_manager::host_checks::io_text;

impl Client {
    /// The client for `--connect` / `SVIRT_SOCKET`, or the default socket.
    pub fn new(args: &ConnectArgs) -> Result<Client, CliError> {
        let socket = match args.connect.as_deref() {
            None | Some("") => PathBuf::from(DEFAULT_SOCKET),
            Some(s) => match s.strip_prefix("unix:") {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                Some(_) => return Err(CliError::input("--connect unix: needs a socket path")),
                None if s.contains("://") => {
                    return Err(CliError::input(format!(
                        "--connect {s}: only unix:PATH is supported"
                    )));
                }
                None => PathBuf::from(s),
            },
        };
        Ok(Client {
            socket,
            read_timeout: Some(READ_TIMEOUT),
        })
    }

    /// This client with another read timeout (`None`: no limit).
    pub fn with_read_timeout(&self, read_timeout: Option<Duration>) -> Client {
        Client {
            socket: self.socket.clone(),
            read_timeout,
        }
    }

    /// This client without a read timeout, for the calls svirtd answers only once a label
    /// or restore of any size is done (start, shutdown, destroy: a share of millions of
    /// files can take longer than any fixed limit, and svirtd waits for it without one).
    /// A daemon that dies closes the connection, which ends the wait.
    pub fn waiting(&self) -> Client {
        self.with_read_timeout(None)
    }

    /// The socket path.
    #[cfg(test)]
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Sends one request and reads the whole answer. Errors of the transport are
    /// [`CliError`]s already worded for people; HTTP errors come back as a [`Response`].
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, CliError> {
        self.request_patiently(method, path, body, None)
    }

    /// Like [`Client::request`]; if no answer has come after `slow.0`, calls `slow.1`
    /// once and goes on waiting (with this client's read timeout). A second thread that
    /// shows progress is then started only by requests that need one.
    fn request_patiently(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        mut slow: Option<(Duration, &mut dyn FnMut())>,
    ) -> Result<Response, CliError> {
        let stream = UnixStream::connect(&self.socket).map_err(|e| {
            CliError::failed(format!(
                "cannot connect to svirtd at {}: {} (is svirtd running?)",
                self.socket.display(),
                io_text(&e)
            ))
        })?;
        let set_timeout = |t: Option<Duration>| {
            stream.set_read_timeout(t).map_err(|e| {
                CliError::failed(format!("cannot set the read timeout: {}", io_text(&e)))
            })
        };
        let patience = slow.as_ref().map(|(after, _)| *after);
        set_timeout(match (patience, self.read_timeout) {
            (Some(p), Some(t)) => Some(p.min(t)),
            (Some(p), None) => Some(p),
            (None, t) => t,
        })?;
        let payload = match body {
            Some(v) => serde_json::to_vec(v)
                .map_err(|e| CliError::failed(format!("cannot encode request: {e}")))?,
            None => Vec::new(),
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: svirtd\r\nConnection: close\r\nAccept: application/json\r\n"
        );
        if body.is_some() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        req.push_str("\r\n");
        let lost = |e: io::Error| {
            CliError::failed(format!(
                "connection to svirtd at {} lost: {}",
                self.socket.display(),
                io_text(&e)
            ))
        };
        // svirtd may answer before it has read the whole request (a body over its limit:
        // 413) and close the connection: the write then fails (EPIPE, ECONNRESET), but its
        // answer is waiting to be read, and it says more than "Broken pipe".
        let sent = send_all(&stream, req.as_bytes()).and_then(|()| send_all(&stream, &payload));
        // Room for a typical answer in one read (read_to_end grows from 32 bytes).
        let mut raw = Vec::with_capacity(16 * 1024);
        let mut read = (&stream).read_to_end(&mut raw);
        if let (Err(e), Some((_, on_slow))) = (&read, slow.as_mut())
            && matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
            && sent.is_ok()
        {
            // Not an error: the answer is only slow. What was read so far stays in `raw`.
            on_slow();
            set_timeout(self.read_timeout)?;
            read = (&stream).read_to_end(&mut raw);
        }
        if let Err(e) = sent {
            return match parse_response(&raw) {
                Ok(r) => Ok(r),
                Err(_) => Err(lost(e)),
            };
        }
        read.map_err(lost)?;
        parse_response(&raw).map_err(|m| CliError::failed(format!("bad answer from svirtd: {m}")))
    }

    /// Like [`Client::request`], but turns an HTTP error into the daemon's one-line message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        self.call_patiently(method, path, body, None)
    }

    /// Like [`Client::call`]; `on_slow` runs once if no answer has come after `after`
    /// (e.g. to start showing progress), then the call goes on waiting.
    pub fn call_patiently(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        slow: Option<(Duration, &mut dyn FnMut())>,
    ) -> Result<Value, CliError> {
        let r = self.request_patiently(method, path, body, slow)?;
        if (200..300).contains(&r.status) {
            return Ok(r.body);
        }
        let msg = r
            .body
            .get("error")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| format!("svirtd answered HTTP {}", r.status));
        // 4xx are the caller's mistake (bad XML, unknown guest): exit status 2 like other input errors.
        Err(if (400..500).contains(&r.status) {
            CliError::input(msg)
        } else {
            CliError::failed(msg)
        })
    }
}

/// Writes all of `buf` with `MSG_NOSIGNAL`: a peer that closed gives EPIPE, never a
/// SIGPIPE (the guest commands restore SIGPIPE's default action for stdout, which would
/// otherwise kill the CLI before it reads svirtd's answer).
fn send_all(stream: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice of `buf.len()` bytes; the fd is the
        // stream's, open for the duration of the call.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one HTTP/1.1 response (status line, headers, body with Content-Length,
/// chunked encoding, or up to end of stream).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty answer")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = Some(v.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[head_end + 4..];
    let body: Vec<u8> = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or("answer shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| format!("body is not JSON: {e}"))?
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n{\"error\":\"nope\"}\n")
            .expect("parse");
        assert_eq!(r.status, 404);
        assert_eq!(r.body["error"], "nope");
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1,2\r\n2\r\n,3\r\n1\r\n]\r\n0\r\n\r\n")
            .expect("parse");
        assert_eq!(r.body, serde_json::json!([1, 2, 3]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}").is_err());
    }

    #[test]
    fn connect_argument_forms() {
        let c = |s: Option<&str>| {
            Client::new(&ConnectArgs {
                connect: s.map(String::from),
            })
        };
        assert_eq!(
            c(None).expect("default").socket(),
            Path::new(DEFAULT_SOCKET)
        );
        assert_eq!(
            c(Some("unix:/tmp/x.sock")).expect("unix").socket(),
            Path::new("/tmp/x.sock")
        );
        assert_eq!(
            c(Some("/tmp/y.sock")).expect("path").socket(),
            Path::new("/tmp/y.sock")
        );
        assert!(c(Some("tcp://host:1")).is_err());
        assert!(c(Some("unix:")).is_err());
    }

    /// A daemon that answers after 1.5 s: a client with a 1 s read timeout gives up, a
    /// waiting one (start, shutdown, destroy) gets the answer.
    #[test]
    fn waiting_calls_have_no_read_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("slow.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut c, _) = listener.accept().expect("accept");
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                std::thread::sleep(Duration::from_millis(1500));
                let _ =
                    c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"reason\":\"x\"}");
            }
        });
        let c = Client::new(&ConnectArgs {
            connect: Some(format!("unix:{}", sock.display())),
        })
        .expect("client");
        let e = c
            .with_read_timeout(Some(Duration::from_secs(1)))
            .request("POST", "/v1/domains/g/destroy", None)
            .expect_err("timed out");
        assert!(e.to_string().contains("lost"), "{e}");
        let v = c
            .waiting()
            .call("POST", "/v1/domains/g/destroy", None)
            .expect("answer after 1.5 s");
        assert_eq!(v["reason"], "x");
        server.join().expect("server");
    }

    /// A slow answer: `on_slow` runs once, after the patience, and the answer (sent in two
    /// parts, one before the patience ran out) is read whole. A quick answer never calls it.
    #[test]
    fn a_slow_answer_calls_on_slow_once_and_is_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("slow.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let server = std::thread::spawn(move || {
            for delay in [700, 0] {
                let (mut c, _) = listener.accept().expect("accept");
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"rea");
                std::thread::sleep(Duration::from_millis(delay));
                let _ = c.write_all(b"son\":\"x\"}");
            }
        });
        let c = Client::new(&ConnectArgs {
            connect: Some(format!("unix:{}", sock.display())),
        })
        .expect("client");
        for (expected_calls, what) in [(1, "slow"), (0, "quick")] {
            let mut calls = 0;
            let t0 = std::time::Instant::now();
            let mut on_slow = || {
                calls += 1;
                assert!(
                    t0.elapsed() >= Duration::from_millis(200),
                    "called too early"
                );
            };
            let v = c
                .waiting()
                .call_patiently(
                    "POST",
                    "/v1/domains",
                    None,
                    Some((Duration::from_millis(200), &mut on_slow)),
                )
                .expect(what);
            assert_eq!(v["reason"], "x", "{what}");
            assert_eq!(calls, expected_calls, "{what}");
        }
        server.join().expect("server");
    }

    /// A server that answers 413 after the headers and closes while the client is still
    /// writing a large body: the client returns that answer (before: "connection to svirtd
    /// … lost: Broken pipe").
    #[test]
    fn an_answer_sent_while_the_request_is_written_is_read() {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            let body = br#"{"error":"request body over svirtd's limit of 8 bytes"}"#;
            let head = format!(
                "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            c.write_all(head.as_bytes()).unwrap();
            c.write_all(body).unwrap();
            // Close with the rest of the body unread.
        });
        let client = Client::new(&ConnectArgs {
            connect: Some(format!("unix:{}", sock.display())),
        })
        .unwrap();
        let big = Value::String("x".repeat(50 << 20));
        let r = client.request("POST", "/v1/domains", Some(&big)).unwrap();
        assert_eq!(r.status, 413);
        server.join().unwrap();
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .contains("limit of 8 bytes")
        );
    }

    #[test]
    fn connection_refused_is_one_clear_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("none.sock");
        let c = Client::new(&ConnectArgs {
            connect: Some(format!("unix:{}", sock.display())),
        })
        .expect("client");
        let e = c
            .request("GET", "/v1/domains", None)
            .expect_err("no daemon");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot connect to svirtd at {}: No such file or directory (is svirtd running?)",
                sock.display()
            )
        );
    }
}
