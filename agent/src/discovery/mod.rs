//! Finding the processes a host-mode agent traces: which ones the selectors
//! name ([`selector`]), those already running (one pass over `/proc`,
//! [`scan`]) and those that start later, reported by the kernel as they
//! exec ([`exec`]); `--port` through the sockets in `/proc` ([`ports`]) and
//! as they listen, `--go` by a look at each executable
//! ([`binaries::GoFiles`]).

pub mod binaries;
pub mod exec;
pub mod glob;
pub mod ports;
pub mod scan;
pub mod selector;

pub use exec::{Exec, ExecWatch, ExecWatchError, resume};
pub use selector::{SelectorError, Selectors};
