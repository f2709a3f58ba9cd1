//! `agent inspect BINARY|--pid N`: what the agent finds in a Go binary.

use std::process::ExitCode;

use agent::{binary::GoBinary, target::Target};
use anyhow::Context as _;

use crate::cli::InspectArgs;

pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let path = match (&args.binary, args.pid) {
        (Some(path), _) => path.clone(),
        (None, Some(pid)) => Target::open(pid)?.exe_path,
        (None, None) => anyhow::bail!("give a binary or --pid N"),
    };
    let bin =
        GoBinary::open(&path).with_context(|| format!("cannot inspect {}", path.display()))?;
    let report = agent::binary::inspect(&bin);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}
