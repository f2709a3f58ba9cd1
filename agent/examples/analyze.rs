//! Analyse Go binaries the way the agent does before attaching.
//!
//! ```text
//! cargo run --release -p agent --example analyze -- [--json] BIN...
//!     the `agent inspect` report, then one timing line per binary on stderr
//! cargo run --release -p agent --example analyze -- --bench BIN
//!     one line: `ms=<analysis wall time> rss_kb=<peak RSS>` (what
//!     scripts/bench-analysis.sh takes medians of)
//! cargo run --release -p agent --example analyze -- --offset-table OUT BIN...
//!     the offset-table generator behind `cargo xtask offsets`
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use agent::binary::{GoBinary, inspect, render_offset_table};
use anyhow::{Context, bail};

fn peak_rss_kb() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `struct rusage` into the pointer we pass,
    // which points to a properly sized, writable MaybeUninit.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return -1;
    }
    // SAFETY: getrusage returned 0, so it initialised the struct (and it was
    // zeroed before anyway).
    unsafe { usage.assume_init() }.ru_maxrss
}

/// Everything the agent does with a binary before attaching: open, build
/// info, the built-in probes' functions, sites and offsets, plus a walk of
/// the whole function table (what a symbol-scanning tool would do).
fn analyse(path: &Path) -> anyhow::Result<(agent::binary::InspectReport, usize)> {
    let bin = GoBinary::open(path).with_context(|| format!("analysing {}", path.display()))?;
    let report = inspect(&bin);
    let functions = bin.functions().count();
    Ok((report, functions))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(first) = args.next() else {
        bail!("usage: analyze [--json] BIN... | --bench BIN | --offset-table OUT BIN...");
    };
    match first.as_str() {
        "--bench" => {
            let bin = PathBuf::from(args.next().context("--bench BIN")?);
            let start = Instant::now();
            let (report, functions) = analyse(&bin)?;
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            let found = report.probes.iter().filter(|p| p.entry.is_some()).count();
            println!(
                "ms={ms:.2} rss_kb={} functions={functions} probes_found={found}",
                peak_rss_kb()
            );
        }
        "--offset-table" => {
            let out = PathBuf::from(args.next().context("--offset-table OUT BIN...")?);
            let mut entries = Vec::new();
            for path in args {
                let bin = GoBinary::open(Path::new(&path))?;
                let entry = bin
                    .offset_table_entry()
                    .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
                eprintln!("{path}: Go {}", entry.go);
                entries.push(entry);
            }
            if entries.is_empty() {
                bail!("no binaries given");
            }
            std::fs::write(&out, render_offset_table(entries)?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        _ => {
            let json = first == "--json";
            let paths: Vec<String> = if json {
                args.collect()
            } else {
                std::iter::once(first).chain(args).collect()
            };
            for path in paths {
                let start = Instant::now();
                let (report, functions) = analyse(Path::new(&path))?;
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{report}");
                }
                eprintln!(
                    "{path}: analysed in {ms:.1} ms ({functions} functions), peak RSS {} KiB",
                    peak_rss_kb()
                );
            }
        }
    }
    Ok(())
}
