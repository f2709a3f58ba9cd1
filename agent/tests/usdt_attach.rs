//! As root: the `usdt_probe` program loads for real, attaches to every probe
//! of the running fixture (executable, shared library, memfd copy), and the
//! ring buffer carries the exact argument values of every form. A failure to
//! load or attach fails the test; nothing is skipped.

mod usdt_support;

use std::collections::HashMap;

use agent::probes::{LoadOptions, Probes};
use agent::usdt::{
    StringArg, StringArgs, StringMode, UsdtEvent, UsdtSites, attach_usdt, decode_usdt_record,
    probes_in_process,
};
use agent_common::usdt::KIND_USDT;
use aya::{
    EbpfLoader,
    maps::{MapData, RingBuf},
};
use usdt_support::{Running, fixture};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

fn string_args() -> StringArgs {
    let mut strings = StringArgs::new();
    let nul = |name: &str, args: &[u8], s: &mut StringArgs| {
        for &arg in args {
            s.add(Some("fixture"), name, StringArg::nul(arg));
        }
    };
    nul("http_request_start", &[0, 1, 2], &mut strings);
    nul("http_request_end", &[0], &mut strings);
    nul("tls_handshake_start", &[0, 1], &mut strings);
    nul("tls_handshake_end", &[0, 1], &mut strings);
    nul("net_dial_start", &[0], &mut strings);
    // A cap shorter than the string: cut to cap - 1 bytes and the NUL.
    strings.add(
        Some("fixture"),
        "net_dial_start",
        StringArg {
            arg: 1,
            mode: StringMode::Nul,
            cap: 5,
        },
    );
    nul("net_dial_end", &[0], &mut strings);
    nul("request_start", &[0], &mut strings);
    nul("request_end", &[0], &mut strings);
    strings.add(
        Some("fixture"),
        "bytes",
        StringArg {
            arg: 0,
            mode: StringMode::PtrLen { len_arg: 1 },
            cap: 128,
        },
    );
    strings.add(None, "lib_probe", StringArg::nul(1));
    strings
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<UsdtEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        let kind = u32::from_le_bytes(item[..4].try_into().expect("kind"));
        if kind == KIND_USDT {
            events.push(decode_usdt_record(&item).expect("decoding a USDT record"));
        }
    }
    events
}

fn ints(event: &UsdtEvent) -> Vec<i64> {
    event.args.iter().map(|a| a.as_i64()).collect()
}

fn strs(event: &UsdtEvent) -> Vec<Option<String>> {
    event
        .args
        .iter()
        .map(|a| a.as_str().map(|s| s.into_owned()))
        .collect()
}

#[test]
fn attaches_and_decodes_every_argument_form() {
    let fx = fixture("attach");
    let mut target = Running::start(fx);
    let pid = target.pid;
    let probes = probes_in_process(pid).expect("discovering probes");
    assert!(probes.len() >= 18, "{probes:#?}");

    let mut ebpf = Probes::load(LoadOptions {
        ring_buffer_bytes: 1 << 20,
        ..LoadOptions::default()
    })
    .expect("loading the eBPF object (run as root)");
    let mut sites = UsdtSites::new();
    assert_eq!(target.semaphore(), 0, "semaphore before attaching");
    let attachment = attach_usdt(&mut ebpf, &mut sites, 7, pid, &probes, &string_args())
        .expect("attaching usdt_probe to every probe");
    assert_eq!(attachment.sites().len(), probes.len());
    assert_eq!(target.semaphore(), 1, "semaphore while attached");
    let mut ring = ebpf
        .take_ring_buffer("EVENTS")
        .expect("EVENTS is a ring buffer");

    target.fire();
    let events = drain(&mut ring);
    assert_eq!(
        events.len(),
        probes.len(),
        "one record per probe: {events:#?}"
    );

    // Index the records by probe name (the library probe fires twice).
    let mut by_name: HashMap<String, Vec<&UsdtEvent>> = HashMap::new();
    for event in &events {
        let (provider, name) = sites.describe(event).expect("site of a record");
        assert_eq!(event.header.target, 7, "target slot from the cookie");
        assert_eq!(event.header.goid, 0);
        assert!(event.header.tid > 0);
        assert!(
            event.args.iter().all(|a| !a.failed),
            "{provider}:{name}: {event:#?}"
        );
        by_name.entry(name.to_owned()).or_default().push(event);
    }
    let one = |name: &str| -> &UsdtEvent {
        let v = by_name
            .get(name)
            .unwrap_or_else(|| panic!("no record for {name}"));
        assert_eq!(v.len(), 1, "{name} fired once");
        v[0]
    };

    assert_eq!(ints(one("constants")), [5, -7, 1234567890123]);
    assert_eq!(
        ints(one("regs")),
        [
            -8000000000,
            -123456,
            -1234,
            -12,
            250,
            0xfedcba9876543210u64 as i64
        ]
    );
    assert_eq!(ints(one("deref")), [-42, 0xdeadbeefcafe, -7]);
    assert_eq!(ints(one("memory")), [103, -1234567]);
    assert_eq!(
        ints(one("twelve")),
        [
            -1,
            200,
            -300,
            60000,
            -70000,
            4000000000,
            -5000000000,
            18000000000000000000u64 as i64,
            1000,
            1001,
            1002,
            1003
        ]
    );
    assert_eq!(
        ints(one("asm_forms")),
        [
            0x12,
            0x34,
            12,
            14,
            -3,
            -3,
            0x0102030405060708,
            0xfffffffb,
            -42,
            16,
            10,
            0x7f
        ]
    );
    assert_eq!(ints(one("guarded")), [77]);

    let bytes = one("bytes");
    assert_eq!(bytes.args[0].string.as_deref(), Some(&b"abcdef"[..]));
    assert!(!bytes.args[0].truncated);
    assert_eq!(bytes.args[1].as_u64(), 6);

    let s = |v: &[&str]| -> Vec<Option<String>> { v.iter().map(|s| Some(s.to_string())).collect() };
    let hrs = one("http_request_start");
    assert_eq!(strs(hrs), s(&["req-0001", "GET", "/api/users?id=7"]));
    let hre = one("http_request_end");
    assert_eq!(strs(hre)[0].as_deref(), Some("req-0001"));
    assert_eq!(ints(hre)[1..], [200, 15000000]);
    assert_eq!(
        strs(one("tls_handshake_start")),
        s(&["req-0003", "api.example.com"])
    );
    assert_eq!(strs(one("tls_handshake_end")), s(&["req-0003", "TLS 1.3"]));
    let nds = one("net_dial_start");
    assert_eq!(strs(nds)[..2], s(&["req-0002", "db.i"]));
    assert!(nds.args[1].truncated, "cut at its cap");
    assert!(!nds.args[0].truncated);
    assert_eq!(nds.args[2].as_i64(), 5432);
    assert_eq!(ints(one("net_dial_end"))[1], 0);
    assert_eq!(strs(one("request_start")), s(&["req-0004"]));
    assert_eq!(strs(one("request_end")), s(&["req-0004"]));

    let lib = &by_name["lib_probe"];
    assert_eq!(
        lib.len(),
        2,
        "library probe from the file and the memfd copy"
    );
    let mut which: Vec<(i64, String, i64)> = lib
        .iter()
        .map(|e| {
            (
                e.args[0].as_i64(),
                e.args[1].as_str().expect("string").into_owned(),
                e.args[2].as_i64(),
            )
        })
        .collect();
    which.sort();
    assert_eq!(
        which,
        [
            (1, "from-lib".to_owned(), 1000),
            (2, "from-lib".to_owned(), 2000)
        ]
    );
    // The two records come from two different sites (file and memfd).
    assert_ne!(lib[0].site(), lib[1].site());
    // The library's guarded probe: its semaphores (one per copy, at the load
    // address plus the link-time one) are on, and its %rip-relative argument
    // is read at the load address too.
    let mut guarded: Vec<i64> = by_name["lib_guarded"]
        .iter()
        .map(|e| e.args[0].as_i64())
        .collect();
    guarded.sort();
    assert_eq!(guarded, [4243, 4244]);

    // Firing again gives the same records; the guarded probe stops once
    // detached, and the semaphore is back to 0.
    target.fire();
    assert_eq!(drain(&mut ring).len(), probes.len());
    attachment.detach(&mut ebpf, &mut sites).expect("detaching");
    assert_eq!(target.semaphore(), 0, "semaphore after detaching");
    assert_eq!(sites.iter().count(), 0);
    target.fire();
    assert!(drain(&mut ring).is_empty(), "no records once detached");
}

#[test]
fn verifier_accepts_usdt_probe_with_room_to_spare() {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .expect("loading the eBPF object (run as root)");
    let prog: &mut aya::programs::UProbe = ebpf
        .program_mut(agent::usdt::USDT_PROGRAM)
        .expect("usdt_probe in the object")
        .try_into()
        .expect("usdt_probe is a uprobe");
    prog.load().expect("the verifier accepts usdt_probe");
    let insns = prog
        .info()
        .expect("program info")
        .verified_instruction_count()
        .expect("the kernel reports verified instructions");
    println!("usdt_probe: {insns} instructions verified");
    // The verifier's limit is 1,000,000: stay far from it, so that another
    // kernel's verifier (or compiler) does not tip it over.
    assert!(insns < 250_000, "{insns} instructions verified");
}

#[test]
fn builtin_mappings_read_the_seed_events() {
    use agent::usdt::mapping::{ArgValue, MappingConfig, RequestId, Role};

    let fx = fixture("attach");
    let mut target = Running::start(fx);
    let pid = target.pid;
    let config = MappingConfig::builtin();
    let probes: Vec<_> = probes_in_process(pid)
        .expect("discovering probes")
        .into_iter()
        .filter(|p| config.find(&p.provider, &p.name).is_some())
        .collect();
    assert_eq!(probes.len(), 8, "the seed's four pairs: {probes:#?}");
    let mut ebpf =
        Probes::load(LoadOptions::default()).expect("loading the eBPF object (run as root)");
    let mut sites = UsdtSites::new();
    let _attachment = attach_usdt(
        &mut ebpf,
        &mut sites,
        0,
        pid,
        &probes,
        &config.string_args(),
    )
    .expect("attaching");
    let mut ring = ebpf
        .take_ring_buffer("EVENTS")
        .expect("EVENTS is a ring buffer");
    target.fire();
    let events = drain(&mut ring);
    assert_eq!(events.len(), 8);

    // Pair by request id, as the span engine does.
    let mut starts = HashMap::new();
    let mut spans = Vec::new();
    for event in &events {
        let (provider, name) = sites.describe(event).expect("site");
        let (mapping, role) = config.find(provider, name).expect("mapped");
        let id = mapping.request_id(role, event).expect("request id");
        match role {
            Role::Start => {
                starts.insert(id, event);
            }
            Role::End => {
                let start = starts.remove(&id).expect("start before end");
                assert!(event.header.ktime_ns >= start.header.ktime_ns);
                let mut attributes = mapping.attributes(Role::Start, start);
                attributes.extend(mapping.attributes(Role::End, event));
                spans.push((
                    id,
                    mapping.span_name(start, Some(event)).into_owned(),
                    attributes,
                    mapping.is_error(start, event),
                ));
            }
        }
    }
    assert!(starts.is_empty());
    spans.sort_by(|a, b| a.0.cmp(&b.0));
    let id = |s: &str| RequestId::Bytes(s.as_bytes().into());
    let str_attr = |k: &str, v: &str| (k.to_owned(), ArgValue::Str(v.to_owned().into()));
    assert_eq!(
        spans,
        [
            (
                id("req-0001"),
                "GET".to_owned(),
                vec![
                    str_attr("http.request.method", "GET"),
                    str_attr("url.path", "/api/users?id=7"),
                    ("http.response.status_code".to_owned(), ArgValue::I64(200)),
                ],
                false
            ),
            (
                id("req-0002"),
                "net.Dial".to_owned(),
                vec![
                    str_attr("server.address", "db.internal"),
                    ("server.port".to_owned(), ArgValue::I64(5432)),
                ],
                false
            ),
            (
                id("req-0003"),
                "TLS Handshake".to_owned(),
                vec![
                    str_attr("server.address", "api.example.com"),
                    str_attr("tls.protocol.version", "TLS 1.3"),
                ],
                false
            ),
            (
                id("req-0004"),
                "Request".to_owned(),
                vec![str_attr("request.id", "req-0004")],
                false
            ),
        ]
    );
}
