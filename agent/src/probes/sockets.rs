//! Socket programs: a sockops program on a cgroup2 directory (it sees the
//! TCP connections of every process below it) and an sk_msg program on a
//! sockhash (it runs on every message sent on a socket in the map). Both are
//! detached when [`Probes`] is dropped.

use std::{fs::File, path::Path};

use aya::{
    maps::SockHash,
    programs::{CgroupAttachMode, SkMsg, SockOps},
};

use super::{ProbeError, Probes, map_error, program_error};

impl Probes {
    /// Attaches the sockops `program` to the cgroup2 directory `cgroup`
    /// through a BPF link, which runs beside any other program there
    /// (another agent's): a link takes no attach flags (`Single` is none).
    pub fn attach_sock_ops(
        &mut self,
        family: &'static str,
        program: &'static str,
        cgroup: &Path,
    ) -> Result<(), ProbeError> {
        let dir = File::open(cgroup).map_err(|source| ProbeError::Attach {
            program,
            path: cgroup.display().to_string(),
            offset: 0,
            source: Box::new(source),
        })?;
        let prog: &mut SockOps = self
            .ebpf
            .program_mut(program)
            .ok_or(ProbeError::Missing(program))?
            .try_into()
            .map_err(program_error(program))?;
        prog.attach(&dir, CgroupAttachMode::Single)
            .map_err(|source| ProbeError::Attach {
                program,
                path: cgroup.display().to_string(),
                offset: 0,
                source: Box::new(source),
            })?;
        log::debug!("{family}: {program} attached to {}", cgroup.display());
        Ok(())
    }

    /// Attaches the sk_msg `program` to the sockhash `map`.
    pub fn attach_sk_msg(
        &mut self,
        family: &'static str,
        program: &'static str,
        map: &'static str,
    ) -> Result<(), ProbeError> {
        let fd = {
            let data = self.ebpf.map(map).ok_or(ProbeError::Missing(map))?;
            let hash: SockHash<&aya::maps::MapData, u64> =
                SockHash::try_from(data).map_err(map_error(map))?;
            hash.fd().try_clone().map_err(|source| ProbeError::Attach {
                program,
                path: map.to_owned(),
                offset: 0,
                source: Box::new(source),
            })?
        };
        let prog: &mut SkMsg = self
            .ebpf
            .program_mut(program)
            .ok_or(ProbeError::Missing(program))?
            .try_into()
            .map_err(program_error(program))?;
        prog.attach(&fd).map_err(|source| ProbeError::Attach {
            program,
            path: map.to_owned(),
            offset: 0,
            source: Box::new(source),
        })?;
        log::debug!("{family}: {program} attached to map {map}");
        Ok(())
    }

    /// Removes `key` from the hash map `map`; absent is fine.
    pub fn remove_hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        map: &'static str,
        key: &K,
    ) -> Result<(), ProbeError> {
        let data = self.ebpf.map_mut(map).ok_or(ProbeError::Missing(map))?;
        let mut hash: aya::maps::HashMap<&mut aya::maps::MapData, K, V> =
            aya::maps::HashMap::try_from(data).map_err(map_error(map))?;
        match hash.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(ProbeError::MapUpdate {
                map,
                source: Box::new(source),
            }),
        }
    }
}
