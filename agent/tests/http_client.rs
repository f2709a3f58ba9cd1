//! End to end, as root: a Go program whose HTTP handler calls other servers
//! with net/http's client (HTTP/1.1, HTTP/2 over TLS, a refused port, a
//! 503, credentials and a secret query in a URL), the agent attached, and
//! the exact CLIENT spans asserted as children of the handler's SERVER span.

mod support;
use support::agent::AGENT_EXIT;

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use support::{
    agent::{Agent, attach_grpc, command},
    fixture::{ClientAddrs as Addrs, start_httpclient},
    http_client::Connection,
    otlp::{FlatSpan, Receiver, split_net},
};

/// What one client span must say.
struct Expected {
    name: &'static str,
    method: &'static str,
    method_original: Option<&'static str>,
    url: String,
    port: u16,
    status: Option<u16>,
    protocol: Option<&'static str>,
    error_type: Option<&'static str>,
}

fn expected(a: &Addrs) -> Vec<Expected> {
    let back = a.back;
    let ok = |url: String| Expected {
        name: "GET",
        method: "GET",
        method_original: None,
        url,
        port: back.port(),
        status: Some(200),
        protocol: Some("1.1"),
        error_type: None,
    };
    vec![
        ok(format!("http://{back}/ok")),
        Expected {
            url: format!("https://{}/ok", a.tls_back),
            port: a.tls_back.port(),
            protocol: Some("2"),
            ..ok(String::new())
        },
        Expected {
            url: format!("http://{}/refused", a.refused),
            port: a.refused.port(),
            status: None,
            protocol: None,
            error_type: Some("*net.OpError"),
            ..ok(String::new())
        },
        Expected {
            url: format!("http://{back}/unavailable"),
            status: Some(503),
            error_type: Some("503"),
            ..ok(String::new())
        },
        ok(format!("http://{back}/ok?token=REDACTED&q=REDACTED")),
        Expected {
            name: "HTTP",
            method: "_OTHER",
            method_original: Some("PURGE"),
            ..ok(format!("http://{back}/ok"))
        },
    ]
}

/// Every span the agent exported for one `/call`: the front request's
/// SERVER span, six CLIENT spans, the back servers' five SERVER spans.
fn call_and_collect(agent_args: &[&str]) -> (Addrs, Vec<FlatSpan>, Agent) {
    let (mut fixture, addrs) = start_httpclient(&support::fixture::build("httpclient", &[]));
    let receiver = Receiver::grpc();
    let mut agent = if agent_args.is_empty() {
        attach_grpc(fixture.pid(), &receiver)
    } else {
        let mut cmd = command();
        cmd.args(["--pid", &fixture.pid().to_string()])
            .args([
                "--otlp-endpoint",
                &receiver.url(),
                "--otlp-protocol",
                "grpc",
            ])
            .args(agent_args);
        let mut agent = Agent::start(cmd);
        agent.wait_attached();
        agent
    };
    let mut conn = Connection::open(addrs.front);
    let (status, body) = conn.request("GET", "/call", b"");
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "200 HTTP/1.1\n200 HTTP/2.0\nerror\n503 HTTP/1.1\n200 HTTP/1.1\n200 HTTP/1.1\n"
    );
    receiver.wait_for_spans(12, Duration::from_secs(20));
    fixture.terminate();
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    (addrs, receiver.spans(), agent)
}

#[test]
fn client_calls_are_children_of_the_handlers_server_span() {
    let (addrs, spans, mut agent) = call_and_collect(&[]);
    // The connections the calls set up: one per server (the plain one
    // kept alive), the TLS handshake on both sides.
    let (net, spans) = split_net(spans);
    let mut want_net = vec![
        format!("connect {}", addrs.back),
        format!("connect {}", addrs.tls_back),
        format!("connect {}", addrs.refused),
        "TLS client handshake 127.0.0.1".to_owned(),
        "TLS server handshake".to_owned(),
    ];
    want_net.sort();
    assert_eq!(net, want_net);
    assert_eq!(
        spans.len(),
        12,
        "{:#?}",
        spans
            .iter()
            .map(|s| (&s.scope, &s.span.name))
            .collect::<Vec<_>>()
    );
    let front: Vec<&FlatSpan> = spans
        .iter()
        // The server span, by path: its name is `GET` where this fixture's
        // Go 1.21 ServeMux (go.mod says 1.19) records no route.
        .filter(|s| s.scope == "agent/net/http" && s.attr("url.path") == Some("/call"))
        .collect();
    assert_eq!(front.len(), 1);
    let front = front[0];
    assert_eq!(front.span.kind, SpanKind::Server as i32);

    let mut clients: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| s.scope == "agent/net/http/client")
        .collect();
    clients.sort_by_key(|s| s.span.start_time_unix_nano);
    let want = expected(&addrs);
    assert_eq!(clients.len(), want.len());
    let handler_goroutine = front.attr("goroutine.id").expect("goroutine.id");
    for (span, want) in clients.iter().zip(&want) {
        let what = &want.url;
        assert_eq!(span.span.kind, SpanKind::Client as i32, "{what}");
        assert_eq!(span.span.name, want.name, "{what}");
        assert_eq!(span.span.trace_id, front.span.trace_id, "{what}");
        assert_eq!(span.span.parent_span_id, front.span.span_id, "{what}");
        assert_eq!(span.span.flags, 0x101, "{what}: sampled, local parent");
        assert!(
            front.span.start_time_unix_nano <= span.span.start_time_unix_nano
                && span.span.end_time_unix_nano <= front.span.end_time_unix_nano,
            "{what}: inside its parent"
        );
        let a = |k: &str| span.attr(k).map(str::to_owned);
        assert_eq!(
            a("http.request.method").as_deref(),
            Some(want.method),
            "{what}"
        );
        assert_eq!(
            a("http.request.method_original").as_deref(),
            want.method_original,
            "{what}"
        );
        assert_eq!(a("url.full").as_deref(), Some(want.url.as_str()));
        assert_eq!(a("server.address").as_deref(), Some("127.0.0.1"), "{what}");
        assert_eq!(a("server.port"), Some(want.port.to_string()), "{what}");
        assert_eq!(
            a("http.response.status_code"),
            want.status.map(|s| s.to_string()),
            "{what}"
        );
        assert_eq!(
            a("network.protocol.version").as_deref(),
            want.protocol,
            "{what}"
        );
        assert_eq!(a("error.type").as_deref(), want.error_type, "{what}");
        let code = span.span.status.as_ref().map_or(0, |s| s.code);
        let want_code = if want.error_type.is_some() {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
        assert_eq!(code, want_code as i32, "{what}");
        assert_eq!(
            a("goroutine.id").as_deref(),
            Some(handler_goroutine),
            "{what}: on the handler's goroutine"
        );
        assert!(a("agent.span.incomplete").is_none(), "{what}");
    }

    // No credentials and no query value in anything exported.
    for span in &spans {
        for (key, value) in &span.attributes {
            for secret in ["secret", "s3cret", "user:", "abc"] {
                assert!(
                    !value.contains(secret),
                    "{} {key}={value} leaks {secret:?}",
                    span.span.name
                );
            }
        }
    }
    let back_query: Vec<_> = spans.iter().filter_map(|s| s.attr("url.query")).collect();
    assert_eq!(back_query, ["token=REDACTED&q=REDACTED"]);

    let summary = agent.wait_for_stderr("spans exported", Duration::from_secs(1));
    assert!(summary.contains("agent: 17 spans exported"), "{summary}");
}

#[test]
fn url_query_keep_keeps_query_values() {
    let (addrs, spans, _agent) = call_and_collect(&["--url-query=keep"]);
    let full: Vec<_> = spans
        .iter()
        .filter(|s| s.scope == "agent/net/http/client")
        .filter_map(|s| s.attr("url.full"))
        .filter(|u| u.contains('?'))
        .collect();
    assert_eq!(
        full,
        [format!("http://{}/ok?token=s3cret&q=abc", addrs.back)],
        "values kept, credentials still dropped"
    );
    let back_query: Vec<_> = spans.iter().filter_map(|s| s.attr("url.query")).collect();
    assert_eq!(back_query, ["token=s3cret&q=abc"]);
}
