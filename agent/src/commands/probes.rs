//! `agent probes --pid N | --file F`: the USDT probes a process or file has.

use std::process::ExitCode;

use agent::{target::Target, usdt};
use anyhow::Context as _;

use crate::cli::ProbesArgs;

pub fn run(args: &ProbesArgs) -> anyhow::Result<ExitCode> {
    let probes = match (&args.file, args.pid) {
        (Some(file), _) => usdt::probes_in_file(file)
            .with_context(|| format!("cannot read USDT probes of {}", file.display()))?,
        (None, Some(pid)) => {
            Target::open(pid)?;
            usdt::probes_in_process(pid)
                .with_context(|| format!("cannot read USDT probes of PID {pid}"))?
        }
        (None, None) => anyhow::bail!("give --pid N or --file FILE"),
    };
    if probes.is_empty() {
        eprintln!("agent: no USDT probes found");
    } else {
        print!("{}", usdt::format_probe_list(&probes));
    }
    Ok(ExitCode::SUCCESS)
}
