//! Checks that the kernel and the agent's privileges can do the job, before
//! anything is loaded, so each missing piece gets its own clear message.

use std::path::Path;

/// What is missing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "the agent needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE) to load eBPF programs"
    )]
    Privileges,
    #[error("{name} is missing: {why} (see scripts/systemd/agent.service)")]
    Missing {
        name: &'static str,
        why: &'static str,
    },
    #[error("this kernel has no BTF ({0} is missing): it needs CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf(String),
    #[error("this kernel cannot attach uprobes ({0} is missing): it needs CONFIG_UPROBE_EVENTS=y")]
    NoUprobes(String),
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn has_caps(status: &str) -> bool {
    let Some(hex) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
    else {
        return false;
    };
    let Ok(caps) = u64::from_str_radix(hex, 16) else {
        return false;
    };
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// A capability host mode needs, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needed {
    bit: u32,
    name: &'static str,
    why: &'static str,
}

/// Attaching uprobes: Linux 6.18 refuses a uprobe perf event
/// (`perf_event_open` of the `uprobe` PMU: EACCES) to CAP_BPF, CAP_PERFMON
/// and CAP_SYS_PTRACE together, and takes it with CAP_SYS_ADMIN, which also
/// stands for CAP_BPF and CAP_PERFMON (loading programs, attaching
/// tracepoints).
pub const NEEDS_SYS_ADMIN: Needed = Needed {
    bit: CAP_SYS_ADMIN,
    name: "CAP_SYS_ADMIN",
    why: "this kernel lets only it attach uprobes (CAP_PERFMON is not enough), and it loads the eBPF programs",
};
/// Other users' processes: `/proc/N/{exe,maps,fd,root,net}`, their memory.
pub const NEEDS_SYS_PTRACE: Needed = Needed {
    bit: 19,
    name: "CAP_SYS_PTRACE",
    why: "it reads other users' processes in /proc and their memory",
};
/// Continuing a program held at exec (SIGCONT to another user's process).
pub const NEEDS_KILL: Needed = Needed {
    bit: 5,
    name: "CAP_KILL",
    why: "it continues (SIGCONT) the programs it holds at exec; or give --no-hold",
};
/// `--port`: the descriptors of other users' processes (`/proc/N/fd` is
/// mode 0500), and executables in directories the agent's user cannot
/// search.
pub const NEEDS_DAC_READ_SEARCH: Needed = Needed {
    bit: 2,
    name: "CAP_DAC_READ_SEARCH",
    why: "--port reads other users' /proc/N/fd to find the processes listening",
};

/// Host mode's check of the effective capabilities: the first of `needed`
/// missing, named with why.
pub fn capabilities(needed: &[Needed]) -> Result<(), PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    capabilities_in(&status, needed)
}

fn capabilities_in(status: &str, needed: &[Needed]) -> Result<(), PreflightError> {
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| caps & (1 << bit) != 0;
    for need in needed {
        if !has(need.bit) {
            return Err(PreflightError::Missing {
                name: need.name,
                why: need.why,
            });
        }
    }
    Ok(())
}

/// Runs the checks against this machine.
pub fn preflight() -> Result<(), PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    preflight_in(Path::new("/"), nix::unistd::geteuid().is_root(), &status)
}

/// The checks against a system root (for tests).
pub fn preflight_in(root: &Path, is_root: bool, proc_status: &str) -> Result<(), PreflightError> {
    if !has_caps(proc_status) {
        // Root in a container started with `--cap-drop`: its capabilities
        // are what counts.
        return Err(if is_root {
            PreflightError::Missing {
                name: NEEDS_SYS_ADMIN.name,
                why: NEEDS_SYS_ADMIN.why,
            }
        } else {
            PreflightError::Privileges
        });
    }
    let btf = root.join("sys/kernel/btf/vmlinux");
    if !btf.exists() {
        return Err(PreflightError::NoBtf(btf.display().to_string()));
    }
    let uprobe = root.join("sys/bus/event_source/devices/uprobe/type");
    if !uprobe.exists() {
        return Err(PreflightError::NoUprobes(uprobe.display().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_piece_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        assert_eq!(
            preflight_in(root, false, "CapEff:\t0000000000000000\n"),
            Err(PreflightError::Privileges)
        );
        // Root without CAP_SYS_ADMIN (a container's `--cap-drop=ALL`).
        assert_eq!(
            preflight_in(root, true, "CapEff:\t0000000000080000\n"),
            Err(PreflightError::Missing {
                name: "CAP_SYS_ADMIN",
                why: NEEDS_SYS_ADMIN.why
            })
        );
        let admin = format!("CapEff:\t{:016x}\n", 1u64 << 21);
        assert!(matches!(
            preflight_in(root, true, &admin),
            Err(PreflightError::NoBtf(_))
        ));
        std::fs::create_dir_all(root.join("sys/kernel/btf")).expect("mkdir");
        std::fs::write(root.join("sys/kernel/btf/vmlinux"), b"").expect("write");
        assert!(matches!(
            preflight_in(root, true, &admin),
            Err(PreflightError::NoUprobes(_))
        ));
        std::fs::create_dir_all(root.join("sys/bus/event_source/devices/uprobe")).expect("mkdir");
        std::fs::write(root.join("sys/bus/event_source/devices/uprobe/type"), b"7").expect("write");
        assert_eq!(preflight_in(root, true, &admin), Ok(()));
        // CAP_BPF + CAP_PERFMON without root is enough.
        let caps = format!("CapEff:\t{:016x}\n", (1u64 << 39) | (1 << 38));
        assert_eq!(preflight_in(root, false, &caps), Ok(()));
    }

    #[test]
    fn host_mode_names_the_missing_capability() {
        let all = [
            NEEDS_SYS_ADMIN,
            NEEDS_SYS_PTRACE,
            NEEDS_DAC_READ_SEARCH,
            NEEDS_KILL,
        ];
        let with = |bits: &[u32]| {
            let caps: u64 = bits.iter().map(|b| 1u64 << b).sum();
            format!("CapEff:\t{caps:016x}\n")
        };
        assert_eq!(capabilities_in(&with(&[21, 19, 2, 5]), &all), Ok(()));
        let missing = |bits: &[u32]| match capabilities_in(&with(bits), &all) {
            Err(PreflightError::Missing { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(missing(&[39, 38, 19, 2, 5]), "CAP_SYS_ADMIN");
        assert_eq!(missing(&[21, 2, 5]), "CAP_SYS_PTRACE");
        assert_eq!(missing(&[21, 19, 5]), "CAP_DAC_READ_SEARCH");
        assert_eq!(missing(&[21, 19, 2]), "CAP_KILL");
        assert_eq!(capabilities_in(&with(&[21, 19]), &all[..2]), Ok(()));
    }

    #[test]
    fn this_machine_passes() {
        // CI runs as root on a kernel with BTF and uprobes: the checks must pass.
        if nix::unistd::geteuid().is_root() {
            assert_eq!(preflight(), Ok(()));
        }
    }
}
