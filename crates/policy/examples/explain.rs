//! The `svirt explain` wiring in miniature (the real CLI lives in crates/svirt):
//!
//! ```sh
//! cargo run -q -p svirt-policy --example explain -- SCONTEXT TCONTEXT CLASS PERM... [--bool name=on]...
//! cargo run -q -p svirt-policy --example explain -- --batch < requests.tsv
//! cargo run -q -p svirt-policy --example explain -- --avc 'type=AVC msg=audit(…): avc:  denied …'
//! ```

use std::io::{self, BufRead};
use std::process::ExitCode;

use svirt_labels::Context;
use svirt_policy::{Booleans, Decision, explain, is_avc_line, parse_avc, run_batch};

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut booleans = Booleans::defaults();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bool" => booleans.set_from_str(it.next().ok_or("--bool needs name=on|off")?)?,
            "--batch" => {
                run_batch(io::stdin().lock(), io::stdout().lock())?;
                return Ok(ExitCode::SUCCESS);
            }
            "--avc" => {
                let lines: Vec<String> = match it.next() {
                    Some(l) => vec![l.clone()],
                    None => io::stdin().lock().lines().collect::<Result<_, _>>()?,
                };
                for l in lines.iter().filter(|l| is_avc_line(l)) {
                    print!("{}", parse_avc(l)?.explain(&booleans));
                }
                return Ok(ExitCode::SUCCESS);
            }
            _ => positional.push(a.clone()),
        }
    }
    let [s, t, class, perms @ ..] = positional.as_slice() else {
        return Err("usage: explain SCONTEXT TCONTEXT CLASS PERM... [--bool name=on]".into());
    };
    let e = explain(
        &Context::parse(s)?,
        &Context::parse(t)?,
        class,
        perms,
        &booleans,
    );
    print!("{e}");
    Ok(match e.decision {
        Decision::Allow => ExitCode::SUCCESS,
        Decision::Deny(_) => ExitCode::from(1),
        Decision::UnknownToModel { .. } => ExitCode::from(2),
    })
}
