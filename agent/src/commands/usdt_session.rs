//! The USDT side of `agent --pid N`: which probes are attached, what their
//! records become, and the libraries the target maps after the agent
//! attached (a `dlopen`, or libstapsdt defining probes at run time in a
//! memory file), whose probes are attached as they appear.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use agent::{
    export::EncodedSpan,
    probes::Probes,
    spans::usdt::UsdtSpanBuilder,
    usdt::{
        ScannedFiles, UsdtAttachError, UsdtAttachment, UsdtProbe, UsdtSites, attach_usdt,
        decode_usdt_record,
        mapping::{MappingConfig, Role},
    },
};
use aya::Ebpf;

/// How many times the probes of a newly mapped file are tried before the
/// agent gives up on them (an attach can fail while the library is still
/// being mapped: its semaphores not there yet).
const ATTACH_ATTEMPTS: u8 = 3;

/// The probes of `all` that the mapping names and whose arguments can be
/// read; the others are logged.
pub fn usable_probes(all: Vec<UsdtProbe>, config: &MappingConfig) -> Vec<UsdtProbe> {
    let mut usable = Vec::new();
    for probe in all {
        if config.find(&probe.provider, &probe.name).is_none() {
            continue;
        }
        if let Some(err) = &probe.args_error {
            log::warn!(
                "USDT probe {}:{} in {}: cannot read its arguments ({}); not attached",
                probe.provider,
                probe.name,
                probe.module,
                err.reason
            );
            continue;
        }
        usable.push(probe);
    }
    usable
}

/// The distinct `provider:name` of `probes`, sorted, for the log.
pub fn probe_names(probes: &[UsdtProbe]) -> Vec<String> {
    let mut names: Vec<String> = probes
        .iter()
        .map(|p| format!("{}:{}", p.provider, p.name))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The attached USDT probes of one target and what their records become.
pub struct UsdtSession {
    pid: u32,
    sites: UsdtSites,
    attachments: Vec<UsdtAttachment>,
    /// Site index -> (mapping index, role).
    resolved: Vec<Option<(usize, Role)>>,
    pub builder: UsdtSpanBuilder,
    /// The files already read for probes; `None` when USDT probes are off.
    scanned: Option<ScannedFiles>,
    /// Failed attach attempts per file, for newly mapped files.
    attempts: HashMap<PathBuf, u8>,
}

impl UsdtSession {
    /// A session for `pid`. `scanned` holds the files read before attaching
    /// (`None`: USDT probes are off and the target is not watched for new
    /// ones).
    pub fn new(pid: u32, builder: UsdtSpanBuilder, scanned: Option<ScannedFiles>) -> Self {
        Self {
            pid,
            sites: UsdtSites::new(),
            attachments: Vec::new(),
            resolved: Vec::new(),
            builder,
            scanned,
            attempts: HashMap::new(),
        }
    }

    /// Attaches `probes` and resolves their sites to the mapping.
    pub fn attach(&mut self, ebpf: &mut Ebpf, probes: &[UsdtProbe]) -> Result<(), UsdtAttachError> {
        let strings = self.builder.config().string_args();
        let attachment = attach_usdt(ebpf, &mut self.sites, 0, self.pid, probes, &strings)?;
        for &index in attachment.sites() {
            let Some(site) = self.sites.get(index) else {
                continue;
            };
            let index = index as usize;
            if self.resolved.len() <= index {
                self.resolved.resize(index + 1, None);
            }
            self.resolved[index] = self.builder.resolve(&site.probe.provider, &site.probe.name);
        }
        self.attachments.push(attachment);
        Ok(())
    }

    /// Probe sites attached.
    pub fn site_count(&self) -> usize {
        self.attachments.iter().map(|a| a.sites().len()).sum()
    }

    /// Looks for files the target mapped since the last look and attaches
    /// the probes the mapping names in them. Cheap when nothing changed:
    /// one read of `/proc/N/maps`.
    pub fn discover(&mut self, ebpf: &mut Ebpf) {
        let Some(scanned) = self.scanned.as_mut() else {
            return;
        };
        let found = match scanned.scan(self.pid) {
            Ok(found) => found,
            Err(err) => {
                // The target is gone or going: its exit ends the session.
                log::debug!("looking for new USDT probes: {err}");
                return;
            }
        };
        let probes = usable_probes(found, self.builder.config());
        if probes.is_empty() {
            return;
        }
        match self.attach(ebpf, &probes) {
            Ok(()) => {
                let mut modules: Vec<&str> = probes.iter().map(|p| p.module.as_str()).collect();
                modules.sort_unstable();
                modules.dedup();
                let names = probe_names(&probes);
                log::info!(
                    "USDT: {} new probes at {} sites in {}: {}",
                    names.len(),
                    probes.len(),
                    modules.join(", "),
                    names.join(", ")
                );
            }
            Err(err) => {
                // One attempt per file, however many probes it has.
                let mut files: Vec<&Path> = probes.iter().map(|p| p.path.as_path()).collect();
                files.sort_unstable();
                files.dedup();
                let mut retry = false;
                if let Some(scanned) = self.scanned.as_mut() {
                    for file in files {
                        let attempts = self.attempts.entry(file.to_owned()).or_insert(0);
                        *attempts += 1;
                        if *attempts < ATTACH_ATTEMPTS {
                            scanned.forget(file);
                            retry = true;
                        }
                    }
                }
                let err = anyhow::Error::new(err);
                if retry {
                    log::debug!("attaching newly found USDT probes (will retry): {err:#}");
                } else {
                    log::warn!("cannot attach newly found USDT probes: {err:#}");
                }
            }
        }
    }

    /// Decodes one USDT record and feeds the builder; an unreadable record
    /// is counted in `bad_records`.
    pub fn on_record(
        &mut self,
        bytes: &[u8],
        bad_records: &mut u64,
        out: &mut impl FnMut(EncodedSpan),
    ) {
        match decode_usdt_record(bytes) {
            Ok(event) => match self.resolved.get(event.site() as usize).copied().flatten() {
                Some(resolved) => self.builder.on_event(resolved, event, out),
                None => self.builder.on_unmapped(),
            },
            Err(err) => {
                *bad_records += 1;
                log::debug!("bad USDT record: {err}");
            }
        }
    }

    /// Detaches the uprobes and restores the semaphores.
    pub fn detach(&mut self, probes: &mut Probes) {
        for attachment in self.attachments.drain(..) {
            if let Err(err) = attachment.detach(probes.ebpf_mut(), &mut self.sites) {
                log::warn!("detaching USDT probes: {:#}", anyhow::Error::new(err));
            }
        }
    }
}
