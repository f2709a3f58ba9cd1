//! Sanitizing URLs before they become span attributes.
//!
//! By default nothing of a query's values leaves the agent: every
//! `key=value` becomes `key=REDACTED` (tokens, e-mail addresses and session
//! ids travel in queries). `--url-query=keep` keeps them, except the
//! values of the keys OpenTelemetry's URL conventions always redact
//! (request signatures). Credentials in a URL (`user:password@`) are never
//! kept.

use std::borrow::Cow;

/// What happens to query values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryPolicy {
    /// Every value replaced by `REDACTED`.
    #[default]
    Redact,
    /// Values kept, except those of [`SENSITIVE_QUERY_KEYS`].
    Keep,
}

/// What replaces a redacted value.
pub const REDACTED: &str = "REDACTED";

/// Query keys whose values OpenTelemetry's URL conventions say to redact
/// always.
pub const SENSITIVE_QUERY_KEYS: [&str; 4] =
    ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"];

/// `query` (without its `?`) as `policy` says: with [`QueryPolicy::Redact`]
/// the value of every `key=value` pair is replaced (a key without `=` has
/// no value and stays); with [`QueryPolicy::Keep`] only the values of
/// [`SENSITIVE_QUERY_KEYS`].
pub fn sanitize_query(query: &str, policy: QueryPolicy) -> Cow<'_, str> {
    let redacted = |pair: &str| match pair.split_once('=') {
        Some((key, value)) => match policy {
            QueryPolicy::Redact => value != REDACTED,
            QueryPolicy::Keep => SENSITIVE_QUERY_KEYS.contains(&key) && value != REDACTED,
        },
        None => false,
    };
    if !query.split('&').any(redacted) {
        return Cow::Borrowed(query);
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _)) if redacted(pair) => {
                out.push_str(key);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    Cow::Owned(out)
}

/// `url` without user information and with its query sanitized: for a URL
/// given whole (`scheme://user:pass@host/path?query#fragment`).
pub fn sanitize_full(url: &str, policy: QueryPolicy) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match (scheme, authority.rfind('@')) {
        (Some(_), Some(at)) => &authority[at + 1..],
        _ => authority,
    };
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (tail, None),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (before_fragment, None),
    };
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(host);
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        out.push_str(&sanitize_query(query, policy));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// The URL a Go `url.URL` stands for, from its parts (user information is
/// never among them): `scheme://host` + the path escaped as
/// `URL.EscapedPath` does + `?query` sanitized. `query_complete` false: the
/// query was cut short, and its last, partial pair is left out.
pub fn build_full(
    scheme: &str,
    host: &str,
    path: &str,
    query: Option<&str>,
    query_complete: bool,
    policy: QueryPolicy,
) -> String {
    let mut out = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
    if !scheme.is_empty() {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(host);
    if !path.is_empty() && !path.starts_with('/') && !host.is_empty() {
        out.push('/');
    }
    escape_path(path, &mut out);
    if let Some(query) = query {
        let query = if query_complete {
            query
        } else {
            query.rsplit_once('&').map_or("", |(whole, _)| whole)
        };
        if !query.is_empty() {
            out.push('?');
            out.push_str(&sanitize_query(query, policy));
        }
    }
    out
}

/// Appends `path` escaped as Go's `url.escape(path, encodePath)` does.
fn escape_path(path: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in path.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_'
                    | b'.'
                    | b'~'
                    | b'$'
                    | b'&'
                    | b'+'
                    | b','
                    | b'/'
                    | b':'
                    | b';'
                    | b'='
                    | b'@'
            );
        if keep {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_value_is_redacted_by_default() {
        let r = |q| sanitize_query(q, QueryPolicy::Redact).into_owned();
        assert_eq!(r("a=1&b=two"), "a=REDACTED&b=REDACTED");
        assert_eq!(r("flag&x="), "flag&x=REDACTED");
        assert_eq!(r("k=v=w"), "k=REDACTED");
        assert_eq!(r("novalue"), "novalue");
        assert_eq!(r(""), "");
        assert!(matches!(
            sanitize_query("a=REDACTED", QueryPolicy::Redact),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn keep_still_redacts_signatures() {
        let k = |q| sanitize_query(q, QueryPolicy::Keep).into_owned();
        assert_eq!(k("x=1&sig=s3cret&y"), "x=1&sig=REDACTED&y");
        assert_eq!(k("ms=30"), "ms=30");
        assert_eq!(
            k("AWSAccessKeyId=a&Signature=b&X-Goog-Signature=c"),
            "AWSAccessKeyId=REDACTED&Signature=REDACTED&X-Goog-Signature=REDACTED"
        );
    }

    #[test]
    fn full_urls_lose_credentials_and_query_values() {
        let s = |u| sanitize_full(u, QueryPolicy::Redact);
        assert_eq!(
            s("https://user:pass@example.com:8443/a/b?token=t&x=1#frag"),
            "https://example.com:8443/a/b?token=REDACTED&x=REDACTED#frag"
        );
        assert_eq!(s("http://u@h/p"), "http://h/p");
        assert_eq!(s("http://h"), "http://h");
        assert_eq!(s("http://h?q=1"), "http://h?q=REDACTED");
        assert_eq!(s("/p/at@x?q=1"), "/p/at@x?q=REDACTED");
        assert_eq!(
            sanitize_full("http://a:b@h/p?q=1", QueryPolicy::Keep),
            "http://h/p?q=1"
        );
    }

    #[test]
    fn built_urls_escape_the_path_and_sanitize_the_query() {
        let b = |scheme, host, path, query, complete| {
            build_full(scheme, host, path, query, complete, QueryPolicy::Redact)
        };
        assert_eq!(
            b("http", "127.0.0.1:80", "/a b/c!", Some("k=v&t"), true),
            "http://127.0.0.1:80/a%20b/c%21?k=REDACTED&t"
        );
        assert_eq!(b("https", "h", "", None, true), "https://h");
        assert_eq!(b("https", "h", "/", Some(""), true), "https://h/");
        assert_eq!(
            b("http", "h", "/p", Some("a=1&b=2&tru"), false),
            "http://h/p?a=REDACTED&b=REDACTED",
            "a query cut short loses its last pair"
        );
        assert_eq!(b("http", "h", "/p", Some("trunc"), false), "http://h/p");
        assert_eq!(
            build_full("http", "h", "/p", Some("a=1"), true, QueryPolicy::Keep),
            "http://h/p?a=1"
        );
    }
}
