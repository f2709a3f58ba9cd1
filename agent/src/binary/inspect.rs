//! `agent inspect`: everything the analysis found about a binary, for
//! humans (`Display`) and machines (`serde::Serialize`).

use std::fmt;

use iced_x86::Register;
use serde::Serialize;

use super::{BuildInfo, FieldOffset, Function, GoBinary, OffsetSource, ProbeSite, error_chain};

/// A built-in probe: where it attaches and which registers and fields it reads.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinProbe {
    pub name: &'static str,
    pub function: &'static str,
    /// Registers the eBPF program reads at the entry site.
    pub preserve: &'static [Register],
    pub fields: &'static [(&'static str, &'static str)],
}

/// One struct field as resolved for this binary.
#[derive(Clone, Debug, Serialize)]
pub struct FieldReport {
    pub type_name: String,
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<FieldOffset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One built-in probe as it would attach to this binary.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub name: String,
    pub function_name: String,
    pub preserve: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<Function>,
    /// Where the entry uprobe goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<ProbeSite>,
    /// Every `ret` (for probes that need the return; listed for reference).
    pub returns: Vec<ProbeSite>,
    pub fields: Vec<FieldReport>,
    /// Why the probe cannot attach, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `agent inspect` prints.
#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    pub path: String,
    pub build_info: BuildInfo,
    pub pie: bool,
    pub has_symtab: bool,
    pub has_dwarf: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pclntab_layout: Option<String>,
    pub pclntab_functions: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pclntab_error: Option<String>,
    pub probes: Vec<ProbeReport>,
}

fn reg_name(r: Register) -> String {
    format!("{r:?}").to_lowercase()
}

/// Analyses `bin` for every probe the families declare.
pub fn inspect(bin: &GoBinary) -> InspectReport {
    let probes = crate::family::FAMILIES
        .iter()
        .flat_map(|family| family.probes)
        .map(|probe| probe_report(bin, probe))
        .collect();
    InspectReport {
        path: bin.path().display().to_string(),
        build_info: bin.build_info().clone(),
        pie: bin.is_pie(),
        has_symtab: bin.has_symtab(),
        has_dwarf: bin.has_dwarf(),
        pclntab_layout: bin.pclntab_version().map(|v| format!("{v:?}")),
        pclntab_functions: bin.pclntab_len(),
        pclntab_error: bin.pclntab_error().map(str::to_owned),
        probes,
    }
}

fn probe_report(bin: &GoBinary, probe: &BuiltinProbe) -> ProbeReport {
    let fields = probe
        .fields
        .iter()
        .map(|&(type_name, field)| {
            let (offset, error) = match bin.struct_field_offset(type_name, field) {
                Ok(o) => (Some(o), None),
                Err(e) => (None, Some(error_chain(&e))),
            };
            FieldReport {
                type_name: type_name.to_owned(),
                field: field.to_owned(),
                offset,
                error,
            }
        })
        .collect();
    let mut report = ProbeReport {
        name: probe.name.to_owned(),
        function_name: probe.function.to_owned(),
        preserve: probe.preserve.iter().map(|&r| reg_name(r)).collect(),
        function: None,
        entry: None,
        returns: Vec::new(),
        fields,
        error: None,
    };
    let Some(function) = bin.function(probe.function) else {
        report.error = Some(format!(
            "function {} not found (neither .symtab nor .gopclntab has it)",
            probe.function
        ));
        return report;
    };
    match bin.entry_site(&function, probe.preserve) {
        Ok(site) => report.entry = Some(site),
        Err(e) => report.error = Some(error_chain(&e)),
    }
    match bin.return_sites(&function) {
        Ok(sites) => report.returns = sites,
        Err(e) => {
            report.error.get_or_insert_with(|| error_chain(&e));
        }
    }
    report.function = Some(function);
    report
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.build_info;
        writeln!(f, "{}", self.path)?;
        writeln!(f, "  Go:        {} ({})", b.go_version_raw, b.go_version)?;
        writeln!(f, "  package:   {}", b.main_package)?;
        writeln!(f, "  module:    {} {}", b.main.path, b.main.version)?;
        writeln!(f, "  PIE:       {}", if self.pie { "yes" } else { "no" })?;
        writeln!(
            f,
            "  symbols:   {}",
            if self.has_symtab {
                ".symtab present"
            } else {
                "stripped (no .symtab)"
            }
        )?;
        writeln!(
            f,
            "  DWARF:     {}",
            if self.has_dwarf {
                "present"
            } else {
                "absent (offsets from the built-in table, else inferred from the binary)"
            }
        )?;
        match (&self.pclntab_layout, &self.pclntab_error) {
            (Some(layout), _) => writeln!(
                f,
                "  pclntab:   {layout} layout, {} functions",
                self.pclntab_functions
            )?,
            (None, Some(e)) => writeln!(f, "  pclntab:   unusable: {e}")?,
            (None, None) => writeln!(f, "  pclntab:   not found")?,
        }
        if b.deps.is_empty() {
            writeln!(f, "  deps:      none")?;
        } else {
            writeln!(f, "  deps:")?;
            for d in &b.deps {
                write!(f, "    {} {}", d.path, d.version)?;
                if let Some(r) = &d.replace {
                    write!(f, " => {} {}", r.path, r.version)?;
                }
                writeln!(f)?;
            }
        }
        if !b.settings.is_empty() {
            writeln!(f, "  build:")?;
            for (k, v) in &b.settings {
                writeln!(f, "    {k}={v}")?;
            }
        }
        for p in &self.probes {
            writeln!(f, "  probe {} on {}", p.name, p.function_name)?;
            if let Some(func) = &p.function {
                writeln!(f, "    function: {:#x}, {} bytes", func.address, func.size)?;
            }
            if let Some(e) = &p.entry {
                writeln!(
                    f,
                    "    entry:    {:#x} (file offset {:#x}) `{}` {}",
                    e.address,
                    e.file_offset,
                    e.instruction,
                    if e.emulated {
                        "[emulated]"
                    } else {
                        "[single-stepped]"
                    }
                )?;
                writeln!(
                    f,
                    "              reads {}; {}",
                    p.preserve.join(", "),
                    e.reason
                )?;
            }
            let rets: Vec<String> = p
                .returns
                .iter()
                .map(|r| format!("{:#x}", r.address))
                .collect();
            writeln!(f, "    returns:  {} ret(s) {}", rets.len(), rets.join(" "))?;
            for fr in &p.fields {
                match (&fr.offset, &fr.error) {
                    (Some(o), _) => {
                        let source = match &o.source {
                            OffsetSource::Dwarf => "DWARF".to_owned(),
                            OffsetSource::Table { go_version } => {
                                format!("table (Go {go_version})")
                            }
                            OffsetSource::ModuleTable { module, version } => {
                                format!("module table ({module} {version})")
                            }
                            OffsetSource::TypeMetadata => {
                                "type metadata (the binary's type descriptor)".to_owned()
                            }
                            OffsetSource::MachineCode {
                                sites,
                                type_metadata,
                            } => format!(
                                "machine code ({} agreeing loads: {}{}{})",
                                sites.len(),
                                sites[..sites.len().min(4)].join(", "),
                                if sites.len() > 4 { ", ..." } else { "" },
                                if *type_metadata {
                                    "; the type descriptor agrees"
                                } else {
                                    ""
                                }
                            ),
                        };
                        writeln!(
                            f,
                            "    {}.{}: offset {} size {} from {source}",
                            fr.type_name, fr.field, o.offset, o.size
                        )?;
                    }
                    (None, e) => writeln!(
                        f,
                        "    {}.{}: unavailable: {}",
                        fr.type_name,
                        fr.field,
                        e.as_deref().unwrap_or("?")
                    )?,
                }
            }
            if let Some(e) = &p.error {
                writeln!(f, "    error:    {e}")?;
            }
        }
        Ok(())
    }
}
