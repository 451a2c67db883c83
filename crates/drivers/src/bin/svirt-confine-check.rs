//! Test helper: tries the accesses named on its command line and reports each result on
//! one line, so a test can run it under the drivers' child hooks and see what the kernel
//! allowed. Not part of svirt's runtime.
//!
//! Arguments (each one an operation): `read:PATH`, `write:PATH`, `readdir:PATH`,
//! `create:PATH`, `signal:PID:SIGNO`, `tcp:PORT` (connect to 127.0.0.1), `ids`.
//! Output: `OP ARG ok` or `OP ARG err ERRNO`, and for `ids` one line
//! `ids uid=R,E,S gid=R,E,S groups=A,B caps=EFF,PRM,INH ambient=N nnp=N`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::TcpStream;

fn outcome(op: &str, arg: &str, r: io::Result<()>) {
    match r {
        Ok(()) => println!("{op} {arg} ok"),
        Err(e) => println!("{op} {arg} err {}", e.raw_os_error().unwrap_or(-1)),
    }
}

fn signal(arg: &str) -> io::Result<()> {
    let mut it = arg.split(':');
    let pid: i32 = it
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(io::ErrorKind::InvalidInput)?;
    let sig: i32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: kill with integer arguments.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ids() -> String {
    let (mut r, mut e, mut s) = (0, 0, 0);
    let (mut gr, mut ge, mut gs) = (0, 0, 0);
    // SAFETY: out-pointers to locals.
    unsafe {
        libc::getresuid(&mut r, &mut e, &mut s);
        libc::getresgid(&mut gr, &mut ge, &mut gs);
    }
    let mut groups = [0 as libc::gid_t; 64];
    // SAFETY: the buffer holds 64 entries.
    let n = unsafe { libc::getgroups(64, groups.as_mut_ptr()) };
    let groups: Vec<String> = groups[..usize::try_from(n).unwrap_or(0)]
        .iter()
        .map(|g| g.to_string())
        .collect();
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget with a v3 header and two data structs.
    unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    let caps = |f: fn(&Data) -> u32| (u64::from(f(&d[1])) << 32) | u64::from(f(&d[0]));
    let mut ambient = 0;
    for c in 0..64 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_IS_SET, c, 0, 0) } == 1 {
            ambient += 1;
        }
    }
    let mut bounding = 0;
    for c in 0..64 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, c, 0, 0, 0) } == 1 {
            bounding += 1;
        }
    }
    // SAFETY: prctl with integer arguments.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    format!(
        "ids uid={r},{e},{s} gid={gr},{ge},{gs} groups={} caps={:x},{:x},{:x} ambient={ambient} bounding={bounding} nnp={nnp}",
        groups.join(","),
        caps(|d| d.effective),
        caps(|d| d.permitted),
        caps(|d| d.inheritable),
    )
}

fn main() {
    for a in std::env::args().skip(1) {
        let (op, arg) = a.split_once(':').unwrap_or((a.as_str(), ""));
        let r = match op {
            "read" => File::open(arg).and_then(|mut f| f.read(&mut [0u8; 1]).map(|_| ())),
            "write" => OpenOptions::new()
                .write(true)
                .open(arg)
                .and_then(|mut f| f.write_all(b"w")),
            "readdir" => std::fs::read_dir(arg).and_then(|mut d| d.next().transpose().map(|_| ())),
            "create" => OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(arg)
                .map(|_| ()),
            "signal" => signal(arg),
            "tcp" => arg
                .parse::<u16>()
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
                .and_then(|p| TcpStream::connect(("127.0.0.1", p)).map(|_| ())),
            "ids" => {
                println!("{}", ids());
                continue;
            }
            _ => {
                eprintln!("unknown operation {a}");
                std::process::exit(2);
            }
        };
        outcome(op, arg, r);
    }
}
