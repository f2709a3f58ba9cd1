//! Goroutine creation, as root: the goroutine-creation probes attached to
//! the Go HTTP fixture beside the net/http server probes. net/http serves
//! each connection on a goroutine the accept loop creates (`go c.serve`), so
//! every request's goroutine must show up as created, all by one creator,
//! before the request starts; and the table built from those records must
//! hand that creator's open span to the connection goroutine.

mod support;

use std::{collections::BTreeMap, time::Duration};

use agent::{
    binary::GoBinary,
    http_server,
    probes::{LoadOptions, Probes},
    ringbuf::record::{header, view},
    runtime,
    spans::{Goroutines, ParentSpan},
    target::Target,
};
use agent_common::{
    http::{HttpServerStart, KIND_HTTP_SERVER_START},
    runtime::{GoroutineCreated, KIND_GOROUTINE_CREATED},
};
use aya::maps::{MapData, RingBuf};
use opentelemetry::trace::{SpanId, TraceId};
use support::{
    fixture::{build, start_httpserver},
    http_client::Connection,
};

/// What came through the ring buffer, in order.
#[derive(Debug)]
enum Seen {
    Created { creator: u64, child: u64 },
    Start { goid: u64 },
}

fn drain(ring: &mut RingBuf<MapData>) -> Vec<Seen> {
    let mut seen = Vec::new();
    while let Some(item) = ring.next() {
        let kind = header(&item).expect("record header").kind;
        match kind {
            KIND_GOROUTINE_CREATED => {
                let rec: &GoroutineCreated = view(&item, kind).expect("creation record");
                seen.push(Seen::Created {
                    creator: rec.header.goid,
                    child: rec.child_goid,
                });
            }
            KIND_HTTP_SERVER_START => {
                let rec: &HttpServerStart = view(&item, kind).expect("start record");
                seen.push(Seen::Start {
                    goid: rec.header.goid,
                });
            }
            _ => {}
        }
    }
    seen
}

#[test]
fn connection_goroutines_are_seen_created_by_the_accept_loop() {
    let bin = build("httpserver", &[]);
    let (server, addr) = start_httpserver(&bin);
    let target = Target::open(server.pid()).expect("target");
    let go = GoBinary::open(&target.exe_path).expect("Go binary");
    let runtime_plan = runtime::plan::plan(&go).expect("goroutine-creation sites");
    assert!(runtime_plan.creator.emulated, "{:?}", runtime_plan.creator);
    assert!(!runtime_plan.created.is_empty());
    let http_plan =
        http_server::plan::plan(&go, http_server::SitePolicy::Cheapest).expect("net/http sites");

    let mut probes = Probes::load(LoadOptions::default()).expect("load eBPF (run as root)");
    let mut ring = probes.take_ring_buffer("EVENTS").expect("ring buffer");
    runtime::plan::attach(&mut probes, &target, 0, &runtime_plan).expect("attach runtime");
    http_server::plan::attach(&mut probes, &target, 0, &http_plan).expect("attach net/http");

    // Three requests, each on a connection of its own.
    for _ in 0..3 {
        let mut conn = Connection::open(addr);
        assert_eq!(conn.request("GET", "/hello", b"").0, 200);
    }
    std::thread::sleep(Duration::from_millis(200));
    let seen = drain(&mut ring);

    let mut creator_of = BTreeMap::new();
    let mut starts = Vec::new();
    for event in &seen {
        match *event {
            Seen::Created { creator, child } => {
                assert_ne!(creator, child, "{seen:?}");
                creator_of.insert(child, creator);
            }
            Seen::Start { goid } => {
                // Its goroutine's creation came first.
                assert!(creator_of.contains_key(&goid), "{goid} in {seen:?}");
                starts.push(goid);
            }
        }
    }
    assert_eq!(starts.len(), 3, "{seen:?}");
    let creators: Vec<u64> = starts.iter().map(|g| creator_of[g]).collect();
    assert!(
        creators.iter().all(|c| *c == creators[0]),
        "one accept loop created every connection goroutine: {creators:?}"
    );

    // Fed to the goroutine table, the records hand a span open on the
    // accept loop to each connection goroutine.
    let mut table = Goroutines::new(true);
    let span = ParentSpan {
        trace_id: TraceId::from(7_u128),
        span_id: SpanId::from(9_u64),
        flags: 1,
    };
    table.enter((0, creators[0]), span);
    for (&child, &creator) in &creator_of {
        table.spawned((0, creator), (0, child), 0);
    }
    for goid in &starts {
        assert_eq!(table.parent((0, *goid), 0), Some(span));
    }
    probes.detach_all();
}
