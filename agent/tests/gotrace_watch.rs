//! The directory watcher behind `agent watch DIR`: complete `*.trace` files
//! are reported once, on close-after-write or rename, never while a writer
//! still has them open.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use agent::gotrace::watch::{WatchError, watch_dir};

/// Long enough for inotify to deliver; used to assert that nothing comes.
const QUIET: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn reports_complete_trace_files_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let watched = dir.path().join("traces");
    fs::create_dir(&watched).expect("mkdir");
    let watcher = watch_dir(&watched).expect("watch_dir");
    let (tx, rx) = mpsc::channel::<Result<PathBuf, WatchError>>();
    let t = thread::spawn(move || {
        for item in watcher {
            let end = item.is_err();
            if tx.send(item).is_err() || end {
                break;
            }
        }
    });
    let next = || rx.recv_timeout(WAIT).expect("an item").expect("a path");

    // Written and closed: reported.
    fs::write(watched.join("a.trace"), b"go 1.26 trace\0\0\0").expect("write a");
    assert_eq!(next(), watched.join("a.trace"));

    // Still open for writing: not reported until closed.
    let mut f = File::create(watched.join("b.trace")).expect("create b");
    f.write_all(b"partial").expect("write b");
    f.flush().expect("flush b");
    assert!(rx.recv_timeout(QUIET).is_err(), "reported before close");
    drop(f);
    assert_eq!(next(), watched.join("b.trace"));

    // Written elsewhere and renamed in: reported once, under its new name.
    let staging = dir.path().join("c.tmp");
    fs::write(&staging, b"data").expect("write c");
    fs::rename(&staging, watched.join("c.trace")).expect("rename");
    assert_eq!(next(), watched.join("c.trace"));

    // Other names are ignored; a second close of a reported file is not a
    // new file.
    fs::write(watched.join("notes.txt"), b"x").expect("write txt");
    fs::write(watched.join(".hidden.trace"), b"x").expect("write hidden");
    fs::OpenOptions::new()
        .append(true)
        .open(watched.join("a.trace"))
        .and_then(|mut f| f.write_all(b"more"))
        .expect("append a");
    assert!(rx.recv_timeout(QUIET).is_err(), "unexpected report");

    // Deleted and created again: a new file, reported again.
    fs::remove_file(watched.join("a.trace")).expect("rm a");
    fs::write(watched.join("a.trace"), b"again").expect("rewrite a");
    assert_eq!(next(), watched.join("a.trace"));

    // Removing the directory ends the iteration with an error.
    fs::remove_dir_all(&watched).expect("rm dir");
    match rx.recv_timeout(WAIT).expect("an item") {
        Err(WatchError::DirectoryGone(p)) => assert_eq!(p, watched),
        other => panic!("expected DirectoryGone, got {other:?}"),
    }
    t.join().expect("watcher thread");
}

#[test]
fn missing_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = watch_dir(&dir.path().join("nope")).expect_err("no such directory");
    assert!(matches!(err, WatchError::Setup { .. }), "{err:?}");
}
