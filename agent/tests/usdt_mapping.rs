//! The TOML mapping from probe pairs to spans: the documented example and
//! the built-ins parse, every validation error is caught with a clear
//! message, and a mapping turns decoded records into names, ids, attributes
//! and status.

use agent::usdt::{
    StringArg, StringMode, UsdtArg, UsdtEvent, UsdtProbe,
    mapping::{ArgType, ArgValue, MappingConfig, RequestId, Role, SpanKind},
};
use agent_common::{event::EventHeader, usdt::KIND_USDT};

const EXAMPLE: &str = r#"
open_span_timeout_ms = 30000
max_open_spans = 65536

[[span]]
name = "HTTP {method} {uri}"
kind = "server"
start = "myapp:http_request_start"
end = "myapp:http_request_end"
request_id = "request_id"
status = { arg = "status_code", error_if = ">=500" }

[span.start_args]
request_id = { index = 0, type = "str" }
method = { index = 1, type = "str", attribute = "http.request.method" }
uri = { index = 2, type = "str", cap = 128, attribute = "url.path" }

[span.end_args]
request_id = { index = 0, type = "str" }
status_code = { index = 1, type = "i64", attribute = "http.response.status_code" }

[[span]]
name = "query {{sql}} on {db}"
kind = "client"
start = "db:query_start"
end = "db:query_end"
request_id = "id"
[span.start_args]
id = { index = 0, type = "u64" }
db = { index = 1, type = "bytes", len = "db_len", attribute = "db.namespace" }
db_len = { index = 2, type = "u64" }
[span.end_args]
id = { index = 0, type = "u64" }
rows = { index = 1, type = "i64", attribute = "db.response.returned_rows" }
"#;

fn event(args: Vec<UsdtArg>) -> UsdtEvent {
    UsdtEvent {
        header: EventHeader {
            kind: KIND_USDT,
            ..EventHeader::default()
        },
        args: args.into(),
    }
}

fn int(v: i64) -> UsdtArg {
    UsdtArg {
        value: v as u64,
        failed: false,
        string: None,
        truncated: false,
    }
}

fn string(s: &str) -> UsdtArg {
    UsdtArg {
        value: 0x1000,
        failed: false,
        string: Some(s.as_bytes().into()),
        truncated: false,
    }
}

fn probe(provider: &str, name: &str) -> UsdtProbe {
    UsdtProbe {
        provider: provider.into(),
        name: name.into(),
        path: "/bin/x".into(),
        module: "/bin/x".into(),
        file_offset: 0,
        vaddr: 0,
        semaphore: None,
        arg_text: String::new(),
        args: Default::default(),
        args_error: None,
    }
}

#[test]
fn documented_example_parses() {
    let config = MappingConfig::from_toml_str(EXAMPLE).expect("the example parses");
    assert_eq!(
        config.open_span_timeout,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(config.max_open_spans, Some(65536));
    // Two spans of the file, then the built-ins minus the one it replaces.
    assert_eq!(config.spans.len(), 2 + 3);
    let (http, role) = config
        .find("myapp", "http_request_start")
        .expect("http start");
    assert_eq!(role, Role::Start);
    assert_eq!(http.kind, SpanKind::Server);
    assert!(
        config.find("other", "http_request_start").is_none(),
        "provider is checked"
    );
    let (db, role) = config.find("db", "query_end").expect("db end");
    assert_eq!(role, Role::End);
    assert_eq!(db.start_args[1].ty, ArgType::Bytes { len_index: 2 });

    let strings = config.string_args();
    assert_eq!(
        strings.for_probe(&probe("db", "query_start")),
        [StringArg {
            arg: 1,
            mode: StringMode::PtrLen { len_arg: 2 },
            cap: 64
        }]
    );
    assert_eq!(
        strings.for_probe(&probe("myapp", "http_request_start")),
        [
            StringArg::nul(0),
            StringArg::nul(1),
            StringArg {
                arg: 2,
                mode: StringMode::Nul,
                cap: 128
            }
        ]
    );
    assert!(strings.for_probe(&probe("db", "query_end")).is_empty());

    let start = event(vec![int(41), string("orders"), int(6)]);
    let end = event(vec![int(41), int(12)]);
    assert_eq!(db.request_id(Role::Start, &start), Some(RequestId::Int(41)));
    assert_eq!(db.request_id(Role::End, &end), Some(RequestId::Int(41)));
    assert_eq!(db.span_name(&start, Some(&end)), "query {sql} on orders");
    assert_eq!(
        db.attributes(Role::End, &end),
        [("db.response.returned_rows".to_owned(), ArgValue::I64(12))]
    );
}

#[test]
fn builtins_cover_the_seed_events() {
    let config = MappingConfig::builtin();
    assert_eq!(config.spans.len(), 4);
    for (start, end) in [
        ("http_request_start", "http_request_end"),
        ("tls_handshake_start", "tls_handshake_end"),
        ("net_dial_start", "net_dial_end"),
        ("request_start", "request_end"),
    ] {
        let (a, ra) = config.find("anyprovider", start).expect(start);
        let (b, rb) = config.find("anyprovider", end).expect(end);
        assert_eq!((ra, rb), (Role::Start, Role::End));
        assert_eq!(a, b);
    }

    let (http, _) = config.find("p", "http_request_start").expect("http");
    let start = event(vec![string("abc123"), string("GET"), string("/api/users")]);
    let ok = event(vec![string("abc123"), int(200), int(15000000)]);
    let failed = event(vec![string("abc123"), int(503)]);
    // Named as OpenTelemetry names a server span without a route; the path
    // is in `url.path`.
    assert_eq!(http.span_name(&start, Some(&ok)), "GET");
    let mut by_path = MappingConfig::builtin();
    by_path.name_builtin_http_by_path();
    let (http_by_path, _) = by_path.find("p", "http_request_start").expect("http");
    assert_eq!(
        http_by_path.span_name(&start, Some(&ok)),
        "HTTP GET /api/users",
        "--span-name=path"
    );
    assert_eq!(
        http.request_id(Role::Start, &start),
        Some(RequestId::Bytes(b"abc123".as_slice().into()))
    );
    assert_eq!(
        http.request_id(Role::Start, &start),
        http.request_id(Role::End, &ok)
    );
    assert_eq!(
        http.attributes(Role::Start, &start),
        [
            (
                "http.request.method".to_owned(),
                ArgValue::Str("GET".into())
            ),
            ("url.path".to_owned(), ArgValue::Str("/api/users".into())),
        ]
    );
    assert_eq!(
        http.attributes(Role::End, &ok),
        [("http.response.status_code".to_owned(), ArgValue::I64(200))]
    );
    assert!(!http.is_error(&start, &ok));
    assert!(http.is_error(&start, &failed));

    let (dial, _) = config.find("p", "net_dial_start").expect("dial");
    assert_eq!(dial.kind, SpanKind::Client);
    let start = event(vec![string("d1"), string("db.internal"), int(5432)]);
    assert_eq!(
        dial.attributes(Role::Start, &start),
        [
            (
                "server.address".to_owned(),
                ArgValue::Str("db.internal".into())
            ),
            ("server.port".to_owned(), ArgValue::I64(5432)),
        ]
    );
    assert!(dial.is_error(&start, &event(vec![string("d1"), int(-111)])));
    assert!(!dial.is_error(&start, &event(vec![string("d1"), int(0)])));

    let (tls, _) = config.find("p", "tls_handshake_end").expect("tls");
    assert_eq!(tls.span_name(&event(vec![]), None), "TLS Handshake");
    let (req, _) = config.find("p", "request_start").expect("request");
    assert_eq!(
        req.attributes(Role::Start, &event(vec![string("r-9")])),
        [("request.id".to_owned(), ArgValue::Str("r-9".into()))]
    );
}

#[test]
fn builtins_can_be_turned_off() {
    let config = MappingConfig::from_toml_str("builtins = false").expect("parses");
    assert!(config.spans.is_empty());
    let config = MappingConfig::from_toml_str("").expect("parses");
    assert_eq!(config, MappingConfig::builtin());
}

#[test]
fn validation_errors_are_clear() {
    let base = |extra_start: &str, extra_span: &str| {
        format!(
            r#"
[[span]]
name = "S {{a}}"
start = "p:s"
end = "p:e"
request_id = "id"
{extra_span}
[span.start_args]
id = {{ index = 0, type = "u64" }}
a = {{ index = 1, type = "str" }}
{extra_start}
[span.end_args]
id = {{ index = 0, type = "u64" }}
"#
        )
    };
    assert!(MappingConfig::from_toml_str(&base("", "")).is_ok());
    for (toml, want) in [
        (
            base("b = { index = 1, type = \"i64\" }", ""),
            "index 1 is also argument",
        ),
        (
            base("b = { index = 12, type = \"i64\" }", ""),
            "index 12 is out of range",
        ),
        (
            base("b = { index = 2, type = \"float\" }", ""),
            "type \"float\" is not",
        ),
        (base("b = { index = 2, type = \"bytes\" }", ""), "needs len"),
        (
            base("b = { index = 2, type = \"bytes\", len = \"zz\" }", ""),
            "len \"zz\" is not an argument",
        ),
        (
            base("b = { index = 2, type = \"bytes\", len = \"a\" }", ""),
            "is not an integer argument",
        ),
        (
            base("b = { index = 2, type = \"str\", cap = 200 }", ""),
            "cap 200 is not in 1..=128",
        ),
        (
            base("b = { index = 2, type = \"i64\", cap = 8 }", ""),
            "cap is only for strings",
        ),
        (
            base("b = { index = 2, type = \"i64\", attribute = \" \" }", ""),
            "attribute is empty",
        ),
        (
            base("", "status = { arg = \"a\", error_if = \"nonzero\" }"),
            "is not an integer",
        ),
        (
            base("", "status = { arg = \"id\", error_if = \"< 3\" }"),
            "is not \"nonzero\"",
        ),
        (
            base("", "status = { arg = \"zz\", error_if = \"nonzero\" }"),
            "is not an argument",
        ),
        (base("", "kind = \"sideways\""), "unknown variant"),
        (base("", "colour = 1"), "unknown field"),
    ] {
        let err = MappingConfig::from_toml_str(&toml).expect_err(want);
        let text = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(text.contains(want), "want {want:?} in {text:?}");
    }
    for (toml, want) in [
        (
            "[[span]]\nname = \"S {x}\"\nstart = \"s\"\nend = \"e\"\nrequest_id = \"id\"\n[span.start_args]\nid = { index = 0, type = \"u64\" }\n[span.end_args]\nid = { index = 0, type = \"u64\" }\n",
            "name uses {x}",
        ),
        (
            "[[span]]\nname = \"S\"\nstart = \"s\"\nend = \"e\"\nrequest_id = \"id\"\n[span.start_args]\nid = { index = 0, type = \"u64\" }\n",
            "must be declared in both",
        ),
        (
            "[[span]]\nname = \"S\"\nstart = \"s\"\nend = \"e\"\nrequest_id = \"id\"\n[span.start_args]\nid = { index = 0, type = \"u64\" }\n[span.end_args]\nid = { index = 0, type = \"str\" }\n",
            "integer in one probe and a string",
        ),
        (
            "[[span]]\nname = \"S\"\nstart = \"s\"\nend = \"s\"\nrequest_id = \"id\"\n",
            "start and end are the same probe",
        ),
        (
            "[[span]]\nname = \"S {\"\nstart = \"s\"\nend = \"e\"\nrequest_id = \"id\"\n",
            "unterminated",
        ),
        (
            "[[span]]\nname = \"S\"\nstart = \"p:\"\nend = \"e\"\nrequest_id = \"id\"\n",
            "is not \"name\" or \"provider:name\"",
        ),
        (
            "[[span]]\nname = \"A\"\nstart = \"s\"\nend = \"e\"\nrequest_id = \"id\"\n[span.start_args]\nid = { index = 0, type = \"u64\" }\n[span.end_args]\nid = { index = 0, type = \"u64\" }\n[[span]]\nname = \"B\"\nstart = \"p:s\"\nend = \"f\"\nrequest_id = \"id\"\n[span.start_args]\nid = { index = 0, type = \"u64\" }\n[span.end_args]\nid = { index = 0, type = \"u64\" }\n",
            "starts or ends more than one span",
        ),
        ("span = 3", "invalid type"),
    ] {
        let err = MappingConfig::from_toml_str(toml).expect_err(want);
        let text = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(text.contains(want), "want {want:?} in {text:?}");
    }
}

#[test]
fn user_spans_replace_builtins_on_the_same_probes() {
    let config = MappingConfig::from_toml_str(
        r#"
[[span]]
name = "my request"
start = "request_start"
end = "request_end"
request_id = "id"
[span.start_args]
id = { index = 0, type = "u64" }
[span.end_args]
id = { index = 0, type = "u64" }
"#,
    )
    .expect("parses");
    assert_eq!(config.spans.len(), 4);
    let (req, _) = config.find("x", "request_end").expect("request");
    assert_eq!(req.span_name(&event(vec![int(1)]), None), "my request");
}
