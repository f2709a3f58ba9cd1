//! `--port N`: the processes listening on a TCP port, through `/proc`. A
//! network namespace's listening sockets (their inodes) are read once from
//! `/proc/PID/net/tcp` and `tcp6` of a process in it, and a process
//! listens when one of its descriptors (`/proc/PID/fd`) is one of them.
//! Processes that start listening later are reported by the kernel
//! ([`super::exec`]); this is for those already listening at start, and
//! those that exec holding an inherited listening socket (socket
//! activation).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
};

/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";

/// The listening sockets on the selected ports, by network namespace, as
/// read so far (one instance per pass: sockets come and go).
pub struct Listeners<'a> {
    ports: &'a [u16],
    by_netns: HashMap<u64, HashSet<u64>>,
}

impl<'a> Listeners<'a> {
    pub fn new(ports: &'a [u16]) -> Self {
        Self {
            ports,
            by_netns: HashMap::new(),
        }
    }

    /// Whether `pid` holds a socket listening on one of the ports (`false`
    /// when it is gone or cannot be read).
    pub fn listens(&mut self, pid: u32) -> bool {
        if self.ports.is_empty() {
            return false;
        }
        let sockets = socket_inodes(pid);
        if sockets.is_empty() {
            return false;
        }
        let Ok(netns) = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()) else {
            return false;
        };
        let ports = self.ports;
        let listening = self.by_netns.entry(netns).or_insert_with(|| {
            ["tcp", "tcp6"]
                .iter()
                .filter_map(|table| {
                    std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()
                })
                .flat_map(|text| listening_inodes(&text, ports))
                .collect()
        });
        sockets.iter().any(|inode| listening.contains(inode))
    }
}

/// The inodes of the sockets among `pid`'s file descriptors.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The inodes of the sockets listening on one of `ports` in a
/// `/proc/net/tcp` (or `tcp6`) table.
pub fn listening_inodes(table: &str, ports: &[u16]) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != TCP_LISTEN {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            ports.contains(&port).then(|| inode.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::listening_inodes;

    #[test]
    fn listeners_on_the_ports_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 100 0 0 10 0
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 100 0 0 10 0
";
        assert_eq!(listening_inodes(table, &[8080]), [1001]);
        assert_eq!(listening_inodes(table, &[8080, 8081]), [1001, 1002]);
        assert!(listening_inodes(table, &[9]).is_empty());
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0 100 0 0 10 0
";
        assert_eq!(listening_inodes(v6, &[8080]), [2001]);
    }
}
