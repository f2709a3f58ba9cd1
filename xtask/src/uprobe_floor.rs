//! The floor of uprobe tracing: uprobes at given file offsets of a binary,
//! scoped to one process, each running a BPF program that does nothing.
//!
//! What any uprobe-based tracer costs a program before its probe does any
//! work: the breakpoint trap, the kernel's uprobe dispatch and one program
//! run. `cargo xtask bench http` puts them at the agent's own sites, so the
//! difference to the agent's row is what the agent adds.

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{Context as _, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
/// `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
/// `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `PERF_ATTR_SIZE_VER5`: every field used here is in it.
const PERF_ATTR_SIZE: usize = 112;

/// Attached empty uprobes; dropping them detaches them.
#[derive(Debug)]
pub struct EmptyUprobes {
    _program: OwnedFd,
    _events: Vec<OwnedFd>,
}

/// `r0 = 0; exit`.
fn load_empty_program() -> anyhow::Result<OwnedFd> {
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    // union bpf_attr, BPF_PROG_LOAD: prog_type @0, insn_cnt @4, insns @8,
    // license @16; everything after stays zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_KPROBE.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: `attr` is a valid bpf_attr for BPF_PROG_LOAD of its size; the
    // pointers in it outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!(
            "loading an empty BPF program: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn uprobe_pmu_type() -> anyhow::Result<u32> {
    let text = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .context("the uprobe PMU (/sys/bus/event_source/devices/uprobe/type)")?;
    Ok(text.trim().parse()?)
}

/// Attaches an empty program at each file offset of `binary`, for `pid` only.
pub fn attach(binary: &Path, offsets: &[u64], pid: u32) -> anyhow::Result<EmptyUprobes> {
    let program = load_empty_program()?;
    let pmu = uprobe_pmu_type()?;
    let path = CString::new(binary.as_os_str().as_encoded_bytes())?;
    let mut events = Vec::new();
    for &offset in offsets {
        // struct perf_event_attr: type @0, size @4, config1 (uprobe_path)
        // @56, config2 (probe_offset) @64; enabled (the disabled bit clear).
        let mut attr = [0u8; PERF_ATTR_SIZE];
        attr[0..4].copy_from_slice(&pmu.to_ne_bytes());
        attr[4..8].copy_from_slice(&(PERF_ATTR_SIZE as u32).to_ne_bytes());
        attr[56..64].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
        attr[64..72].copy_from_slice(&offset.to_ne_bytes());
        // SAFETY: `attr` is a valid perf_event_attr of the size it states;
        // the path it points to outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                pid as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            bail!(
                "uprobe at {}+{offset:#x}: {}",
                binary.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the syscall returned a new fd that nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        use std::os::fd::AsRawFd as _;
        for (request, arg) in [
            (PERF_EVENT_IOC_SET_BPF, program.as_raw_fd()),
            (PERF_EVENT_IOC_ENABLE, 0),
        ] {
            // SAFETY: both ioctls take an int argument on a perf event fd.
            if unsafe { libc::ioctl(event.as_raw_fd(), request, arg) } < 0 {
                bail!(
                    "uprobe ioctl {request:#x}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        events.push(event);
    }
    Ok(EmptyUprobes {
        _program: program,
        _events: events,
    })
}
