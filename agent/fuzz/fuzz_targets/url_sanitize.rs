//! Fuzzes the URL sanitizer (`spans::url`): URLs and queries come from the
//! traced program's requests.
//!
//! With the default policy, no value of the input's query survives: every
//! `key=value` of the output's query has the value `REDACTED`; no user
//! information survives (no `@` before the host's end when a scheme is
//! given); sanitizing twice changes nothing.
#![no_main]

use agent::spans::url::{QueryPolicy, REDACTED, sanitize_full, sanitize_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let out = sanitize_full(url, QueryPolicy::Redact);
    assert_eq!(sanitize_full(&out, QueryPolicy::Redact), out, "not stable");
    if let Some((scheme, rest)) = out.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        assert!(
            url.starts_with(scheme) && !rest[..authority_end].contains('@'),
            "user information left in {out:?} from {url:?}"
        );
    }
    // The query is looked for where the sanitizer looks: after the scheme.
    let rest = out.split_once("://").map_or(out.as_str(), |(_, rest)| rest);
    let before_fragment = rest.split_once('#').map_or(rest, |(b, _)| b);
    if let Some((_, query)) = before_fragment.split_once('?') {
        for pair in query.split('&') {
            if let Some((_, value)) = pair.split_once('=') {
                assert_eq!(value, REDACTED, "{pair:?} in {out:?} from {url:?}");
            }
        }
    }
    let query = sanitize_query(url, QueryPolicy::Keep);
    assert_eq!(
        sanitize_query(&query, QueryPolicy::Keep),
        query,
        "keep: not stable"
    );
});
