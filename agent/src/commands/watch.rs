//! `agent watch DIR`: decode each new `*.trace` file once it is complete
//! (closed after writing, or renamed into place), export its spans, keep
//! going past bad files.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use agent::{
    export::BatchConfig,
    gotrace::{self, SpanOptions, watch::WatchError},
};
use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::cli::{ExportArgs, WatchArgs};

const SHUTDOWN_BUDGET: Duration = Duration::from_millis(1500);

pub async fn run(args: &WatchArgs, export: &ExportArgs) -> anyhow::Result<ExitCode> {
    let watcher = gotrace::watch::watch_dir(&args.dir)
        .with_context(|| format!("cannot watch {}", args.dir.display()))?;
    let pipeline = super::start_pipeline(export, None, BatchConfig::default())?;
    log::info!("watching {} for *.trace files", args.dir.display());

    // The watcher blocks on inotify: it runs on its own thread, and decodes
    // each file there too, so files are handled one at a time, in order.
    let (done_tx, mut done_rx) = mpsc::channel::<Result<(), WatchError>>(1);
    let sender = pipeline.sender();
    std::thread::Builder::new()
        .name("trace-watch".into())
        .spawn(move || {
            for item in watcher {
                match item {
                    Ok(path) => decode_one(&path, &sender),
                    Err(WatchError::Overflow) => {
                        log::warn!(
                            "inotify queue overflowed: files written meanwhile may have been missed"
                        );
                    }
                    Err(err) => {
                        let _ = done_tx.blocking_send(Err(err));
                        return;
                    }
                }
            }
            let _ = done_tx.blocking_send(Ok(()));
        })
        .context("cannot start the watcher thread")?;

    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let result = tokio::select! {
        _ = sigint.recv() => Ok(()),
        _ = sigterm.recv() => Ok(()),
        done = done_rx.recv() => done.unwrap_or(Ok(())),
    };
    let snapshot = pipeline.shutdown(SHUTDOWN_BUDGET).await;
    eprintln!(
        "agent: {} spans exported; {} dropped",
        snapshot.exported,
        snapshot.dropped()
    );
    result.with_context(|| format!("stopped watching {}", args.dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn decode_one(path: &PathBuf, sender: &agent::export::SpanSender) {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(err) => {
            log::error!("{}: cannot open: {err}", path.display());
            return;
        }
    };
    let options = SpanOptions {
        extra_attributes: vec![opentelemetry::KeyValue::new(
            "trace.file.path",
            path.display().to_string(),
        )],
        ..SpanOptions::default()
    };
    let result = gotrace::Reader::from_file(file).and_then(|reader| {
        gotrace::reader_to_spans(reader, &options, &mut |batch| {
            sender.send_chunk_blocking(batch.into_chunk());
        })
    });
    match result {
        Ok(summary) => log::info!(
            "{}: {} events, {} spans",
            path.display(),
            summary.events,
            summary.spans
        ),
        Err(err) => log::error!(
            "{}: not a valid Go execution trace: {}",
            path.display(),
            agent::binary::error_chain(&err)
        ),
    }
}
