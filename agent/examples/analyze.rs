//! Analyse Go binaries the way the agent does before attaching.
//!
//! ```text
//! cargo run --release -p agent --example analyze -- [--json] BIN...
//!     the `agent inspect` report, then one timing line per binary on stderr
//! cargo run --release -p agent --example analyze -- --bench BIN
//!     one line: `ms=<analysis wall time> rss_kb=<peak RSS>` (what
//!     scripts/bench-analysis.sh takes medians of)
//! cargo run --release -p agent --example analyze -- --offset-table OUT BIN...
//!     the offset-table generator behind `cargo xtask offsets` (the
//!     binaries of one Go release are measured together)
//! cargo run --release -p agent --example analyze -- --module-offset-table OUT BIN...
//!     the grpc module table generator behind `cargo xtask offsets` (every
//!     build of one module version must measure the same layouts)
//! sudo target/release/examples/analyze --site-cost SITECOST_BIN CALLS ROUNDS
//!     cost per uprobe hit at each kind of site (root: perf_event_open),
//!     on a build of agent/tests/fixtures/sitecost
//! ```

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use std::collections::BTreeMap;

use agent::binary::{
    GoBinary, MODULE_FIELDS, ModuleEntry, ModuleOffsetTable, ProbeSite, TableField, TableStruct,
    VERSIONED_MODULE_STRUCTS, inspect, kernel_emulates, module_owner as owner_of,
    render_module_offset_table, render_offset_table, validate_module_offset_table,
};
use anyhow::{Context, bail};
use iced_x86::{Decoder, DecoderOptions, Register};

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

/// From linux/perf_event.h (not in the libc crate).
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// A counting uprobe perf event on `path` at `offset`, for task `pid`: the
/// kernel traps on every hit (emulating or single-stepping the instruction)
/// whether or not a BPF program is attached.
fn open_uprobe(path: &std::ffi::CStr, offset: u64, pid: i32) -> anyhow::Result<OwnedFd> {
    let pmu: u64 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .context("reading the uprobe PMU type")?
        .trim()
        .parse()?;
    // struct perf_event_attr (PERF_ATTR_SIZE_VER8, 136 bytes) as words:
    // type:u32 size:u32 | config | ... | config1 (uprobe_path) at word 7,
    // config2 (probe_offset) at word 8; zero elsewhere (enabled, counting).
    let mut attr = [0u64; 17];
    attr[0] = pmu | (136 << 32);
    attr[7] = path.as_ptr() as u64;
    attr[8] = offset;
    // SAFETY: perf_event_open reads `size` (136) bytes of attr, which is
    // 17 initialised u64s; the path it points to outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            pid,
            -1i32,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("perf_event_open (needs root)");
    }
    // SAFETY: the syscall returned a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Per-hit cost of uprobes at each kind of site in the sitecost fixture:
/// the function's first instruction, the entry site the analysis picks,
/// every `ret`, and the NOP encodings in `main.nops`.
fn site_cost(path: &Path, calls: u64, rounds: usize) -> anyhow::Result<()> {
    let bin = GoBinary::open(path)?;
    let target = bin.function("main.target").context("main.target")?;
    let nops = bin
        .function("main.nops.abi0")
        .or_else(|| bin.function("main.nops"))
        .context("main.nops")?;
    let chosen = bin.entry_site(&target, &[Register::RAX, Register::RBX])?;
    let mut sites: Vec<(String, ProbeSite)> = Vec::new();
    let mut at = |label: &str, func: &agent::binary::Function, offset: u64| -> anyhow::Result<()> {
        let file_offset = bin
            .file_offset(func.address + offset)
            .context("file offset")?;
        let bytes = std::fs::read(path)?;
        let code = bytes
            .get(file_offset as usize..file_offset as usize + 16)
            .context("code bytes")?;
        let ins = Decoder::with_ip(64, code, func.address + offset, DecoderOptions::NONE).decode();
        sites.push((
            label.to_owned(),
            ProbeSite {
                address: func.address + offset,
                file_offset,
                instruction: format!("{ins} ({:02x?})", &code[..ins.len()]),
                emulated: kernel_emulates(&ins, code).is_some(),
                reason: String::new(),
            },
        ));
        Ok(())
    };
    at("main.target+0 (function entry)", &target, 0)?;
    for (label, off) in [
        ("nopl (0f1f00)", 0),
        ("nop (90)", 3),
        ("nopl (0f1f440000)", 4),
        ("nopl (0f1f4008)", 9),
    ] {
        at(&format!("main.nops+{off} {label}"), &nops, off)?;
    }
    sites.insert(
        1,
        (
            format!(
                "main.target+{} chosen entry site",
                chosen.address - target.address
            ),
            chosen,
        ),
    );
    for (i, ret) in bin.return_sites(&target)?.into_iter().enumerate() {
        sites.push((format!("main.target ret #{i}"), ret));
    }

    let mut child = Command::new(path)
        .arg(calls.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    let pid = i32::try_from(child.id())?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let cpath = std::ffi::CString::new(std::fs::canonicalize(path)?.to_string_lossy().as_bytes())?;
    let mut run = || -> anyhow::Result<f64> {
        stdin.write_all(b"\n")?;
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let ns: f64 = line
            .split_whitespace()
            .next()
            .context("timing line")?
            .parse()?;
        Ok(ns / calls as f64)
    };
    run()?; // warm up
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); sites.len() + 1];
    for _ in 0..rounds {
        samples[0].push(run()?);
        for (i, (_, site)) in sites.iter().enumerate() {
            let _event = open_uprobe(&cpath, site.file_offset, pid)?;
            samples[i + 1].push(run()?);
        }
    }
    drop(stdin);
    child.wait()?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut samples[0]);
    println!(
        "{:<40} {:<44} {:>9} {:>11}",
        "site", "instruction", "predicted", "us per hit"
    );
    println!(
        "{:<40} {:<44} {:>9} {:>11.3}",
        "no probe (per call)",
        "-",
        "-",
        base / 1000.0
    );
    for (i, (label, site)) in sites.iter().enumerate() {
        let cost = median(&mut samples[i + 1]) - base;
        let kind = if site.emulated { "emulated" } else { "stepped" };
        println!(
            "{label:<40} {:<44} {kind:>9} {:>11.3}",
            site.instruction,
            cost / 1000.0
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(first) = args.next() else {
        bail!(
            "usage: analyze [--json] BIN... | --bench BIN | --offset-table OUT BIN... | --module-offset-table OUT BIN..."
        );
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
        "--site-cost" => {
            let bin = PathBuf::from(args.next().context("--site-cost BIN CALLS ROUNDS")?);
            let calls: u64 = args.next().context("CALLS")?.parse()?;
            let rounds: usize = args.next().context("ROUNDS")?.parse()?;
            site_cost(&bin, calls, rounds)?;
        }
        "--offset-table" => {
            let out = PathBuf::from(args.next().context("--offset-table OUT BIN...")?);
            // The fixtures built with one release measure that release
            // together: each struct from the first of them that has it.
            let mut by_release: Vec<(String, Vec<GoBinary>)> = Vec::new();
            for path in args {
                let bin = GoBinary::open(Path::new(&path))?;
                let go = bin.build_info().go_version.to_string();
                match by_release.iter_mut().find(|(v, _)| *v == go) {
                    Some((_, bins)) => bins.push(bin),
                    None => by_release.push((go, vec![bin])),
                }
            }
            let mut entries = Vec::new();
            for (go, bins) in &by_release {
                let also: Vec<&GoBinary> = bins[1..].iter().collect();
                let entry = bins[0]
                    .offset_table_entry(&also)
                    .map_err(|e| anyhow::anyhow!("Go {go}: {e}"))?;
                eprintln!("Go {}: {} binaries", entry.go, bins.len());
                entries.push(entry);
            }
            if entries.is_empty() {
                bail!("no binaries given");
            }
            std::fs::write(&out, render_offset_table(entries)?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        "--module-offset-table" => {
            let out = PathBuf::from(args.next().context("--module-offset-table OUT BIN...")?);
            let mut entries: Vec<ModuleEntry> = Vec::new();
            for path in args {
                let bin = GoBinary::open(Path::new(&path))?;
                let go = bin.build_info().go_version.to_string();
                for (name, fields) in MODULE_FIELDS {
                    let (module, version) = owner_of(bin.build_info(), name)
                        .map_err(|e| anyhow::anyhow!("{path}: {name}: {e}"))?;
                    let layout = bin
                        .dwarf_struct(name, fields)
                        .with_context(|| format!("{path} has no DWARF"))?
                        .map_err(|e| anyhow::anyhow!("{path}: {name}: {e}"))?;
                    let Some(layout) = layout else {
                        if VERSIONED_MODULE_STRUCTS.contains(name) {
                            continue;
                        }
                        bail!("{path}: {name} not in DWARF");
                    };
                    let mut measured = BTreeMap::new();
                    for (field, m) in &layout.members {
                        measured.insert(
                            field.clone(),
                            TableField {
                                offset: m.offset,
                                size: m.size,
                                align: m.align,
                            },
                        );
                    }
                    let measured = TableStruct {
                        size: layout.size,
                        fields: measured,
                    };
                    let entry = match entries
                        .iter_mut()
                        .position(|e| e.module == module && e.version == version)
                    {
                        Some(i) => &mut entries[i],
                        None => {
                            entries.push(ModuleEntry {
                                module: module.clone(),
                                version: version.clone(),
                                go: Vec::new(),
                                structs: BTreeMap::new(),
                            });
                            entries.last_mut().expect("pushed")
                        }
                    };
                    // Two builds of one module version (another Go
                    // release, another grpc) must agree.
                    if let Some(before) = entry.structs.get(*name)
                        && *before != measured
                    {
                        bail!(
                            "{path}: {name} of {module} {version} differs from an earlier build (Go {:?}): {before:?} vs {measured:?}",
                            entry.go
                        );
                    }
                    entry.structs.insert((*name).to_owned(), measured);
                    if !entry.go.contains(&go) {
                        entry.go.push(go.clone());
                    }
                }
                eprintln!("{path}: Go {go}");
            }
            if entries.is_empty() {
                bail!("no binaries given");
            }
            for e in &mut entries {
                e.go.sort_by_key(|v| agent::binary::GoVersion::parse(v));
            }
            let json = render_module_offset_table(entries)?;
            let table = ModuleOffsetTable::parse(&json)?;
            validate_module_offset_table(&table).map_err(|e| anyhow::anyhow!(e))?;
            std::fs::write(&out, json).with_context(|| format!("writing {}", out.display()))?;
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
