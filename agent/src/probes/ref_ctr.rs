//! Uprobes with a reference counter: the kernel raises a USDT semaphore
//! when it installs the probe in the target and lowers it when the probe
//! goes, including when the agent is killed (the kernel closes the agent's
//! descriptors, which unregisters the probe). libbpf attaches USDT probes
//! this way; aya 0.14 cannot pass the counter's offset, so this module opens
//! the perf event itself, as aya would, with `ref_ctr_offset` in the high
//! half of `config`, and links the program to it with `BPF_LINK_CREATE`
//! (which carries the attach cookie).

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// `PERF_UPROBE_REF_CTR_OFFSET_SHIFT`: the uprobe PMU's `config:32-63`.
const REF_CTR_OFFSET_SHIFT: u32 = 32;
/// `BPF_LINK_CREATE` (`enum bpf_cmd`).
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_PERF_EVENT` (`enum bpf_attach_type`).
const BPF_PERF_EVENT: u32 = 41;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// Where the kernel publishes the uprobe PMU's type.
const UPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/uprobe/type";

/// `struct perf_event_attr` at `PERF_ATTR_SIZE_VER7` (128 bytes; the kernel
/// takes any size it knows and zero-extends an older one).
/// Only the fields a uprobe needs are named; the rest stays zero.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// The bit field (`disabled`, `inherit`, ...): all zero.
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    /// For the uprobe PMU: a pointer to the path.
    config1: u64,
    /// For the uprobe PMU: the file offset.
    config2: u64,
    tail: [u64; 7],
}

/// The `link_create` member of `union bpf_attr` for a perf event, padded to
/// the size of the union's other members the kernel may read.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    bpf_cookie: u64,
    tail: [u64; 13],
}

/// One uprobe attached with a reference counter: closing both descriptors
/// (on drop) detaches it and lowers the counter.
#[derive(Debug)]
pub struct CountedUprobe {
    _link: OwnedFd,
    _event: OwnedFd,
}

/// Attaches the program `prog` to the instruction at file offset `offset`
/// of `path`, firing in process `pid` only, with `cookie` for
/// `bpf_get_attach_cookie` and the kernel keeping the `u16` counter at file
/// offset `ref_ctr_offset` of the same file raised while it is attached.
pub fn attach(
    prog: impl AsFd,
    path: &Path,
    pid: u32,
    offset: u64,
    ref_ctr_offset: u64,
    cookie: u64,
) -> io::Result<CountedUprobe> {
    let pmu: u32 = std::fs::read_to_string(UPROBE_PMU_TYPE)?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, UPROBE_PMU_TYPE))?;
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    let attr = PerfEventAttr {
        kind: pmu,
        size: size_of::<PerfEventAttr>() as u32,
        config: ref_ctr_offset << REF_CTR_OFFSET_SHIFT,
        sample_period: 1,
        wakeup_events: 1,
        config1: c_path.as_ptr() as u64,
        config2: offset,
        ..PerfEventAttr::default()
    };
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: `attr` is a valid, fully initialised perf_event_attr whose
    // size field is its own size, and `c_path` outlives the call; the kernel
    // copies both. cpu -1 with a pid: that process on any CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            pid,
            -1 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    let event = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let link_attr = LinkCreateAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        target_fd: event.as_raw_fd() as u32,
        attach_type: BPF_PERF_EVENT,
        flags: 0,
        bpf_cookie: cookie,
        tail: [0; 13],
    };
    // SAFETY: `link_attr` is laid out as the `link_create` member of
    // `union bpf_attr` and zero beyond it; the size passed is its own.
    let link = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &raw const link_attr,
            size_of::<LinkCreateAttr>() as libc::c_uint,
        )
    };
    if link < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(CountedUprobe {
        // SAFETY: as above, a fresh descriptor from the kernel.
        _link: unsafe { OwnedFd::from_raw_fd(link as libc::c_int) },
        _event: event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attributes_have_the_kernels_layout() {
        // perf_event_attr: PERF_ATTR_SIZE_VER7; config1 at 56, config2 at 64.
        assert_eq!(size_of::<PerfEventAttr>(), 128);
        assert_eq!(std::mem::offset_of!(PerfEventAttr, config1), 56);
        assert_eq!(std::mem::offset_of!(PerfEventAttr, config2), 64);
        // union bpf_attr is 144 bytes; link_create.perf_event.bpf_cookie at 16.
        assert_eq!(size_of::<LinkCreateAttr>(), 128);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, bpf_cookie), 16);
    }
}
