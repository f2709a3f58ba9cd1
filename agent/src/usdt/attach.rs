//! Attaching the `usdt_probe` program to USDT probes of one process, and
//! decoding the records it writes.
//!
//! Each attached probe gets a site index: its argument specs go into the
//! `USDT_SPECS` array map at that index, and the attach cookie carries it in
//! its low 32 bits (the target slot in the high 32 bits), so the one program
//! knows how to read the arguments of whichever site fired. [`UsdtSites`] is
//! the table from site index back to the probe, for decoding.

use std::mem::offset_of;

use smallvec::SmallVec;

use super::{
    UsdtProbe,
    args::{ArgSpecError, EncodeError},
};
use crate::probes::{LinkHandle, ProbeError, Probes};
use agent_common::{
    event::EventHeader,
    usdt::{
        KIND_USDT, STR_NUL, STR_PTR_LEN, USDT_MAX_ARGS, USDT_MAX_SITES, USDT_RECORD_HEAD,
        USDT_STR_CAP_DEFAULT, USDT_STR_CAP_MAX, UsdtRecord, UsdtSpec,
    },
};

/// The family name its uprobes are attached under.
const FAMILY: &str = super::family::NAME;

/// Name of the eBPF program for every USDT site.
pub const USDT_PROGRAM: &str = "usdt_probe";
/// Name of the array map of [`UsdtSpec`]s, indexed by site index.
pub const USDT_SPEC_MAP: &str = "USDT_SPECS";

/// How a string argument's bytes are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringMode {
    /// The argument points at a NUL-terminated string.
    Nul,
    /// The argument points at bytes whose length is argument `len_arg`.
    PtrLen { len_arg: u8 },
}

/// One argument to be read as a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringArg {
    /// Argument index.
    pub arg: u8,
    pub mode: StringMode,
    /// Bytes copied at most (1..=128).
    pub cap: u8,
}

impl StringArg {
    /// A NUL-terminated string argument with the default cap.
    pub fn nul(arg: u8) -> Self {
        Self {
            arg,
            mode: StringMode::Nul,
            cap: USDT_STR_CAP_DEFAULT,
        }
    }
}

/// Which arguments of which probes are strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StringArgs {
    entries: Vec<(Option<String>, String, StringArg)>,
}

impl StringArgs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks argument `arg.arg` of probe `provider:name` (any provider when
    /// `None`) as a string.
    pub fn add(&mut self, provider: Option<&str>, name: &str, arg: StringArg) {
        let entry = (provider.map(str::to_owned), name.to_owned(), arg);
        if !self.entries.contains(&entry) {
            self.entries.push(entry);
        }
    }

    /// The string arguments of `probe`, by argument index.
    pub fn for_probe(&self, probe: &UsdtProbe) -> Vec<StringArg> {
        let mut args: Vec<StringArg> = Vec::new();
        for (provider, name, arg) in &self.entries {
            if *name == probe.name
                && provider.as_ref().is_none_or(|p| *p == probe.provider)
                && !args.iter().any(|a| a.arg == arg.arg)
            {
                args.push(*arg);
            }
        }
        args.sort_by_key(|a| a.arg);
        args
    }
}

/// One attached probe site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtSite {
    pub index: u32,
    pub target_slot: u32,
    pub pid: u32,
    pub probe: UsdtProbe,
    pub strings: Vec<StringArg>,
}

/// The site table: site index (cookie low 32 bits, `EventHeader::site`) to
/// the probe attached there, for one target. Its indexes are the target's
/// share of `USDT_SPECS`: all of it in an object of its own, a range of its
/// own in an object several targets share.
#[derive(Debug)]
pub struct UsdtSites {
    sites: Vec<Option<UsdtSite>>,
    /// The indexes it hands out: `first..end`.
    first: u32,
    end: u32,
}

impl Default for UsdtSites {
    fn default() -> Self {
        Self {
            sites: Vec::new(),
            first: 0,
            end: USDT_MAX_SITES,
        }
    }
}

impl UsdtSites {
    pub fn new() -> Self {
        Self::default()
    }

    /// The share of target slot `slot` in an object of `slots` targets.
    pub fn share(slot: u32, slots: u32) -> Self {
        let per_slot = USDT_MAX_SITES / slots.max(1);
        let first = slot.saturating_mul(per_slot).min(USDT_MAX_SITES);
        Self {
            sites: Vec::new(),
            first,
            end: first.saturating_add(per_slot).min(USDT_MAX_SITES),
        }
    }

    /// The site with index `index`, while attached.
    pub fn get(&self, index: u32) -> Option<&UsdtSite> {
        self.sites.get(index as usize)?.as_ref()
    }

    /// Provider and name of the probe a decoded record came from.
    pub fn describe(&self, event: &UsdtEvent) -> Option<(&str, &str)> {
        let site = self.get(event.site())?;
        Some((&site.probe.provider, &site.probe.name))
    }

    /// Attached sites.
    pub fn iter(&self) -> impl Iterator<Item = &UsdtSite> {
        self.sites.iter().flatten()
    }

    fn allocate(&mut self, site: UsdtSite) -> Result<u32, UsdtAttachError> {
        let sites = &self.sites;
        let index = (self.first..self.end)
            .find(|&i| sites.get(i as usize).is_none_or(Option::is_none))
            .ok_or(UsdtAttachError::SitesFull(self.end - self.first))?;
        let at = index as usize;
        if self.sites.len() <= at {
            self.sites.resize(at + 1, None);
        }
        self.sites[at] = Some(UsdtSite { index, ..site });
        Ok(index)
    }

    fn release(&mut self, index: u32) {
        if let Some(slot) = self.sites.get_mut(index as usize) {
            *slot = None;
        }
    }
}

/// Errors attaching USDT probes.
#[derive(Debug, thiserror::Error)]
pub enum UsdtAttachError {
    #[error("all {0} USDT sites of this target are in use")]
    SitesFull(u32),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("probe {provider}:{name}: unsupported argument spec")]
    Args {
        provider: String,
        name: String,
        #[source]
        source: ArgSpecError,
    },
    #[error("probe {provider}:{name}")]
    Encode {
        provider: String,
        name: String,
        #[source]
        source: EncodeError,
    },
    #[error("probe {provider}:{name}: string argument {arg}: {reason}")]
    StringArg {
        provider: String,
        name: String,
        arg: u8,
        reason: &'static str,
    },
    #[error("attaching to probe {provider}:{name}")]
    Attach {
        provider: String,
        name: String,
        #[source]
        source: ProbeError,
    },
}

/// The probes attached to one process: detach with [`Self::detach`].
/// Dropping it without detaching leaves the uprobes attached until
/// [`Probes`] is dropped. A probe guarded by a semaphore is attached with
/// the semaphore as its reference counter, so the kernel keeps the
/// semaphore raised exactly while the probe is attached, whatever happens
/// to the agent.
#[derive(Debug)]
pub struct UsdtAttachment {
    pid: u32,
    sites: Vec<u32>,
    links: Vec<LinkHandle>,
}

impl UsdtAttachment {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Site indices of the attached probes.
    pub fn sites(&self) -> &[u32] {
        &self.sites
    }

    /// Detaches every uprobe (lowering the semaphores) and clears the sites'
    /// specs.
    pub fn detach(self, probes: &mut Probes, sites: &mut UsdtSites) -> Result<(), UsdtAttachError> {
        let Self {
            pid: _,
            sites: indices,
            links,
        } = self;
        let mut result = probes.detach(&links).map_err(UsdtAttachError::from);
        for &index in &indices {
            if let Err(err) = probes.set_array(USDT_SPEC_MAP, index, UsdtSpec::default()) {
                result = Err(err.into());
            }
        }
        for index in indices {
            sites.release(index);
        }
        result
    }
}

/// Builds the kernel-side spec of `probe` with `strings` read as strings.
pub fn build_spec(probe: &UsdtProbe, strings: &[StringArg]) -> Result<UsdtSpec, UsdtAttachError> {
    if let Some(err) = &probe.args_error {
        return Err(UsdtAttachError::Args {
            provider: probe.provider.clone(),
            name: probe.name.clone(),
            source: err.clone(),
        });
    }
    let mut spec = UsdtSpec {
        arg_count: probe.args.len().min(USDT_MAX_ARGS) as u32,
        active: 1,
        ..UsdtSpec::default()
    };
    for (slot, arg) in spec.args.iter_mut().zip(&probe.args) {
        *slot = arg
            .encode(probe.vaddr)
            .map_err(|source| UsdtAttachError::Encode {
                provider: probe.provider.clone(),
                name: probe.name.clone(),
                source,
            })?;
    }
    for string in strings {
        let bad = |reason| UsdtAttachError::StringArg {
            provider: probe.provider.clone(),
            name: probe.name.clone(),
            arg: string.arg,
            reason,
        };
        let index = string.arg as usize;
        if index >= probe.args.len() {
            return Err(bad("the probe has no such argument"));
        }
        if string.cap == 0 || string.cap > USDT_STR_CAP_MAX {
            return Err(bad("the cap must be 1..=128 bytes"));
        }
        let slot = &mut spec.args[index];
        slot.str_cap = string.cap;
        match string.mode {
            StringMode::Nul => slot.str_mode = STR_NUL,
            StringMode::PtrLen { len_arg } => {
                if len_arg as usize >= probe.args.len() || len_arg == string.arg {
                    return Err(bad("the length argument does not exist"));
                }
                slot.str_mode = STR_PTR_LEN;
                slot.len_arg = len_arg;
            }
        }
    }
    Ok(spec)
}

/// Attaches the `usdt_probe` program to `probes` in process `pid`: fills
/// `USDT_SPECS` and attaches each site with cookie `(target_slot << 32) |
/// site`, a guarded one with its semaphore as the reference counter. On
/// error, what was attached is undone.
pub fn attach_usdt(
    probes_seam: &mut Probes,
    sites: &mut UsdtSites,
    target_slot: u32,
    pid: u32,
    probes: &[UsdtProbe],
    strings: &StringArgs,
) -> Result<UsdtAttachment, UsdtAttachError> {
    if pid == 0 {
        return Err(ProbeError::InvalidPid.into());
    }
    // Every spec first: nothing is attached if one is refused.
    let mut specs = Vec::with_capacity(probes.len());
    for probe in probes {
        let string_args = strings.for_probe(probe);
        specs.push((build_spec(probe, &string_args)?, string_args));
    }
    let mut attachment = UsdtAttachment {
        pid,
        sites: Vec::new(),
        links: Vec::new(),
    };
    let result = attach_all(
        probes_seam,
        sites,
        target_slot,
        pid,
        probes,
        specs,
        &mut attachment,
    );
    match result {
        Ok(()) => Ok(attachment),
        Err(err) => {
            if let Err(undo) = attachment.detach(probes_seam, sites) {
                log::warn!("undoing a failed USDT attach: {undo}");
            }
            Err(err)
        }
    }
}

fn attach_all(
    seam: &mut Probes,
    sites: &mut UsdtSites,
    target_slot: u32,
    pid: u32,
    probes: &[UsdtProbe],
    specs: Vec<(UsdtSpec, Vec<StringArg>)>,
    attachment: &mut UsdtAttachment,
) -> Result<(), UsdtAttachError> {
    for (probe, (spec, strings)) in probes.iter().zip(specs) {
        let index = sites.allocate(UsdtSite {
            index: 0,
            target_slot,
            pid,
            probe: probe.clone(),
            strings,
        })?;
        attachment.sites.push(index);
        seam.set_array(USDT_SPEC_MAP, index, spec)?;
        let cookie = (u64::from(target_slot) << 32) | u64::from(index);
        let attached = match probe.semaphore {
            Some(sema) => seam.attach_uprobe_counted(
                FAMILY,
                USDT_PROGRAM,
                &probe.path,
                pid,
                probe.file_offset,
                sema.file_offset,
                cookie,
            ),
            None => seam.attach_uprobe(
                FAMILY,
                USDT_PROGRAM,
                &probe.path,
                pid,
                probe.file_offset,
                cookie,
            ),
        };
        let link = attached.map_err(|source| UsdtAttachError::Attach {
            provider: probe.provider.clone(),
            name: probe.name.clone(),
            source,
        })?;
        attachment.links.push(link);
    }
    Ok(())
}

/// A string argument's bytes; ids, methods and short paths need no heap.
pub type ArgBytes = SmallVec<[u8; 24]>;

/// An event's arguments; two inline (request id and one more) keep an
/// event small to move, a probe with more spills to the heap.
pub type UsdtArgs = SmallVec<[UsdtArg; 2]>;

/// One decoded argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtArg {
    /// The value, sign- or zero-extended by the kernel side to 64 bits; 0
    /// for a string, whose bytes are in `string`.
    pub value: u64,
    /// The argument could not be read (its value is 0).
    pub failed: bool,
    /// The string's bytes, for string arguments.
    pub string: Option<ArgBytes>,
    /// The string was cut short (its cap, or no room left in the record).
    pub truncated: bool,
}

impl UsdtArg {
    pub fn as_u64(&self) -> u64 {
        self.value
    }

    pub fn as_i64(&self) -> i64 {
        self.value as i64
    }

    /// The string, with invalid UTF-8 replaced.
    pub fn as_str(&self) -> Option<std::borrow::Cow<'_, str>> {
        let bytes = self.string.as_deref()?;
        // The common, valid case through the faster validator.
        Some(match std::str::from_utf8(bytes) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(bytes),
        })
    }
}

/// A decoded `usdt_probe` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtEvent {
    pub header: EventHeader,
    pub args: UsdtArgs,
}

impl UsdtEvent {
    /// The site index: look it up in [`UsdtSites`].
    pub fn site(&self) -> u32 {
        self.header.site
    }
}

/// Why a record could not be decoded; `offset` is the byte offset in the
/// record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsdtDecodeError {
    #[error("record of {len} bytes is shorter than a USDT record's head ({need} bytes)")]
    Short { len: usize, need: usize },
    #[error("record of {len} bytes, where its head says {need}")]
    Length { len: usize, need: usize },
    #[error("record kind {0} is not a USDT record")]
    Kind(u32),
    #[error("bad field at byte {offset}: {reason}")]
    Field { offset: usize, reason: &'static str },
}

/// Decodes a `usdt_probe` record (as drained from the ring buffer): its
/// head, `arg_count` values, then the string bytes, and nothing after them.
pub fn decode_usdt_record(bytes: &[u8]) -> Result<UsdtEvent, UsdtDecodeError> {
    let Some(head) = bytes.first_chunk::<USDT_RECORD_HEAD>() else {
        return Err(UsdtDecodeError::Short {
            len: bytes.len(),
            need: USDT_RECORD_HEAD,
        });
    };
    let u16_at = |at: usize| u16::from_le_bytes([head[at], head[at + 1]]);
    let u32_at =
        |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let u64_at = |bytes: &[u8], at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let header = EventHeader {
        kind: u32_at(offset_of!(EventHeader, kind)),
        target: u32_at(offset_of!(EventHeader, target)),
        tid: u32_at(offset_of!(EventHeader, tid)),
        site: u32_at(offset_of!(EventHeader, site)),
        goid: u64_at(head, offset_of!(EventHeader, goid)),
        ktime_ns: u64_at(head, offset_of!(EventHeader, ktime_ns)),
    };
    if header.kind != KIND_USDT {
        return Err(UsdtDecodeError::Kind(header.kind));
    }
    let arg_count = usize::from(u16_at(offset_of!(UsdtRecord, arg_count)));
    if arg_count > USDT_MAX_ARGS {
        return Err(UsdtDecodeError::Field {
            offset: offset_of!(UsdtRecord, arg_count),
            reason: "more than 12 arguments",
        });
    }
    let str_used = usize::from(u16_at(offset_of!(UsdtRecord, str_used)));
    let strings_at = USDT_RECORD_HEAD + 8 * arg_count;
    let need = strings_at + str_used;
    if bytes.len() != need {
        return Err(UsdtDecodeError::Length {
            len: bytes.len(),
            need,
        });
    }
    let failed = u16_at(offset_of!(UsdtRecord, failed));
    let truncated = u16_at(offset_of!(UsdtRecord, truncated));
    let str_mask = u16_at(offset_of!(UsdtRecord, str_mask));
    let lens_at = offset_of!(UsdtRecord, str_len);
    let strings = &bytes[strings_at..];
    let mut start = 0;
    let mut args = UsdtArgs::with_capacity(arg_count);
    for i in 0..arg_count {
        let string = if str_mask & (1 << i) != 0 {
            let end = start + usize::from(head[lens_at + i]);
            let Some(string) = strings.get(start..end) else {
                return Err(UsdtDecodeError::Field {
                    offset: lens_at + i,
                    reason: "string past the record's string bytes",
                });
            };
            start = end;
            Some(ArgBytes::from_slice(string))
        } else {
            None
        };
        args.push(UsdtArg {
            // A string's pointer is of no use here: its value is 0.
            value: if string.is_some() {
                0
            } else {
                u64_at(bytes, USDT_RECORD_HEAD + 8 * i)
            },
            failed: failed & (1 << i) != 0,
            string,
            truncated: truncated & (1 << i) != 0,
        });
    }
    Ok(UsdtEvent { header, args })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> UsdtSite {
        UsdtSite {
            index: 0,
            target_slot: 0,
            pid: 1,
            probe: UsdtProbe {
                provider: "p".to_owned(),
                name: "n".to_owned(),
                path: "/bin/true".into(),
                module: "/bin/true".to_owned(),
                file_offset: 0,
                vaddr: 0,
                semaphore: None,
                arg_text: String::new(),
                args: Vec::new(),
                args_error: None,
            },
            strings: Vec::new(),
        }
    }

    #[test]
    fn a_shared_objects_targets_take_disjoint_shares_of_the_specs() {
        let per_slot = USDT_MAX_SITES / 64;
        let mut first = UsdtSites::share(0, 64);
        let mut third = UsdtSites::share(2, 64);
        assert_eq!(first.allocate(site()).expect("site"), 0);
        assert_eq!(third.allocate(site()).expect("site"), 2 * per_slot);
        assert_eq!(third.allocate(site()).expect("site"), 2 * per_slot + 1);
        third.release(2 * per_slot);
        assert_eq!(third.allocate(site()).expect("site"), 2 * per_slot);
        for _ in 2..per_slot {
            third.allocate(site()).expect("site");
        }
        assert!(matches!(
            third.allocate(site()),
            Err(UsdtAttachError::SitesFull(n)) if n == per_slot
        ));
        // An object of its own: every index.
        let mut own = UsdtSites::new();
        assert_eq!(own.allocate(site()).expect("site"), 0);
    }
}
