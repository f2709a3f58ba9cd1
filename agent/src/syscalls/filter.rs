//! Which system calls are traced: strace's `-e trace=` forms.
//!
//! A comma-separated list of system-call names and classes (`%file`,
//! `%network`, `%process`, `%memory`, `%signal`, `%desc`), or `all`, or
//! `none`; a leading `!` traces everything the list does not name
//! (`!futex,%memory`), as strace reads it.

use agent_common::syscalls::MAX_SYSCALLS;

use super::table::SYSCALLS;

/// strace's `%file`: takes a file name.
pub const FILE: u8 = 1;
/// strace's `%desc`: takes or returns a file descriptor.
pub const DESC: u8 = 2;
/// strace's `%network`.
pub const NETWORK: u8 = 4;
/// strace's `%process`.
pub const PROCESS: u8 = 8;
/// strace's `%signal`.
pub const SIGNAL: u8 = 16;
/// strace's `%memory`.
pub const MEMORY: u8 = 32;

const CLASSES: [(&str, u8); 6] = [
    ("file", FILE),
    ("desc", DESC),
    ("network", NETWORK),
    ("process", PROCESS),
    ("signal", SIGNAL),
    ("memory", MEMORY),
];

/// A filter that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown system call {0:?} in the syscall filter")]
    UnknownSyscall(String),
    #[error(
        "unknown class {0:?} in the syscall filter (classes: %file, %network, %process, %memory, %signal, %desc)"
    )]
    UnknownClass(String),
    #[error("empty element in the syscall filter {0:?}")]
    Empty(String),
}

/// The set of traced system calls, by number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallFilter {
    bits: [u64; (MAX_SYSCALLS / 64) as usize],
}

impl Default for SyscallFilter {
    /// Every system call.
    fn default() -> Self {
        Self::all()
    }
}

impl SyscallFilter {
    /// Every system call x86_64 has.
    pub fn all() -> Self {
        let mut filter = Self::none();
        for (nr, (name, _)) in SYSCALLS.iter().enumerate() {
            if !name.is_empty() {
                filter.set(nr);
            }
        }
        filter
    }

    pub fn none() -> Self {
        Self {
            bits: [0; (MAX_SYSCALLS / 64) as usize],
        }
    }

    fn set(&mut self, nr: usize) {
        if let Some(word) = self.bits.get_mut(nr / 64) {
            *word |= 1 << (nr % 64);
        }
    }

    /// Whether system call `nr` is traced.
    pub fn contains(&self, nr: usize) -> bool {
        self.bits
            .get(nr / 64)
            .is_some_and(|word| word & (1 << (nr % 64)) != 0)
    }

    /// The bitmap for the kernel.
    pub fn bits(&self) -> [u64; (MAX_SYSCALLS / 64) as usize] {
        self.bits
    }

    /// Reads `spec` (see the module's documentation).
    pub fn parse(spec: &str) -> Result<Self, FilterError> {
        let (negate, list) = match spec.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, spec),
        };
        let mut filter = Self::none();
        for element in list.split(',').map(str::trim) {
            match element {
                "" => return Err(FilterError::Empty(spec.to_owned())),
                "all" => filter = Self::all(),
                "none" => {}
                _ => {
                    if let Some(class) = element.strip_prefix('%') {
                        let bit = CLASSES
                            .iter()
                            .find(|(name, _)| *name == class)
                            .map(|(_, bit)| *bit)
                            .ok_or_else(|| FilterError::UnknownClass(element.to_owned()))?;
                        for (nr, (_, classes)) in SYSCALLS.iter().enumerate() {
                            if classes & bit != 0 {
                                filter.set(nr);
                            }
                        }
                    } else {
                        let nr = number(element)
                            .ok_or_else(|| FilterError::UnknownSyscall(element.to_owned()))?;
                        filter.set(nr);
                    }
                }
            }
        }
        if negate {
            let all = Self::all();
            for (word, all) in filter.bits.iter_mut().zip(all.bits) {
                *word = !*word & all;
            }
        }
        Ok(filter)
    }
}

/// The number of the system call named `name`.
pub fn number(name: &str) -> Option<usize> {
    SYSCALLS
        .iter()
        .position(|(n, _)| !n.is_empty() && *n == name)
}

/// The name of system call `nr` (`syscall_N` for a number without one).
pub fn name(nr: u32) -> std::borrow::Cow<'static, str> {
    match SYSCALLS.get(nr as usize) {
        Some((name, _)) if !name.is_empty() => std::borrow::Cow::Borrowed(name),
        _ => std::borrow::Cow::Owned(format!("syscall_{nr}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nr(name: &str) -> usize {
        number(name).expect(name)
    }

    #[test]
    fn names_and_numbers_are_x86_64s() {
        assert_eq!(nr("read"), 0);
        assert_eq!(nr("openat"), 257);
        assert_eq!(nr("exit_group"), 231);
        assert_eq!(nr("clone3"), 435);
        assert_eq!(name(1), "write");
        assert_eq!(name(400), "syscall_400");
    }

    #[test]
    fn names_classes_and_negation_as_strace_reads_them() {
        let f = SyscallFilter::parse("openat,write").expect("valid");
        assert!(f.contains(nr("openat")) && f.contains(nr("write")));
        assert!(!f.contains(nr("read")));

        let f = SyscallFilter::parse("%file").expect("valid");
        for name in ["openat", "open", "execve", "newfstatat", "stat"] {
            assert!(f.contains(nr(name)), "{name} is %file");
        }
        for name in ["read", "close", "fstat", "mmap"] {
            assert!(!f.contains(nr(name)), "{name} is not %file");
        }
        let f = SyscallFilter::parse("%network,%memory").expect("valid");
        assert!(f.contains(nr("connect")) && f.contains(nr("mmap")) && f.contains(nr("brk")));
        assert!(!f.contains(nr("write")));
        let f = SyscallFilter::parse("%process").expect("valid");
        assert!(f.contains(nr("clone")) && f.contains(nr("wait4")) && f.contains(nr("exit_group")));
        let f = SyscallFilter::parse("%signal").expect("valid");
        assert!(f.contains(nr("rt_sigaction")) && f.contains(nr("kill")));
        let f = SyscallFilter::parse("%desc").expect("valid");
        assert!(f.contains(nr("read")) && f.contains(nr("openat")) && !f.contains(nr("stat")));

        let f = SyscallFilter::parse("!futex,%memory").expect("valid");
        assert!(!f.contains(nr("futex")) && !f.contains(nr("mmap")));
        assert!(f.contains(nr("read")));
        assert!(!f.contains(400), "no number x86_64 lacks");
        assert_eq!(
            SyscallFilter::parse("all").expect("valid"),
            SyscallFilter::all()
        );
        assert_eq!(
            SyscallFilter::parse("none").expect("valid"),
            SyscallFilter::none()
        );
    }

    #[test]
    fn bad_filters_are_refused_by_name() {
        assert_eq!(
            SyscallFilter::parse("openat,nosuch"),
            Err(FilterError::UnknownSyscall("nosuch".into()))
        );
        assert_eq!(
            SyscallFilter::parse("%ipc"),
            Err(FilterError::UnknownClass("%ipc".into()))
        );
        assert!(matches!(
            SyscallFilter::parse("read,,write"),
            Err(FilterError::Empty(_))
        ));
    }
}
