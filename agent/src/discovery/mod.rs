//! Finding the processes a host-mode agent traces: which ones the selectors
//! name ([`selector`]), those already running (one pass over `/proc`,
//! [`scan`]) and those that start later, reported by the kernel as they
//! exec ([`exec`]).

pub mod binaries;
pub mod exec;
pub mod glob;
pub mod scan;
pub mod selector;

pub use exec::{Exec, ExecWatch, ExecWatchError, resume};
pub use selector::{SelectorError, Selectors};
