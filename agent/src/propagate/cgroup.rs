//! Where the sockops program goes: a cgroup2 hierarchy's root, which holds
//! every process (a host with only cgroup v1 mounted still has the v2
//! hierarchy: the agent mounts it), and what the kernel says of memory
//! writes (its lockdown mode).

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

/// Where the agent mounts the cgroup2 hierarchy when none is mounted. Left
/// mounted at exit: another agent may be using it.
pub const OWN_MOUNT: &str = "/run/agent/cgroup2";

/// Where securityfs is mounted to read the lockdown mode when it is not
/// (unmounted at once).
const SECURITYFS_MOUNT: &str = "/run/agent/securityfs";

/// Failure to find or mount the cgroup2 hierarchy.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/self/mountinfo failed")]
    MountInfo(#[source] io::Error),
    #[error("creating {path} failed")]
    Create {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("mounting the cgroup2 hierarchy at {path} failed")]
    Mount {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The mount points of `fstype` in a `/proc/self/mountinfo` text.
pub fn mounts_of<'a>(mountinfo: &'a str, fstype: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
    mountinfo.lines().filter_map(move |line| {
        let (head, tail) = line.split_once(" - ")?;
        if tail.split_whitespace().next()? != fstype {
            return None;
        }
        let point = head.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount(fstype: &str, at: &Path) -> io::Result<()> {
    let source = CString::new("none").map_err(io::Error::other)?;
    let fstype = CString::new(fstype).map_err(io::Error::other)?;
    let target = CString::new(at.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A mounted cgroup2 hierarchy: the first one mounted, else the agent's own
/// at [`OWN_MOUNT`] (mounted now). Returns it and whether it was mounted now.
pub fn cgroup2_root() -> Result<(PathBuf, bool), CgroupError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    if let Some(found) = mounts_of(&info, "cgroup2").next() {
        return Ok((found, false));
    }
    let dir = PathBuf::from(OWN_MOUNT);
    std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
        path: OWN_MOUNT.to_owned(),
        source,
    })?;
    mount("cgroup2", &dir).map_err(|source| CgroupError::Mount {
        path: OWN_MOUNT.to_owned(),
        source,
    })?;
    Ok((dir, true))
}

/// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`),
/// from securityfs (mounted for the read when it is not); `None` when it
/// cannot be read.
pub fn lockdown() -> Option<String> {
    let read = |dir: &Path| std::fs::read_to_string(dir.join("lockdown")).ok();
    let text = read(Path::new("/sys/kernel/security")).or_else(|| {
        let dir = Path::new(SECURITYFS_MOUNT);
        std::fs::create_dir_all(dir).ok()?;
        mount("securityfs", dir).ok()?;
        let text = read(dir);
        let target = CString::new(SECURITYFS_MOUNT).ok()?;
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        text
    })?;
    selected_mode(&text)
}

/// The bracketed word of a `none [integrity] confidentiality` line.
pub fn selected_mode(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts_and_unescapes() {
        let info = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                    90 23 0:40 / /run/a\\040b rw - cgroup2 none rw\n";
        let found: Vec<_> = mounts_of(info, "cgroup2").collect();
        assert_eq!(found, vec![PathBuf::from("/run/a b")]);
        assert_eq!(mounts_of(info, "cgroup").count(), 1);
    }

    #[test]
    fn lockdown_mode_is_the_bracketed_word() {
        assert_eq!(
            selected_mode("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(selected_mode("none integrity"), None);
    }
}
