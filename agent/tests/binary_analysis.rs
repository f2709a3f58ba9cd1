//! Go binary analysis against real builds of the net/http fixture
//! (`tests/fixtures/httpserver`), checked against what the Go toolchain's
//! own tools (`go tool nm`, `go tool objdump`) report.
//!
//! The version matrix builds the fixture with Go 1.17 to 1.26: Debian's
//! golang-1.19 (installed with apt-get when missing) and releases fetched
//! through the module proxy with `GOTOOLCHAIN=goX.Y.Z` (cached in the Go
//! module cache after the first run). A toolchain that cannot be had is a
//! test failure with the reason, never a skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use agent::binary::{
    BinaryError, FIXTURE_OPTIONAL_STRUCTS, GoBinary, GoVersion, NEEDED_FIELDS, OffsetError,
    OffsetSource, OffsetTable, PclnVersion, VERSIONED_STRUCTS, inspect,
};
use iced_x86::Register;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const DEBIAN_GO_119: &str = "/usr/lib/go-1.19/bin/go";

const SERVE_HTTP: &str = "net/http.serverHandler.ServeHTTP";
const FINISH_REQUEST: &str = "net/http.(*response).finishRequest";
/// The built-in probes: function and the registers their programs read.
const PROBES: &[(&str, &[Register])] = &[
    (SERVE_HTTP, &[Register::RCX, Register::RDI]),
    (FINISH_REQUEST, &[Register::RAX]),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Toolchain {
    /// The `go` on PATH (the newest release on this machine).
    Local,
    /// Debian's golang-1.19 package.
    Debian119,
    /// A release fetched through the module proxy (`GOTOOLCHAIN`).
    Proxy(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Plain,
    /// `-ldflags="-s -w"`: no symbol table, no DWARF.
    Stripped,
    Pie,
    /// Linked by the system linker (`-linkmode=external`), as cgo programs
    /// are: C start-up code precedes Go code in `.text`.
    External,
    ExternalStripped,
    ExternalPie,
    ExternalPieStripped,
}

impl Toolchain {
    fn command(self) -> Command {
        let mut cmd = match self {
            Toolchain::Local => {
                let mut c = Command::new("go");
                c.env("GOTOOLCHAIN", "local");
                c
            }
            Toolchain::Debian119 => {
                ensure_debian_go_119();
                let mut c = Command::new(DEBIAN_GO_119);
                c.env("GOTOOLCHAIN", "local");
                c
            }
            Toolchain::Proxy(version) => {
                let mut c = Command::new("go");
                c.env("GOTOOLCHAIN", version);
                c
            }
        };
        // Go 1.17 rejects -buildvcs, which this machine's GOFLAGS sets.
        cmd.env("GOFLAGS", "-mod=mod");
        cmd
    }

    /// `go version`'s release, e.g. `go1.21.13`.
    fn version(self) -> String {
        static CACHE: OnceLock<Mutex<HashMap<Toolchain, String>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(v) = cache.lock().expect("version cache").get(&self) {
            return v.clone();
        }
        let out = run(
            self.command().arg("version"),
            &format!("{self:?} go version"),
        );
        let version = out
            .split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("unexpected `go version` output {out:?}"))
            .to_owned();
        cache
            .lock()
            .expect("version cache")
            .insert(self, version.clone());
        version
    }
}

fn ensure_debian_go_119() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if Path::new(DEBIAN_GO_119).exists() {
            return;
        }
        let status = Command::new("apt-get")
            .args(["install", "-y", "golang-1.19"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        assert!(
            Path::new(DEBIAN_GO_119).exists(),
            "Go 1.19 is needed at {DEBIAN_GO_119}: `apt-get install -y golang-1.19` did not provide it ({status:?}); \
             install Debian's golang-1.19 package"
        );
    });
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the net/http fixture once per (toolchain, kind).
fn build(tc: Toolchain, kind: Kind) -> PathBuf {
    build_package(tc, kind, "httpserver")
}

/// Builds `tests/fixtures/<package>` once per (toolchain, kind) into cargo's
/// per-test temp dir; builds are serialised (two cores, and the Go build
/// cache is shared).
fn build_package(tc: Toolchain, kind: Kind, package: &'static str) -> PathBuf {
    type Builds = HashMap<(Toolchain, Kind, &'static str), PathBuf>;
    static BUILT: OnceLock<Mutex<Builds>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(&(tc, kind, package)) {
        return p.clone();
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("binary_analysis");
    std::fs::create_dir_all(&dir).expect("creating the build dir");
    let name = match tc {
        Toolchain::Local => "local".to_owned(),
        Toolchain::Debian119 => "debian-go1.19".to_owned(),
        Toolchain::Proxy(v) => v.to_owned(),
    };
    let out = dir.join(format!("{package}-{name}-{kind:?}"));
    let mut cmd = tc.command();
    cmd.arg("build").arg("-o").arg(&out);
    match kind {
        Kind::Plain => {}
        Kind::Stripped => {
            cmd.arg("-ldflags=-s -w");
        }
        Kind::Pie => {
            cmd.arg("-buildmode=pie");
        }
        Kind::External => {
            cmd.arg("-ldflags=-linkmode=external");
        }
        Kind::ExternalStripped => {
            cmd.arg("-ldflags=-s -w -linkmode=external");
        }
        Kind::ExternalPie => {
            cmd.args(["-buildmode=pie", "-ldflags=-linkmode=external"]);
        }
        Kind::ExternalPieStripped => {
            cmd.args(["-buildmode=pie", "-ldflags=-s -w -linkmode=external"]);
        }
    }
    cmd.arg(format!("./{package}")).current_dir(FIXTURES);
    run(
        &mut cmd,
        &format!(
            "building the fixture with {tc:?} ({kind:?}); a proxy toolchain needs the Go module proxy"
        ),
    );
    built.insert((tc, kind, package), out.clone());
    out
}

fn open(path: &Path) -> GoBinary {
    GoBinary::open(path).unwrap_or_else(|e| panic!("opening {}: {e:?}", path.display()))
}

/// `go tool nm`: symbol name -> address (text symbols).
fn nm(path: &Path) -> HashMap<String, u64> {
    let out = run(
        Command::new("go").args(["tool", "nm"]).arg(path),
        "go tool nm",
    );
    out.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            let kind = parts.next()?;
            let name = parts.collect::<Vec<_>>().join(" ");
            matches!(kind, "T" | "t").then_some((name, addr))
        })
        .collect()
}

/// One instruction as `go tool objdump` prints it.
#[derive(Debug)]
struct GoInsn {
    address: u64,
    bytes: Vec<u8>,
    asm: String,
}

fn objdump(path: &Path, function: &str) -> Vec<GoInsn> {
    let pattern = format!("^{}$", regex_escape(function));
    let out = run(
        Command::new("go")
            .args(["tool", "objdump", "-s", &pattern])
            .arg(path),
        "go tool objdump",
    );
    let insns: Vec<GoInsn> = out
        .lines()
        .filter(|l| !l.starts_with("TEXT"))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').filter(|f| !f.is_empty()).collect();
            let address =
                u64::from_str_radix(fields.get(1)?.trim().strip_prefix("0x")?, 16).ok()?;
            let hex = fields.get(2)?.trim();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .ok()?;
            let asm = fields.get(3).map_or("", |s| s.trim()).to_owned();
            Some(GoInsn {
                address,
                bytes,
                asm,
            })
        })
        .collect();
    assert!(
        !insns.is_empty(),
        "objdump found no {function} in {}",
        path.display()
    );
    insns
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let data = std::fs::read(path).expect("reading the binary");
    let start = usize::try_from(offset).expect("offset fits usize");
    data[start..start + len].to_vec()
}

/// Checks functions, the entry site and the return sites of both built-in
/// probes in `bin` against objdump of `reference` (the same build, or the
/// unstripped build with the same layout).
fn check_sites(bin_path: &Path, reference: &Path) {
    let bin = open(bin_path);
    let symbols = nm(reference);
    for &(name, preserve) in PROBES {
        let f = bin
            .function(name)
            .unwrap_or_else(|| panic!("{name} not found in {}", bin_path.display()));
        assert_eq!(
            Some(&f.address),
            symbols.get(name),
            "{name} address vs go tool nm"
        );
        let insns = objdump(reference, name);
        assert_eq!(insns[0].address, f.address);

        // Entry: the JBE right after the stack-bound check.
        let site = bin.entry_site(&f, preserve).expect("entry site");
        let jbe = insns
            .iter()
            .position(|i| i.asm.starts_with("JBE"))
            .expect("a JBE in the prologue");
        let skipped = &insns[..jbe];
        assert!(
            skipped
                .last()
                .is_some_and(|i| i.asm == "CMPQ SP, 0x10(R14)" || i.asm == "CMPQ R12, 0x10(R14)"),
            "{name}: prologue {skipped:?}"
        );
        assert!(jbe <= 2, "{name}: JBE is instruction {jbe}");
        assert_eq!(site.address, insns[jbe].address, "{name}: {site:?}");
        assert!(site.emulated, "{name}: {site:?}");
        assert!(site.instruction.starts_with("jbe "), "{}", site.instruction);
        assert!(site.reason.contains("r14"), "{}", site.reason);
        assert_eq!(
            file_bytes(bin_path, site.file_offset, insns[jbe].bytes.len()),
            insns[jbe].bytes,
            "{name}: bytes at the entry site's file offset"
        );

        // Returns: exactly objdump's RETs, each a c3 byte in the file.
        let rets = bin.return_sites(&f).expect("return sites");
        let want: Vec<u64> = insns
            .iter()
            .filter(|i| i.asm == "RET")
            .map(|i| i.address)
            .collect();
        assert!(!want.is_empty());
        assert_eq!(
            rets.iter().map(|s| s.address).collect::<Vec<_>>(),
            want,
            "{name} return sites"
        );
        for r in &rets {
            assert_eq!(r.instruction, "ret");
            assert!(!r.emulated);
            assert_eq!(file_bytes(bin_path, r.file_offset, 1), [0xc3]);
        }
    }
}

/// Every needed offset: DWARF from `plain`, the table from `stripped`,
/// equal, and equal to what the checked-in table says for this release.
/// `sql` is the database/sql fixture built with the same release: the
/// structs the HTTP fixture does not use are measured on it.
fn check_offsets(plain: &Path, stripped: &Path, sql: &Path) {
    let plain = open(plain);
    let sql = open(sql);
    let stripped = open(stripped);
    let version = plain.build_info().go_version;
    assert!(plain.has_dwarf());
    assert!(!stripped.has_dwarf());
    for (type_name, fields) in NEEDED_FIELDS {
        // The HTTP fixture does not use database/sql: the table has those
        // structs from the database/sql fixture's DWARF.
        if FIXTURE_OPTIONAL_STRUCTS.contains(type_name) {
            assert!(
                matches!(
                    plain.struct_field_offset(type_name, fields[0]),
                    Err(OffsetError::NoSuchStruct { .. })
                ),
                "{type_name} is in the HTTP fixture now: drop it from FIXTURE_OPTIONAL_STRUCTS"
            );
            for field in *fields {
                let dwarf = sql
                    .struct_field_offset(type_name, field)
                    .unwrap_or_else(|e| panic!("{type_name}.{field} DWARF: {e:?}"));
                let table = stripped
                    .struct_field_offset(type_name, field)
                    .unwrap_or_else(|e| panic!("{type_name}.{field} table: {e:?}"));
                assert_eq!(
                    (dwarf.offset, dwarf.size),
                    (table.offset, table.size),
                    "{type_name}.{field} on Go {version}"
                );
            }
            continue;
        }
        for field in *fields {
            let dwarf = plain.struct_field_offset(type_name, field);
            let table = stripped.struct_field_offset(type_name, field);
            // Maps changed from buckets to swiss tables in Go 1.24.
            let swiss = version >= GoVersion::new(1, 24, 0);
            // Go 1.27 moved the bundled HTTP/2 server out of net/http.
            let bundled_h2 = version < GoVersion::new(1, 27, 0);
            let struct_absent = VERSIONED_STRUCTS.contains(type_name)
                && if type_name.starts_with("net/http.http2") {
                    !bundled_h2
                } else if type_name.starts_with("net/http/internal/http2.") {
                    bundled_h2
                } else {
                    type_name.starts_with("internal/runtime/maps.") != swiss
                };
            if struct_absent {
                assert!(
                    matches!(dwarf, Err(OffsetError::NoSuchStruct { .. })),
                    "{type_name}.{field} on {version}: {dwarf:?}"
                );
                assert!(
                    matches!(table, Err(OffsetError::AbsentInRelease { .. })),
                    "{type_name}.{field} on {version}: {table:?}"
                );
                continue;
            }
            let pattern_absent = *field == "Pattern" && version < GoVersion::new(1, 23, 0);
            if pattern_absent {
                assert!(
                    matches!(dwarf, Err(OffsetError::NoSuchField { .. })),
                    "{type_name}.{field} on {version}: {dwarf:?}"
                );
                assert!(
                    matches!(table, Err(OffsetError::AbsentInRelease { .. })),
                    "{type_name}.{field} on {version}: {table:?}"
                );
                continue;
            }
            let dwarf = dwarf.unwrap_or_else(|e| panic!("{type_name}.{field} DWARF: {e:?}"));
            let table = table.unwrap_or_else(|e| panic!("{type_name}.{field} table: {e:?}"));
            assert_eq!(dwarf.source, OffsetSource::Dwarf);
            assert!(
                matches!(&table.source, OffsetSource::Table { go_version }
                    if GoVersion::parse(go_version).is_some_and(|v| (v.major, v.minor) == (version.major, version.minor))),
                "{:?}",
                table.source
            );
            assert_eq!(
                (dwarf.offset, dwarf.size),
                (table.offset, table.size),
                "{type_name}.{field} on Go {version}"
            );
            assert!(dwarf.size > 0);
        }
    }
    // The checked-in table is what the generator makes from this build.
    let generated = plain
        .offset_table_entry(&[&sql])
        .expect("generating a table entry");
    let table = OffsetTable::builtin().expect("built-in table");
    let checked_in = table
        .entry(version)
        .expect("a table entry for this release");
    assert_eq!(
        generated.structs, checked_in.structs,
        "offsets_table.json is stale for Go {version}: run `cargo xtask offsets`"
    );
}

/// Every needed offset inferred from the binary itself (type descriptors;
/// `runtime.g.goid` from machine code) equals DWARF's: for the stripped and
/// PIE builds (and the plain one, whose DWARF inference ignores) against
/// the plain build's DWARF, and for the database/sql fixture against its
/// own. A field DWARF does not have is not inferred either. A wrong
/// inference fails here, never a user.
fn check_inference(plain: &Path, others: &[&Path], sql: &Path) {
    let plain = open(plain);
    let sql = open(sql);
    let others: Vec<GoBinary> = others.iter().map(|p| open(p)).collect();
    let version = plain.build_info().go_version;
    let mut compared = 0;
    for (type_name, fields) in NEEDED_FIELDS {
        let (reference, inferred_from): (&GoBinary, Vec<&GoBinary>) =
            if FIXTURE_OPTIONAL_STRUCTS.contains(type_name) {
                (&sql, vec![&sql])
            } else {
                (
                    &plain,
                    std::iter::once(&plain).chain(others.iter()).collect(),
                )
            };
        for field in *fields {
            let dwarf = reference.struct_field_offset(type_name, field);
            for bin in &inferred_from {
                let what = format!(
                    "{type_name}.{field} on Go {version} ({})",
                    bin.path().display()
                );
                let inferred = bin.inferred_field_offset(type_name, field);
                match &dwarf {
                    Ok(d) => {
                        assert_eq!(d.source, OffsetSource::Dwarf, "{what}");
                        let i = inferred.unwrap_or_else(|e| panic!("{what}: not inferred: {e}"));
                        assert_eq!((i.offset, i.size), (d.offset, d.size), "{what}: {i:?}");
                        match &i.source {
                            OffsetSource::TypeMetadata => {
                                assert_ne!(*type_name, "runtime.g", "{what}");
                            }
                            OffsetSource::MachineCode { sites, .. } => {
                                assert_eq!(*type_name, "runtime.g", "{what}");
                                assert!(sites.len() >= 2, "{what}: {sites:?}");
                            }
                            other => panic!("{what}: {other:?}"),
                        }
                        compared += 1;
                    }
                    Err(_) => assert!(
                        inferred.is_err(),
                        "{what}: DWARF has no such field ({dwarf:?}) but inference says {inferred:?}"
                    ),
                }
            }
        }
    }
    assert!(compared > 40, "only {compared} inferred offsets compared");
}

/// One release of the matrix: plain, stripped and PIE builds.
fn check_release(tc: Toolchain, pclntab: PclnVersion) {
    let plain_path = build(tc, Kind::Plain);
    let stripped_path = build(tc, Kind::Stripped);
    let pie_path = build(tc, Kind::Pie);
    let expected = tc.version();

    for (path, kind) in [
        (&plain_path, Kind::Plain),
        (&stripped_path, Kind::Stripped),
        (&pie_path, Kind::Pie),
    ] {
        let bin = open(path);
        let info = bin.build_info();
        assert_eq!(info.go_version_raw, expected, "{kind:?}");
        assert_eq!(GoVersion::parse(&expected), Some(info.go_version));
        assert_eq!(info.main.path, "agent.test/fixtures", "{kind:?}");
        // `(devel)`, or a pseudo-version when Go 1.24+ stamps it from git.
        assert!(
            info.main.version == "(devel)" || info.main.version.starts_with("v0.0.0-"),
            "{}",
            info.main.version
        );
        assert_eq!(info.main_package, "agent.test/fixtures/httpserver");
        assert!(info.deps.is_empty());
        assert_eq!(bin.pclntab_version(), Some(pclntab), "{kind:?}");
        assert_eq!(bin.is_pie(), kind == Kind::Pie);
        assert_eq!(bin.has_symtab(), kind != Kind::Stripped);
        assert_eq!(bin.has_dwarf(), kind != Kind::Stripped);
        if info.go_version >= GoVersion::new(1, 18, 0) {
            // Build settings are recorded from Go 1.18 on.
            let ldflags = info.setting("-ldflags");
            match kind {
                Kind::Stripped => assert_eq!(ldflags, Some("-s -w")),
                _ => assert_eq!(ldflags, None),
            }
            assert_eq!(info.setting("GOARCH"), Some("amd64"));
        }
        if info.go_version >= GoVersion::new(1, 20, 0) {
            // -buildmode is recorded from Go 1.20 on.
            let mode = if kind == Kind::Pie { "pie" } else { "exe" };
            assert_eq!(info.setting("-buildmode"), Some(mode));
        }
    }
    check_sites(&plain_path, &plain_path);
    // Stripped: the same layout as the plain build; functions from pclntab.
    check_sites(&stripped_path, &plain_path);
    check_sites(&pie_path, &pie_path);
    check_offsets(
        &plain_path,
        &stripped_path,
        &build_package(tc, Kind::Plain, "sqltypes"),
    );
    check_inference(
        &plain_path,
        &[&stripped_path, &pie_path],
        &build_package(tc, Kind::Plain, "sqltypes"),
    );

    // The pclntab agrees with the symbol table on every function. The
    // pclntab names ABI0 wrappers like the function they wrap (the symbol
    // table adds `.abi0`), so names map to sets of addresses.
    let plain = open(&plain_path);
    let mut symbols: HashMap<String, Vec<u64>> = HashMap::new();
    for (name, addr) in nm(&plain_path) {
        let name = name.strip_suffix(".abi0").unwrap_or(&name).to_owned();
        symbols.entry(name).or_default().push(addr);
    }
    let mut compared = 0;
    let mut probe_functions = HashMap::<&str, usize>::new();
    for f in plain.functions() {
        if let Some(addrs) = symbols.get(&f.name) {
            assert!(
                addrs.contains(&f.address),
                "{} at {:#x}: nm says {addrs:x?}",
                f.name,
                f.address
            );
            compared += 1;
        }
        if let Some(&(name, _)) = PROBES.iter().find(|(name, _)| *name == f.name) {
            *probe_functions.entry(name).or_default() += 1;
        }
    }
    assert!(compared > 3000, "only {compared} functions compared");
    assert_eq!(plain.functions().count(), plain.pclntab_len());
    // Lookups by name in stripped binaries are unambiguous for the probes.
    for (name, _) in PROBES {
        assert_eq!(probe_functions.get(name), Some(&1), "{name}");
    }
}

#[test]
fn go1_17_pointer_buildinfo_and_go116_pclntab() {
    check_release(Toolchain::Proxy("go1.17.13"), PclnVersion::Go116);
}

#[test]
fn go1_18_pclntab() {
    check_release(Toolchain::Proxy("go1.18.10"), PclnVersion::Go118);
}

#[test]
fn go1_19_debian() {
    check_release(Toolchain::Debian119, PclnVersion::Go118);
}

#[test]
fn go1_20() {
    check_release(Toolchain::Proxy("go1.20.14"), PclnVersion::Go120);
}

#[test]
fn go1_21() {
    check_release(Toolchain::Proxy("go1.21.13"), PclnVersion::Go120);
}

#[test]
fn go1_22() {
    check_release(Toolchain::Proxy("go1.22.12"), PclnVersion::Go120);
}

#[test]
fn go1_23() {
    check_release(Toolchain::Proxy("go1.23.12"), PclnVersion::Go120);
}

#[test]
fn go1_24() {
    check_release(Toolchain::Proxy("go1.24.13"), PclnVersion::Go120);
}

#[test]
fn go1_25() {
    check_release(Toolchain::Proxy("go1.25.8"), PclnVersion::Go120);
}

/// The newest release the proxy serves: offsets inferred from its stripped
/// and PIE builds equal its DWARF (the rest of its analysis is checked by
/// the version matrix).
#[test]
fn go1_27_inference() {
    let tc = Toolchain::Proxy("go1.27.4");
    check_inference(
        &build(tc, Kind::Plain),
        &[&build(tc, Kind::Stripped), &build(tc, Kind::Pie)],
        &build_package(tc, Kind::Plain, "sqltypes"),
    );
    // A refusal names the field and why inference failed: a struct the
    // HTTP fixture does not link has no type descriptor.
    let stripped = open(&build(tc, Kind::Stripped));
    let why = stripped
        .inferred_field_offset("database/sql.DB", "connector")
        .expect_err("no database/sql in the HTTP fixture");
    assert_eq!(why, "no type descriptor for database/sql.DB in this binary");
    let refusal = stripped
        .struct_field_offset("net/http.Server", "Addr")
        .expect_err("not a field the table or inference covers");
    assert!(
        matches!(&refusal, OffsetError::NotInferred(n)
            if n.type_name == "net/http.Server" && n.field == "Addr"
                && n.why == "net/http.Server is not a struct the agent infers"),
        "{refusal:?}"
    );
    assert!(
        refusal
            .to_string()
            .starts_with("no usable offset for net/http.Server.Addr: no DWARF"),
        "{refusal}"
    );
}

#[test]
fn newest_local_toolchain() {
    check_release(Toolchain::Local, PclnVersion::Go120);
}

/// External linking (what cgo programs get): stripped builds must find
/// `runtime.text` through the moduledata (or its relocations in PIE), not
/// the start of `.text`, which holds C start-up code first.
fn check_external(tc: Toolchain) {
    assert!(
        Command::new("gcc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "external linking needs gcc (apt-get install gcc)"
    );
    let plain = build(tc, Kind::External);
    let stripped = build(tc, Kind::ExternalStripped);
    let pie = build(tc, Kind::ExternalPie);
    let pie_stripped = build(tc, Kind::ExternalPieStripped);
    for path in [&plain, &stripped, &pie, &pie_stripped] {
        let bin = open(path);
        let ldflags = bin.build_info().setting("-ldflags").unwrap_or_default();
        assert!(ldflags.contains("-linkmode=external"), "{ldflags}");
    }
    // The hazard this guards against is real in these builds: `.text`
    // starts before `runtime.text`.
    let runtime_text = nm(&plain)["runtime.text"];
    let sections = run(Command::new("readelf").arg("-SW").arg(&plain), "readelf");
    let text_section = sections
        .lines()
        .find_map(|l| {
            let rest = l.split_once("] ")?.1;
            let mut parts = rest.split_whitespace();
            (parts.next()? == ".text").then_some(())?;
            u64::from_str_radix(parts.nth(1)?, 16).ok()
        })
        .expect(".text in readelf -S");
    assert!(
        text_section < runtime_text,
        "{text_section:#x} vs {runtime_text:#x}"
    );
    check_sites(&plain, &plain);
    check_sites(&stripped, &plain);
    check_sites(&pie, &pie);
    check_sites(&pie_stripped, &pie);
}

#[test]
fn external_linking_newest() {
    check_external(Toolchain::Local);
}

#[test]
fn external_linking_go1_22() {
    check_external(Toolchain::Proxy("go1.22.12"));
}

/// A real cgo program (C code and the C compiler's DWARF next to Go's,
/// linked by the system linker): the same functions, sites and offsets.
fn check_cgo(tc: Toolchain) {
    let plain = build_package(tc, Kind::Plain, "cgohttp");
    let stripped = build_package(tc, Kind::Stripped, "cgohttp");
    for path in [&plain, &stripped] {
        let bin = open(path);
        assert_eq!(bin.build_info().setting("CGO_ENABLED"), Some("1"));
        assert_eq!(bin.build_info().main_package, "agent.test/fixtures/cgohttp");
    }
    // The C function is in the binary (and so in .text before Go code).
    assert!(nm(&plain).keys().any(|name| name.contains("answer")));
    check_sites(&plain, &plain);
    check_sites(&stripped, &plain);
    check_offsets(
        &plain,
        &stripped,
        &build_package(tc, Kind::Plain, "sqltypes"),
    );
}

#[test]
fn cgo_newest() {
    check_cgo(Toolchain::Local);
}

#[test]
fn cgo_go1_19_debian() {
    check_cgo(Toolchain::Debian119);
}

#[test]
fn pclntab_found_by_scanning_when_the_section_is_renamed() {
    let stripped = build(Toolchain::Local, Kind::Stripped);
    let plain = build(Toolchain::Local, Kind::Plain);
    let renamed = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("binary_analysis")
        .join("httpserver-local-renamed-pclntab");
    run(
        Command::new("objcopy")
            .args(["--rename-section", ".gopclntab=.renamed"])
            .arg(&stripped)
            .arg(&renamed),
        "objcopy",
    );
    let bin = open(&renamed);
    assert_eq!(bin.pclntab_version(), Some(PclnVersion::Go120));
    assert_eq!(bin.pclntab_len(), open(&stripped).pclntab_len());
    check_sites(&renamed, &plain);
}

#[test]
fn inspect_reports_sites_offsets_and_reasons() {
    let stripped = open(&build(Toolchain::Local, Kind::Stripped));
    let report = inspect(&stripped);
    assert!(!report.has_symtab && !report.has_dwarf);
    // Every probe every family declares, the net/http server's first.
    assert_eq!(
        report.probes.len(),
        agent::family::FAMILIES
            .iter()
            .map(|f| f.probes.len())
            .sum::<usize>()
    );
    // The server's: start, HTTP/1 end, HTTP/2 end (bundled in net/http up to
    // Go 1.26, which the local toolchain is), HTTP/2 end of Go 1.27+.
    assert_eq!(agent::http_server::FAMILY.probes.len(), 4);
    assert!(
        report.probes[3]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not found")),
        "{:?}",
        report.probes[3]
    );
    for probe in &report.probes[..3] {
        assert_eq!(probe.error, None, "{}", probe.name);
        let entry = probe.entry.as_ref().expect("entry site");
        assert!(entry.emulated && entry.instruction.starts_with("jbe "));
        assert!(!probe.returns.is_empty());
        for field in &probe.fields {
            let offset = field.offset.as_ref().expect("offset from the table");
            assert!(matches!(offset.source, OffsetSource::Table { .. }));
        }
    }
    let json = serde_json::to_value(&report).expect("serialising the report");
    assert_eq!(json["probes"][0]["function_name"], SERVE_HTTP);
    assert_eq!(json["probes"][1]["preserve"][0], "rax");
    assert_eq!(
        json["probes"][2]["function_name"],
        "net/http.(*http2responseWriter).handlerDone"
    );
    assert_eq!(json["has_dwarf"], false);
    let text = report.to_string();
    assert!(text.contains("stripped (no .symtab)"), "{text}");
    assert!(text.contains("[emulated]"), "{text}");
    assert!(text.contains("from table (Go "), "{text}");
}

#[test]
fn unreadable_dwarf_falls_back_to_the_table() {
    let plain_path = build(Toolchain::Local, Kind::Plain);
    let sections = run(
        Command::new("readelf").arg("-SW").arg(&plain_path),
        "readelf",
    );
    // [Nr] Name Type Address Off Size ...: the file offset of .debug_info.
    let offset = sections
        .lines()
        .find_map(|l| {
            let rest = l.split_once("] ")?.1;
            let parts: Vec<&str> = rest.split_whitespace().collect();
            (parts.first() == Some(&".debug_info")).then_some(())?;
            usize::from_str_radix(parts.get(3)?, 16).ok()
        })
        .expect(".debug_info in readelf -S");
    let mut bytes = std::fs::read(&plain_path).expect("read");
    // Keep the compression header, garble the zlib stream after it.
    for b in &mut bytes[offset + 24..offset + 24 + 256] {
        *b = 0xa5;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let garbled = dir.path().join("garbled-dwarf");
    std::fs::write(&garbled, &bytes).expect("write");
    let good = open(&plain_path);
    let bad = open(&garbled);
    assert!(bad.has_dwarf());
    for (type_name, field) in [("runtime.g", "goid"), ("net/http.Request", "RequestURI")] {
        let want = good.struct_field_offset(type_name, field).expect("DWARF");
        let got = bad.struct_field_offset(type_name, field).expect("table");
        assert_eq!(want.source, OffsetSource::Dwarf);
        assert!(matches!(got.source, OffsetSource::Table { .. }), "{got:?}");
        assert_eq!((got.offset, got.size), (want.offset, want.size));
    }
    // Not in the table either: the DWARF error is what is reported.
    match bad.struct_field_offset("net/http.Server", "Addr") {
        Err(OffsetError::Dwarf(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn open_errors_say_what_is_wrong() {
    let missing = Path::new("/nonexistent/agent-test-binary");
    match GoBinary::open(missing) {
        Err(BinaryError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("{other:?}"),
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("text");
    std::fs::write(&text, "not an executable\n").expect("write");
    assert!(matches!(
        GoBinary::open(&text),
        Err(BinaryError::NotElf { .. })
    ));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").expect("write");
    assert!(matches!(
        GoBinary::open(&empty),
        Err(BinaryError::NotElf { .. } | BinaryError::Io { .. })
    ));
    // A C program: ELF, x86-64, not Go.
    let not_go = Path::new("/bin/true");
    assert!(
        matches!(GoBinary::open(not_go), Err(BinaryError::NotGo { .. })),
        "{:?}",
        GoBinary::open(not_go).map(|_| ())
    );
    // A 32-bit ELF header.
    let mut elf32 = std::fs::read(not_go).expect("read /bin/true");
    elf32[4] = 1;
    let elf32_path = dir.path().join("elf32");
    std::fs::write(&elf32_path, &elf32).expect("write");
    assert!(matches!(
        GoBinary::open(&elf32_path),
        Err(BinaryError::NotX86_64 { .. })
    ));
}

#[test]
fn corrupt_binaries_fail_cleanly() {
    let good = std::fs::read(build(Toolchain::Local, Kind::Stripped)).expect("read");
    let bin = open(&build(Toolchain::Local, Kind::Stripped));
    let f = bin.function(SERVE_HTTP).expect("function");
    let dir = tempfile::tempdir().expect("tempdir");
    // Truncations at interesting places: headers, mid-text, mid-pclntab.
    for len in [
        0,
        3,
        63,
        64,
        200,
        4096,
        good.len() / 3,
        good.len() / 2,
        good.len() - 1,
    ] {
        let p = dir.path().join(format!("trunc-{len}"));
        std::fs::write(&p, &good[..len]).expect("write");
        if let Ok(b) = GoBinary::open(&p) {
            let _ = inspect(&b);
            let _ = b.functions().count();
        }
    }
    // Deterministic byte flips across the whole file, analysed each time.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..40 {
        let mut bytes = good.clone();
        for _ in 0..64 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let at = (seed >> 17) as usize % bytes.len();
            bytes[at] = (seed >> 7) as u8;
        }
        let p = dir.path().join(format!("flip-{round}"));
        std::fs::write(&p, &bytes).expect("write");
        if let Ok(b) = GoBinary::open(&p) {
            let _ = inspect(&b);
            let _ = b.entry_site(&f, &[Register::RDI]);
            let _ = b.return_sites(&f);
        }
    }
}
