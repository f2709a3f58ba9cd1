//! The USDT family in a session: which probes are attached, what their
//! records become, and the libraries the target maps after the agent
//! attached (a `dlopen`, or libstapsdt defining probes at run time in a
//! memory file), whose probes are attached as they appear.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use agent_common::usdt::KIND_USDT;

use super::{
    ScannedFiles, UsdtAttachError, UsdtAttachment, UsdtProbe, UsdtSites, attach_usdt,
    decode_usdt_record,
    mapping::{MappingConfig, Role},
    spans::UsdtSpanBuilder,
};
use crate::{
    binary::error_chain,
    family::{
        BadRecord, Counter, Family, FamilyEntry, FamilyError, Plan, PlanContext, RecordContext,
    },
    instrument::Category,
    probes::{KernelStats, Probes},
    target::Target,
};

/// The family's name.
pub const NAME: &str = "USDT";

/// Its registration.
pub const FAMILY: FamilyEntry = FamilyEntry {
    name: NAME,
    probes: &[],
    plan: plan_family,
    categories: &[Category::Usdt],
};

fn plan_family(ctx: &PlanContext<'_>) -> Plan {
    let pid = ctx.target.pid;
    let Some(config) = &ctx.options.usdt_mapping else {
        return Plan::Absent {
            why: "USDT probes are off (--no-usdt)".to_owned(),
            level: log::Level::Debug,
        };
    };
    let level = if ctx.options.usdt_mapping_given {
        log::Level::Warn
    } else {
        log::Level::Debug
    };
    let mut scanned = ScannedFiles::default();
    // A process the agent started (launch mode) is held before it runs its
    // executable: read the file it will run, not its mappings (the agent's).
    let all = if ctx.target.runs_its_executable() {
        scanned.scan(pid)
    } else {
        scanned.scan_launched(&ctx.target.exe_path)
    };
    let all = match all {
        Ok(all) => all,
        Err(err) => {
            return Plan::Absent {
                why: format!("reading its USDT probes failed: {}", error_chain(&err)),
                level,
            };
        }
    };
    let found = all.len();
    let usable = usable_probes(all, config);
    let builder = UsdtSpanBuilder::new(
        config.clone(),
        ctx.clock,
        ctx.options.max_open_spans,
        ctx.options.span_ttl,
    )
    .with_sampler(ctx.options.sampler);
    let empty = usable.is_empty();
    let session = Box::new(UsdtSession::new(pid, builder, scanned, usable));
    if empty {
        // Libraries the target maps later may bring probes.
        return Plan::Idle {
            family: session,
            why: format!("it has no USDT probes that a mapping names ({found} USDT probes found)"),
            level,
        };
    }
    Plan::Ready(session)
}

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
#[derive(Debug)]
pub struct UsdtSession {
    pid: u32,
    /// Its target slot (set when attached).
    slot: u32,
    sites: UsdtSites,
    attachments: Vec<UsdtAttachment>,
    /// Site index -> (mapping index, role).
    resolved: Vec<Option<(usize, Role)>>,
    pub builder: UsdtSpanBuilder,
    /// The files already read for probes.
    scanned: ScannedFiles,
    /// Failed attach attempts per file, for newly mapped files.
    attempts: HashMap<PathBuf, u8>,
    /// The probes found when planning, attached by [`Family::attach`].
    planned: Vec<UsdtProbe>,
}

impl UsdtSession {
    /// A session for `pid`: `planned` are the probes to attach, found in
    /// the files `scanned` read.
    pub fn new(
        pid: u32,
        builder: UsdtSpanBuilder,
        scanned: ScannedFiles,
        planned: Vec<UsdtProbe>,
    ) -> Self {
        Self {
            planned,
            pid,
            slot: 0,
            sites: UsdtSites::new(),
            attachments: Vec::new(),
            resolved: Vec::new(),
            builder,
            scanned,
            attempts: HashMap::new(),
        }
    }

    /// Attaches `probes` and resolves their sites to the mapping.
    pub fn attach_probes(
        &mut self,
        probes: &mut Probes,
        found: &[UsdtProbe],
    ) -> Result<(), UsdtAttachError> {
        let strings = self.builder.config().string_args();
        let attachment = attach_usdt(
            probes,
            &mut self.sites,
            self.slot,
            self.pid,
            found,
            &strings,
        )?;
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
    pub fn discover(&mut self, probes: &mut Probes) {
        let found = match self.scanned.scan(self.pid) {
            Ok(found) => found,
            Err(err) => {
                // The target is gone or going: its exit ends the session.
                log::debug!("looking for new USDT probes: {err}");
                return;
            }
        };
        let found = usable_probes(found, self.builder.config());
        if found.is_empty() {
            return;
        }
        match self.attach_probes(probes, &found) {
            Ok(()) => {
                let mut modules: Vec<&str> = found.iter().map(|p| p.module.as_str()).collect();
                modules.sort_unstable();
                modules.dedup();
                let names = probe_names(&found);
                log::info!(
                    "USDT: {} new probes at {} sites in {}: {}",
                    names.len(),
                    found.len(),
                    modules.join(", "),
                    names.join(", ")
                );
            }
            Err(err) => {
                // One attempt per file, however many probes it has.
                let mut files: Vec<&Path> = found.iter().map(|p| p.path.as_path()).collect();
                files.sort_unstable();
                files.dedup();
                let mut retry = false;
                for file in files {
                    let attempts = self.attempts.entry(file.to_owned()).or_insert(0);
                    *attempts += 1;
                    if *attempts < ATTACH_ATTEMPTS {
                        self.scanned.forget(file);
                        retry = true;
                    }
                }
                let err = error_chain(&err);
                if retry {
                    log::debug!("attaching newly found USDT probes (will retry): {err}");
                } else {
                    log::warn!("cannot attach newly found USDT probes: {err}");
                }
            }
        }
    }

    /// Detaches the uprobes and restores the semaphores.
    pub fn detach(&mut self, probes: &mut Probes) {
        for attachment in self.attachments.drain(..) {
            if let Err(err) = attachment.detach(probes, &mut self.sites) {
                log::warn!("detaching USDT probes: {}", error_chain(&err));
            }
        }
    }
}

impl Family for UsdtSession {
    fn name(&self) -> &'static str {
        NAME
    }

    // Specs in its target's share of USDT_SPECS (see `UsdtSites`).
    fn shares_object(&self) -> bool {
        true
    }

    fn kinds(&self) -> &'static [u32] {
        &[KIND_USDT]
    }

    fn attach(&mut self, probes: &mut Probes, target: &Target) -> Result<(), FamilyError> {
        // Before any site is handed out, here or by a later discovery.
        self.slot = target.slot;
        self.sites = UsdtSites::share(target.slot, target.slots);
        let found = std::mem::take(&mut self.planned);
        if found.is_empty() {
            return Ok(());
        }
        self.attach_probes(probes, &found).map_err(|err| {
            FamilyError::from(format!(
                "cannot attach to the USDT probes of PID {}: {}",
                self.pid,
                error_chain(&err)
            ))
        })?;
        let names = probe_names(&found);
        let guarded = found.iter().filter(|p| p.semaphore.is_some()).count();
        log::info!(
            "USDT: {} probes at {} sites ({} semaphore-guarded): {}",
            names.len(),
            found.len(),
            guarded,
            names.join(", ")
        );
        Ok(())
    }

    /// Decodes one USDT record and feeds the builder.
    #[inline]
    fn on_record(&mut self, bytes: &[u8], cx: &mut RecordContext<'_>) -> Result<(), BadRecord> {
        let event = decode_usdt_record(bytes)?;
        match self.resolved.get(event.site() as usize).copied().flatten() {
            Some(resolved) => self.builder.on_event(resolved, event, cx.spans),
            None => self.builder.on_unmapped(),
        }
        Ok(())
    }

    fn housekeeping(&mut self, probes: &mut Probes, now_ns: u64, cx: &mut RecordContext<'_>) {
        self.discover(probes);
        self.builder.expire(now_ns, cx.spans);
    }

    fn stop_at(&mut self, at_ns: u64) {
        self.builder.stop_at(at_ns);
    }

    fn stop(&mut self, probes: &mut Probes) {
        self.detach(probes);
    }

    fn finish(&mut self, now_ns: u64, cx: &mut RecordContext<'_>) {
        self.builder.finish(now_ns, cx.spans);
    }

    fn sampled_out(&self) -> u64 {
        self.builder.sampled_out()
    }

    fn counters(&self, _kernel: &KernelStats, out: &mut Vec<Counter>) {
        let u = self.builder.stats();
        out.extend([
            Counter::count("usdt_started", u.pairing.started),
            Counter::count("usdt_completed", u.pairing.completed),
            Counter::loss(
                "usdt_unmatched_ends",
                "USDT ends without start",
                "",
                u.pairing.unmatched_ends,
            ),
            Counter::incomplete("usdt_expired", "USDT expired", u.pairing.expired),
            Counter::incomplete("usdt_evicted", "USDT evicted", u.pairing.evicted),
            Counter::incomplete("usdt_replaced", "USDT replaced", u.pairing.replaced),
            Counter::incomplete(
                "usdt_open_at_stop",
                "USDT open at stop",
                u.pairing.open_at_stop,
            ),
            Counter::count("usdt_after_stop", u.pairing.after_stop),
            Counter::loss(
                "usdt_unreadable_ids",
                "USDT unreadable request ids",
                "",
                u.unreadable_ids,
            ),
            Counter::quiet_loss("usdt_unmapped", u.unmapped),
        ]);
    }
}
