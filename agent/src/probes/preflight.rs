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

/// Runs the checks against this machine.
pub fn preflight() -> Result<(), PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    preflight_in(Path::new("/"), nix::unistd::geteuid().is_root(), &status)
}

/// The checks against a system root (for tests).
pub fn preflight_in(root: &Path, is_root: bool, proc_status: &str) -> Result<(), PreflightError> {
    if !is_root && !has_caps(proc_status) {
        return Err(PreflightError::Privileges);
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
        assert!(matches!(
            preflight_in(root, true, ""),
            Err(PreflightError::NoBtf(_))
        ));
        std::fs::create_dir_all(root.join("sys/kernel/btf")).expect("mkdir");
        std::fs::write(root.join("sys/kernel/btf/vmlinux"), b"").expect("write");
        assert!(matches!(
            preflight_in(root, true, ""),
            Err(PreflightError::NoUprobes(_))
        ));
        std::fs::create_dir_all(root.join("sys/bus/event_source/devices/uprobe")).expect("mkdir");
        std::fs::write(root.join("sys/bus/event_source/devices/uprobe/type"), b"7").expect("write");
        assert_eq!(preflight_in(root, true, ""), Ok(()));
        // CAP_BPF + CAP_PERFMON without root is enough.
        let caps = format!("CapEff:\t{:016x}\n", (1u64 << 39) | (1 << 38));
        assert_eq!(preflight_in(root, false, &caps), Ok(()));
    }

    #[test]
    fn this_machine_passes() {
        // CI runs as root on a kernel with BTF and uprobes: the checks must pass.
        if nix::unistd::geteuid().is_root() {
            assert_eq!(preflight(), Ok(()));
        }
    }
}
