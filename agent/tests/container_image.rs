//! The container image `cargo xtask image` builds (a static binary and the
//! CA bundle on `FROM scratch`), run as the Dockerfile's least-privilege
//! `docker run --pid=host --cap-drop=ALL --cap-add=...` runs it, without a
//! container runtime (podman builds images here but cannot start
//! containers: this sandbox refuses the rlimits its runtimes set): the
//! agent from the image's root filesystem, in a mount namespace of its own
//! chrooted there with `/proc` and `/sys` mounted as a runtime mounts them,
//! in the host's PID and network namespaces, root with a bounding set of
//! exactly the systemd unit's capabilities, traces a Go server on the host.

mod support;

use std::{
    ffi::CString,
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::{
    agent::Agent,
    fixture,
    http_client::Connection,
    otlp::{FlatSpan, Receiver},
};

/// Capability numbers by name (capability(7)), up to CAP_CHECKPOINT_RESTORE.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// `target/image`, where `cargo xtask image` puts the root filesystem and
/// the OCI archive.
fn image_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target directory")
        .join("image")
}

fn rootfs() -> PathBuf {
    let rootfs = image_dir().join("rootfs");
    assert!(
        rootfs.join("usr/local/bin/agent").exists(),
        "no image root filesystem in {}: run `cargo xtask image` (`cargo xtask ci` does)",
        rootfs.display()
    );
    rootfs
}

/// The unit's capabilities without `CAP_` (`SYS_ADMIN`).
fn unit_capabilities() -> Vec<String> {
    include_str!("../../scripts/systemd/agent.service")
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit")
        .split_whitespace()
        .map(|cap| cap.strip_prefix("CAP_").expect("CAP_ name").to_owned())
        .collect()
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL")
}

/// The image's agent, as a runtime starts the container: its own mount
/// namespace rooted at the image with the host's `/proc` and `/sys`, the
/// host's PID and network namespaces, root with only `keep` in its
/// bounding set (so exec gives it exactly those capabilities).
fn agent_in_image(keep: &[String]) -> Command {
    let rootfs = rootfs();
    let keep: Vec<u64> = keep
        .iter()
        .map(|name| {
            CAPABILITIES
                .iter()
                .position(|c| c == name)
                .unwrap_or_else(|| panic!("unknown capability {name}")) as u64
        })
        .collect();
    let last_cap: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .expect("cap_last_cap")
        .trim()
        .parse()
        .expect("number");
    let mounts = [
        (c_path(Path::new("/proc")), c_path(&rootfs.join("proc"))),
        (c_path(Path::new("/sys")), c_path(&rootfs.join("sys"))),
    ];
    let root = c_path(&rootfs);
    let mut cmd = Command::new("/usr/local/bin/agent");
    cmd.env_clear().env("PATH", "/usr/local/bin");
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes system calls on memory prepared before the fork (no allocation,
    // no lock).
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (from, to) in &mounts {
                check(libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
            }
            check(libc::chroot(root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            for cap in 0..=last_cap {
                if !keep.contains(&cap) {
                    check(libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0))?;
                }
            }
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ))
        });
    }
    cmd
}

#[test]
fn the_image_holds_a_static_agent_and_the_ca_bundle_only() {
    let rootfs = rootfs();
    let mut files = Vec::new();
    let mut stack = vec![rootfs.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(&rootfs).expect("under rootfs");
                files.push(rel.display().to_string());
            }
        }
    }
    files.sort();
    assert_eq!(
        files,
        ["etc/ssl/certs/ca-certificates.crt", "usr/local/bin/agent"]
    );
    // Static: no interpreter, no shared library.
    let binary = std::fs::read(rootfs.join("usr/local/bin/agent")).expect("read agent");
    let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(binary.as_slice())
        .expect("an ELF file");
    use object::read::elf::ProgramHeader as _;
    let endian = elf.endian();
    assert!(
        elf.elf_program_headers()
            .iter()
            .all(|ph| ph.p_type(endian) != object::elf::PT_INTERP),
        "the image's agent names an interpreter"
    );
    // The OCI archive podman built from it (setup installs podman).
    let archive = image_dir().join("agent-oci.tar");
    let mut tar = Vec::new();
    std::fs::File::open(&archive)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask image`)", archive.display()))
        .read_to_end(&mut tar)
        .expect("read archive");
    for member in ["oci-layout", "index.json"] {
        assert!(
            tar.windows(member.len() + 1)
                .any(|w| w[..member.len()] == *member.as_bytes() && w[member.len()] == 0),
            "{member} in {}",
            archive.display()
        );
    }
}

#[test]
fn the_image_traces_a_host_process_with_the_least_privilege_set() {
    let caps = unit_capabilities();
    let binary = fixture::build("httpserver", &[]);
    let (mut server, addr) = fixture::start_httpserver(&binary);
    let receiver = Receiver::grpc();

    let mut cmd = agent_in_image(&caps);
    cmd.args(["--pid", &server.pid().to_string()]).args([
        "--otlp-endpoint",
        &receiver.url(),
        "--otlp-protocol",
        "grpc",
    ]);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let mut conn = Connection::open(addr);
    let paths: Vec<String> = (0..3)
        .map(|i| {
            let path = format!("/items/image-{i}");
            let (status, _) = conn.request("GET", &path, b"");
            assert_eq!(status, 200, "{path}");
            path
        })
        .collect();
    let spans: Vec<FlatSpan> = receiver.wait_for_spans(3, Duration::from_secs(30));
    let mut got: Vec<(String, String)> = spans
        .iter()
        .map(|s| {
            (
                s.attr("url.path").expect("url.path").to_owned(),
                s.resource.get("process.pid").expect("process.pid").clone(),
            )
        })
        .collect();
    got.sort();
    let pid = server.pid().to_string();
    assert_eq!(
        got,
        paths
            .iter()
            .map(|p| (p.clone(), pid.clone()))
            .collect::<Vec<_>>()
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait(Duration::from_secs(60)).success());
    server.terminate();
}

#[test]
fn the_image_without_cap_sys_admin_says_so() {
    let fewer: Vec<String> = unit_capabilities()
        .into_iter()
        .filter(|c| c != "SYS_ADMIN")
        .collect();
    let binary = fixture::build("httpserver", &[]);
    let (mut server, _) = fixture::start_httpserver(&binary);
    let mut cmd = agent_in_image(&fewer);
    cmd.args(["--pid", &server.pid().to_string()]);
    let mut agent = Agent::start(cmd);
    let status = agent.wait(Duration::from_secs(60));
    server.terminate();
    assert_eq!(status.code(), Some(1));
    let lines = agent.stderr_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("agent: CAP_SYS_ADMIN is missing: ")),
        "{lines:#?}"
    );
}
