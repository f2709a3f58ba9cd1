//! `--dump-on-slow DURATION`: when a traced request (a SERVER span) took
//! longer, ask the program, which keeps a flight recorder, to write it: a
//! signal it handles (`--dump-signal SIGUSR1`), or a GET of an HTTP endpoint
//! the user names (`--dump-url`). The dump then travels the ordinary capture
//! path (the `WriteTo` probes), and is decoded and joined like any other.
//!
//! Rate limit: at most one request per `--dump-interval` (default 60 s, the
//! flight recorder's window is seconds to minutes: one dump covers the slow
//! requests around it); a slow request inside the interval is counted, not
//! acted on. Spans exported incomplete (expired, evicted, at shutdown) have
//! no true duration and never trigger.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::family::Counter;
use crate::metrics::span_view::{KIND_SERVER, SpanView, key};

/// Default of `--dump-interval`.
pub const DUMP_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// How long one GET of `--dump-url` may take (connect, send, status line).
const URL_TIMEOUT: Duration = Duration::from_secs(10);

/// How the program is asked to write its flight recorder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DumpTrigger {
    /// A signal the program handles.
    Signal(Signal),
    /// An HTTP endpoint: `http://HOST:PORT/PATH`, fetched with GET.
    Url(HttpUrl),
}

/// A plain-HTTP URL, parsed at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    pub authority: String,
    pub path: String,
}

/// A bad `--dump-signal` or `--dump-url`.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("{0:?} is not a signal name (SIGUSR1, USR2, ...)")]
    Signal(String),
    #[error("{0:?} is not an http:// URL with a host (https is not supported)")]
    Url(String),
}

impl DumpTrigger {
    /// `SIGUSR1`, `USR1`, `sigusr1`.
    pub fn signal(name: &str) -> Result<Self, TriggerError> {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        full.parse::<Signal>()
            .map(DumpTrigger::Signal)
            .map_err(|_| TriggerError::Signal(name.to_owned()))
    }

    /// `http://host:port/path?query`.
    pub fn url(url: &str) -> Result<Self, TriggerError> {
        let bad = || TriggerError::Url(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains('@')
            || authority.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(DumpTrigger::Url(HttpUrl {
            authority,
            path: path.to_owned(),
        }))
    }
}

/// `--dump-on-slow` and its trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowDumpOptions {
    /// A SERVER span at least this long asks for a dump.
    pub threshold: Duration,
    pub trigger: DumpTrigger,
    /// At most one request per interval.
    pub interval: Duration,
}

/// Watches the session's spans and asks for dumps; shared with the export
/// pipeline, which shows it every span it is handed.
#[derive(Debug)]
pub struct SlowDumps {
    options: SlowDumpOptions,
    pid: AtomicU32,
    last: Mutex<Option<Instant>>,
    slow: AtomicU64,
    requested: AtomicU64,
    rate_limited: AtomicU64,
    failed: AtomicU64,
}

impl SlowDumps {
    pub fn new(options: SlowDumpOptions, pid: u32) -> Self {
        SlowDumps {
            options,
            pid: AtomicU32::new(pid),
            last: Mutex::new(None),
            slow: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Looks at one encoded span; asks for a dump if it is a complete
    /// SERVER span at least the threshold long and the interval allows.
    pub fn observe(&self, bytes: &[u8]) {
        let Some(view) = SpanView::parse(bytes) else {
            return;
        };
        if view.kind != KIND_SERVER
            || view.get(key::INCOMPLETE).is_some()
            || u128::from(view.duration_ns()) < self.options.threshold.as_nanos()
        {
            return;
        }
        self.slow.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        {
            let Ok(mut last) = self.last.lock() else {
                return;
            };
            if last.is_some_and(|t| now.duration_since(t) < self.options.interval) {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                return;
            }
            *last = Some(now);
        }
        self.request();
    }

    /// Asks the program for a dump: the signal now, the URL on a thread of
    /// its own (the span path never waits on the network).
    fn request(&self) {
        let pid = self.pid.load(Ordering::Relaxed);
        match &self.options.trigger {
            DumpTrigger::Signal(sig) => {
                let pid = i32::try_from(pid).unwrap_or(0);
                match nix::sys::signal::kill(Pid::from_raw(pid), *sig) {
                    Ok(()) => {
                        self.requested.fetch_add(1, Ordering::Relaxed);
                        log::info!(
                            "a request took over {:?}: sent {sig} to PID {pid} for a flight-recorder dump",
                            self.options.threshold
                        );
                    }
                    Err(err) => {
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        log::warn!("--dump-on-slow: cannot send {sig} to PID {pid}: {err}");
                    }
                }
            }
            DumpTrigger::Url(url) => {
                self.requested.fetch_add(1, Ordering::Relaxed);
                let url = url.clone();
                let threshold = self.options.threshold;
                let spawned = std::thread::Builder::new()
                    .name("dump-on-slow".into())
                    .spawn(move || match get(&url) {
                        Ok(status) if (200..300).contains(&status) => log::info!(
                            "a request took over {threshold:?}: GET http://{}{} answered {status}",
                            url.authority,
                            url.path
                        ),
                        Ok(status) => log::warn!(
                            "--dump-on-slow: GET http://{}{} answered {status}",
                            url.authority,
                            url.path
                        ),
                        Err(err) => log::warn!(
                            "--dump-on-slow: GET http://{}{} failed: {err}",
                            url.authority,
                            url.path
                        ),
                    });
                if spawned.is_err() {
                    self.requested.fetch_sub(1, Ordering::Relaxed);
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Its counts, for the exit line and `--summary-file`.
    pub fn counters(&self, out: &mut Vec<Counter>) {
        out.extend([
            Counter::count("dump_on_slow_requests", self.slow.load(Ordering::Relaxed)),
            Counter::count("dump_on_slow_asked", self.requested.load(Ordering::Relaxed)),
            Counter::count(
                "dump_on_slow_rate_limited",
                self.rate_limited.load(Ordering::Relaxed),
            ),
            Counter::count("dump_on_slow_failed", self.failed.load(Ordering::Relaxed)),
        ]);
    }

    /// One line for the exit summary.
    pub fn summary(&self) -> String {
        format!(
            "dump on slow: {} slow requests, {} dumps asked for, {} within the interval, {} failed",
            self.slow.load(Ordering::Relaxed),
            self.requested.load(Ordering::Relaxed),
            self.rate_limited.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }
}

/// One GET; the response's status code. Only the status line is read (the
/// body may be the dump itself, which the probes capture as it is written).
fn get(url: &HttpUrl) -> std::io::Result<u16> {
    let addr = url
        .authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the host has no address"))?;
    let mut conn = TcpStream::connect_timeout(&addr, URL_TIMEOUT)?;
    conn.set_read_timeout(Some(URL_TIMEOUT))?;
    conn.set_write_timeout(Some(URL_TIMEOUT))?;
    write!(
        conn,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: agent-dump-on-slow\r\nConnection: close\r\n\r\n",
        url.path, url.authority
    )?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let read = conn.read(&mut head[n..])?;
        if read == 0 {
            break;
        }
        n += read;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_parse() {
        assert_eq!(
            DumpTrigger::signal("usr1").expect("usr1"),
            DumpTrigger::Signal(Signal::SIGUSR1)
        );
        assert_eq!(
            DumpTrigger::signal("SIGUSR2").expect("usr2"),
            DumpTrigger::Signal(Signal::SIGUSR2)
        );
        assert!(DumpTrigger::signal("SIGNOPE").is_err());
        assert_eq!(
            DumpTrigger::url("http://127.0.0.1:6060/debug/dump?x=1").expect("url"),
            DumpTrigger::Url(HttpUrl {
                authority: "127.0.0.1:6060".into(),
                path: "/debug/dump?x=1".into()
            })
        );
        assert_eq!(
            DumpTrigger::url("http://localhost").expect("url"),
            DumpTrigger::Url(HttpUrl {
                authority: "localhost:80".into(),
                path: "/".into()
            })
        );
        assert!(DumpTrigger::url("https://x/").is_err());
        assert!(DumpTrigger::url("http:///x").is_err());
        assert!(DumpTrigger::url("http://u:p@x/").is_err());
    }
}
