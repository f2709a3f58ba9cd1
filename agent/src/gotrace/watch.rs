//! Watching a directory for complete `*.trace` files (`agent watch DIR`).
//!
//! [`watch_dir`] returns a blocking [`Iterator`] (not a tokio `Stream`: the
//! consumer decodes each file synchronously anyway; run it on a blocking
//! thread, e.g. `tokio::task::spawn_blocking`). A file is reported when it
//! is complete: when a writer closes it (`IN_CLOSE_WRITE`) or when it is
//! renamed into the directory (`IN_MOVED_TO`, the atomic
//! write-then-rename pattern). No polling, no sleeps, and each file is
//! reported once; a name is reported again only after the file was deleted
//! or moved away and a new one appeared under that name.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Why watching failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Setting up inotify on the directory failed.
    #[error("watching {dir}")]
    Setup {
        dir: PathBuf,
        #[source]
        source: Errno,
    },
    /// Reading inotify events failed.
    #[error("reading inotify events")]
    Read(#[source] Errno),
    /// The kernel's event queue overflowed: files may have been missed; a
    /// caller may rescan the directory.
    #[error("inotify event queue overflowed; files may have been missed")]
    Overflow,
    /// The watched directory was deleted or unmounted.
    #[error("the watched directory {0} is gone")]
    DirectoryGone(PathBuf),
}

/// An iterator over new, complete `*.trace` files in a directory.
#[derive(Debug)]
pub struct DirWatcher {
    dir: PathBuf,
    inotify: Inotify,
    pending: VecDeque<Result<PathBuf, WatchError>>,
    /// Names already reported and still present.
    seen: HashSet<OsString>,
    finished: bool,
}

/// Starts watching `dir` for new `*.trace` files.
pub fn watch_dir(dir: &Path) -> Result<DirWatcher, WatchError> {
    let setup = |source| WatchError::Setup {
        dir: dir.to_path_buf(),
        source,
    };
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(setup)?;
    inotify
        .add_watch(
            dir,
            AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF
                | AddWatchFlags::IN_ONLYDIR,
        )
        .map_err(setup)?;
    Ok(DirWatcher {
        dir: dir.to_path_buf(),
        inotify,
        pending: VecDeque::new(),
        seen: HashSet::new(),
        finished: false,
    })
}

fn is_trace_name(name: &OsString) -> bool {
    let b = name.as_encoded_bytes();
    b.ends_with(b".trace") && !b.starts_with(b".")
}

impl DirWatcher {
    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn fill(&mut self) -> Result<(), WatchError> {
        let events = loop {
            match self.inotify.read_events() {
                Ok(ev) => break ev,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(WatchError::Read(e)),
            }
        };
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                self.pending.push_back(Err(WatchError::Overflow));
                continue;
            }
            if ev.mask.intersects(
                AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_IGNORED,
            ) {
                self.pending
                    .push_back(Err(WatchError::DirectoryGone(self.dir.clone())));
                self.finished = true;
                continue;
            }
            let Some(name) = ev.name else { continue };
            if !is_trace_name(&name) {
                continue;
            }
            if ev
                .mask
                .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
            {
                self.seen.remove(&name);
                continue;
            }
            if ev
                .mask
                .intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO)
                && self.seen.insert(name.clone())
            {
                self.pending.push_back(Ok(self.dir.join(&name)));
            }
        }
        Ok(())
    }
}

impl Iterator for DirWatcher {
    type Item = Result<PathBuf, WatchError>;

    /// Blocks until the next complete `*.trace` file (or an error).
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(x) = self.pending.pop_front() {
                return Some(x);
            }
            if self.finished {
                return None;
            }
            if let Err(e) = self.fill() {
                self.finished = true;
                return Some(Err(e));
            }
        }
    }
}
