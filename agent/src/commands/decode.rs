//! `agent decode FILE...`: Go execution traces to spans, through the same
//! export pipeline as the live agent; `--dump events` prints the decoded
//! event stream instead; `--join SPANS.jsonl` makes tasks children of the
//! agent's own spans of the process.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime},
};

use agent::{
    export::{BatchConfig, SpanSender},
    gotrace::{self, JoinIndex, LiveSpans, SpanOptions, SpanSummary},
};
use anyhow::Context as _;

use crate::cli::{DecodeArgs, ExportArgs};

/// How long exporting may take after the last file is decoded.
const FLUSH_BUDGET: Duration = Duration::from_secs(30);

/// Parses `--anchor-time`.
pub fn parse_anchor(raw: Option<&str>) -> anyhow::Result<Option<SystemTime>> {
    raw.map(|s| {
        s.parse::<jiff::Timestamp>()
            .map(SystemTime::from)
            .with_context(|| {
                format!("invalid --anchor-time {s:?}: expected RFC 3339, e.g. 2026-11-21T10:00:00Z")
            })
    })
    .transpose()
}

/// Decodes one file into spans on a blocking thread.
pub async fn decode_file(
    path: &Path,
    options: SpanOptions,
    sender: SpanSender,
) -> anyhow::Result<SpanSummary> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let display = path.display().to_string();
    tokio::task::spawn_blocking(move || {
        gotrace::Reader::from_file(file)
            .and_then(|reader| {
                gotrace::reader_to_spans(reader, &options, &mut |batch| {
                    sender.send_chunk_blocking(batch.into_chunk());
                })
            })
            .with_context(|| format!("{display}: not a valid Go execution trace"))
    })
    .await
    .context("decoder thread failed")?
}

/// Reads `--join SPANS`.
fn read_live_spans(path: &Path) -> anyhow::Result<LiveSpans> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let live = LiveSpans::read_jsonl(std::io::BufReader::new(file))
        .with_context(|| format!("--join {}", path.display()))?;
    log::info!(
        "--join {}: spans of {} process(es) with goroutine ids",
        path.display(),
        live.pids().len()
    );
    Ok(live)
}

/// The process a trace file is of: `PID-...` in its name (as
/// `--save-dumps` names dumps), else the only process in the spans.
fn join_index(live: &LiveSpans, path: &Path) -> Option<Arc<JoinIndex>> {
    let pids = live.pids();
    let from_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('-'))
        .and_then(|(p, _)| p.parse::<u32>().ok())
        .filter(|p| pids.contains(p));
    let pid = match from_name {
        Some(p) => p,
        None if pids.len() == 1 => *pids.first()?,
        None => {
            log::warn!(
                "{}: not joined: the spans are of {} processes and the file name does not start with one's pid",
                path.display(),
                pids.len()
            );
            return None;
        }
    };
    Some(Arc::new(live.index_for(pid)))
}

fn dump(files: &[std::path::PathBuf]) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failed = 0;
    for path in files {
        let result = File::open(path)
            .with_context(|| format!("cannot open {}", path.display()))
            .and_then(|file| {
                gotrace::Reader::from_file(file)
                    .and_then(|reader| gotrace::dump_reader(reader, &mut out))
                    .with_context(|| format!("{}: not a valid Go execution trace", path.display()))
            });
        if let Err(err) = result {
            out.flush().ok();
            eprintln!("agent: {err:#}");
            failed += 1;
        }
    }
    out.flush().context("writing the event dump")?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn run(args: &DecodeArgs, export: &ExportArgs) -> anyhow::Result<ExitCode> {
    if args.dump.is_some() {
        return dump(&args.files);
    }
    let anchor = parse_anchor(args.anchor_time.as_deref())?;
    let live = args.join.as_deref().map(read_live_spans).transpose()?;
    let pipeline = super::start_pipeline(export, None, BatchConfig::default())?;
    let mut failed = 0;
    for path in &args.files {
        let options = SpanOptions {
            anchor_wall_time: anchor,
            extra_attributes: vec![opentelemetry::KeyValue::new(
                "trace.file.path",
                path.display().to_string(),
            )],
            join: live.as_ref().and_then(|l| join_index(l, path)),
            period_min: args.period_min,
            ..SpanOptions::default()
        };
        let joining = options.join.is_some();
        match decode_file(path, options, pipeline.sender()).await {
            Ok(summary) => log::info!(
                "{}: {} events, {} spans ({} tasks, {} regions, {} ranges, {} truncated{}){}",
                path.display(),
                summary.events,
                summary.spans,
                summary.tasks,
                summary.regions,
                summary.ranges,
                summary.truncated,
                if joining {
                    format!("; {} joined to the agent's spans", summary.joined)
                } else {
                    String::new()
                },
                if summary.approximate_time {
                    "; no clock snapshot: wall-clock times are approximate"
                } else {
                    ""
                }
            ),
            Err(err) => {
                eprintln!("agent: {err:#}");
                failed += 1;
            }
        }
    }
    let snapshot = pipeline.shutdown(FLUSH_BUDGET).await;
    eprintln!(
        "agent: {} spans exported from {} of {} files; {} dropped",
        snapshot.exported,
        args.files.len() - failed,
        args.files.len(),
        snapshot.dropped()
    );
    Ok(if failed == 0 && snapshot.dropped() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
