//! USDT discovery against `readelf -n` of the fixture built from source:
//! every note, exactly; the probe's file offset lands on its `nop`; a
//! running process's probes include its shared library twice (mapped from
//! its file and from a memfd copy), and a later look reads only the
//! libraries mapped since.

mod usdt_support;

use std::os::unix::fs::FileExt;

use agent::usdt::{ScannedFiles, format_probe_list, probes_in_file, probes_in_process};
use usdt_support::{Running, fixture, readelf_notes};

fn assert_matches_readelf(path: &std::path::Path) -> Vec<agent::usdt::UsdtProbe> {
    let probes = probes_in_file(path).expect("reading the probes");
    let notes = readelf_notes(path);
    assert!(!notes.is_empty(), "readelf found no USDT notes");
    assert_eq!(
        probes.len(),
        notes.len(),
        "probe count differs from readelf"
    );
    let file = std::fs::File::open(path).expect("opening the fixture");
    for (probe, (provider, name, location, _base, semaphore, args)) in probes.iter().zip(&notes) {
        assert_eq!(&probe.provider, provider);
        assert_eq!(&probe.name, name);
        // The fixture is not prelinked: .stapsdt.base is where the notes say.
        assert_eq!(probe.vaddr, *location, "{provider}:{name}");
        assert_eq!(
            probe.semaphore.map(|s| s.vaddr).unwrap_or(0),
            *semaphore,
            "{provider}:{name}"
        );
        assert_eq!(&probe.arg_text, args, "{provider}:{name}");
        assert!(
            probe.args_error.is_none(),
            "{provider}:{name}: {:?}",
            probe.args_error
        );
        assert_eq!(
            probe.args.len(),
            args.split_whitespace().count(),
            "{provider}:{name}"
        );
        // Every argument prints back as written (modulo hex constants).
        let printed: Vec<String> = probe.args.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed.join(" "),
            args.replace("$0x10", "$16"),
            "{provider}:{name}"
        );
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, probe.file_offset)
            .expect("reading at the probe's file offset");
        assert_eq!(
            byte[0], 0x90,
            "{provider}:{name}: no nop at the file offset"
        );
        if let Some(sema) = probe.semaphore {
            let mut value = [0u8; 2];
            file.read_exact_at(&mut value, sema.file_offset)
                .expect("reading the semaphore");
            assert_eq!(value, [0, 0], "semaphore's initial value in the file");
        }
    }
    probes
}

#[test]
fn executable_notes_match_readelf() {
    let fx = fixture("discovery");
    let probes = assert_matches_readelf(&fx.exe);
    let names: Vec<&str> = probes.iter().map(|p| p.name.as_str()).collect();
    for want in [
        "constants",
        "regs",
        "deref",
        "memory",
        "twelve",
        "asm_forms",
        "guarded",
        "bytes",
        "http_request_start",
        "http_request_end",
        "tls_handshake_start",
        "tls_handshake_end",
        "net_dial_start",
        "net_dial_end",
        "request_start",
        "request_end",
    ] {
        assert!(names.contains(&want), "probe {want} missing: {names:?}");
    }
    let guarded = probes
        .iter()
        .find(|p| p.name == "guarded")
        .expect("guarded");
    assert!(guarded.semaphore.is_some());
    assert_eq!(
        probes.iter().filter(|p| p.semaphore.is_some()).count(),
        1,
        "only fixture:guarded has a semaphore"
    );
    let twelve = probes.iter().find(|p| p.name == "twelve").expect("twelve");
    assert_eq!(twelve.args.len(), 12);
}

#[test]
fn library_notes_match_readelf() {
    let fx = fixture("discovery");
    let probes = assert_matches_readelf(&fx.lib);
    assert_eq!(probes.len(), 2);
    assert_eq!(probes[0].provider, "fixlib");
    assert_eq!(probes[0].name, "lib_probe");
    // A PIC library: its semaphore's file offset differs from its address.
    let guarded = &probes[1];
    assert_eq!(guarded.name, "lib_guarded");
    let sema = guarded.semaphore.expect("lib_guarded has a semaphore");
    assert_ne!(sema.vaddr, sema.file_offset);
    assert!(matches!(
        &guarded.args[0].location,
        agent::usdt::ArgLocation::Symbol { symbol, address: Some(_), .. } if symbol == "fixlib_counter"
    ));
}

#[test]
fn process_probes_include_libraries_and_memfd_copies() {
    let fx = fixture("discovery");
    let running = Running::start(fx);
    let pid = running.pid;
    let probes = probes_in_process(pid).expect("discovering the process's probes");
    let from_file = probes_in_file(&fx.exe).expect("exe probes");
    let exe_probes: Vec<_> = probes.iter().filter(|p| p.provider == "fixture").collect();
    assert_eq!(exe_probes.len(), from_file.len());
    for (a, b) in exe_probes.iter().zip(&from_file) {
        assert_eq!(
            (&a.name, a.vaddr, a.file_offset),
            (&b.name, b.vaddr, b.file_offset)
        );
        assert!(
            a.path.starts_with(format!("/proc/{pid}/root/")),
            "exe probe path {}",
            a.path.display()
        );
    }
    let lib: Vec<_> = probes.iter().filter(|p| p.name == "lib_probe").collect();
    assert_eq!(
        lib.len(),
        2,
        "the library from its file and from the memfd: {lib:#?}"
    );
    let root = format!("/proc/{pid}/root");
    assert!(
        lib.iter().any(|p| p.path
            == std::path::Path::new(&root).join(fx.lib.strip_prefix("/").expect("absolute"))),
        "library probe through /proc/N/root: {lib:#?}"
    );
    assert!(
        lib.iter()
            .any(|p| p.path.starts_with(format!("/proc/{pid}/map_files/"))),
        "memfd library probe through /proc/N/map_files: {lib:#?}"
    );
    assert_eq!(lib[0].file_offset, lib[1].file_offset);
    assert!(
        lib.iter()
            .any(|p| p.module.starts_with("/memfd:usdt-fixlib")),
        "the memfd's name as the process sees it: {lib:#?}"
    );
    assert!(lib.iter().any(|p| p.module == fx.lib.display().to_string()));

    let listing = format_probe_list(&probes);
    assert!(listing.contains("fixture:guarded"), "{listing}");
    assert!(
        listing.contains("/memfd:usdt-fixlib (deleted) (read via /proc/"),
        "{listing}"
    );
    assert!(listing.contains("semaphore 0x"), "{listing}");
    assert!(
        listing.contains("args [-4@$5 -4@$-7 -8@$1234567890123]"),
        "{listing}"
    );
    assert_eq!(listing.matches("fixlib:lib_probe").count(), 2, "{listing}");
}

#[test]
fn a_second_scan_reads_only_libraries_mapped_since() {
    let fx = fixture("discovery");
    let mut running = Running::start(fx);
    let pid = running.pid;
    let mut scanned = ScannedFiles::default();
    let first = scanned.scan(pid).expect("first scan");
    assert_eq!(
        first.len(),
        probes_in_process(pid).expect("discovering").len(),
        "the first scan reads everything"
    );
    assert!(first.iter().all(|p| p.provider != "runtime"));
    assert!(
        scanned.scan(pid).expect("second scan").is_empty(),
        "nothing new"
    );

    let load = format!("loadlib {}", fx.runtime_lib.display());
    assert_eq!(running.command(&load), "loaded");
    let new = scanned.scan(pid).expect("scan after loading");
    let mut names: Vec<_> = new
        .iter()
        .map(|p| format!("{}:{} in {}", p.provider, p.name, p.module))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "runtime:request_end in /memfd:usdt-runtime (deleted)",
            "runtime:request_start in /memfd:usdt-runtime (deleted)",
        ]
    );
    assert!(scanned.scan(pid).expect("again").is_empty());

    // A file whose probes failed to attach is read again once forgotten.
    scanned.forget(&new[0].path);
    assert_eq!(scanned.scan(pid).expect("after forgetting").len(), 2);
}
