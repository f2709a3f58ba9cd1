//! The declarative mapping from USDT probe pairs to spans.
//!
//! # Format (TOML)
//!
//! ```toml
//! # Optional, for the pairing engine: how long a start waits for its end
//! # before the span is exported marked as expired, and how many starts may
//! # wait at once (the oldest are evicted, and counted, past it).
//! open_span_timeout_ms = 30000
//! max_open_spans = 65536
//! # Keep the built-in mappings (default true). A span below whose start or
//! # end probe is also used by a built-in one replaces that built-in one.
//! builtins = true
//!
//! [[span]]
//! # Span name: `{arg}` is replaced by the value of argument `arg` (of the
//! # start probe, else of the end probe); `{{` and `}}` are literal braces.
//! name = "HTTP {method} {uri}"
//! # internal (default), server, client, producer or consumer.
//! kind = "server"
//! # Probes: "name" (any provider) or "provider:name".
//! start = "myapp:http_request_start"
//! end = "myapp:http_request_end"
//! # The argument that pairs a start with its end: declared under both
//! # start_args and end_args, with the same type.
//! request_id = "request_id"
//! # Optional: the span's status is an error when this end (or start)
//! # argument is "nonzero", or ">=N" (e.g. ">=500").
//! status = { arg = "status_code", error_if = ">=500" }
//!
//! # Arguments: name = { index = N, type = T, attribute = "...", cap = C, len = "..." }
//! #   index:     0-based argument position in the probe (0..=11)
//! #   type:      "i64", "u64", "str" (pointer to a NUL-terminated string)
//! #              or "bytes" (pointer; `len` names the argument with its length)
//! #   attribute: the span attribute it becomes (optional)
//! #   cap:       bytes copied at most for "str"/"bytes", 1..=128 (default 64)
//! [span.start_args]
//! request_id = { index = 0, type = "str" }
//! method = { index = 1, type = "str", attribute = "http.request.method" }
//! uri = { index = 2, type = "str", cap = 128, attribute = "url.path" }
//!
//! [span.end_args]
//! request_id = { index = 0, type = "str" }
//! status_code = { index = 1, type = "i64", attribute = "http.response.status_code" }
//! ```
//!
//! # Built-in mappings
//!
//! For the event pairs of the bpftrace exporter this replaces, with any
//! provider; every request id is argument 0, a NUL-terminated string:
//!
//! | start / end | arguments (start; end) | span | attributes |
//! |---|---|---|---|
//! | `http_request_start` / `http_request_end` | id, method, uri; id, status code | `{method}` (`HTTP {method} {uri}` with `--span-name=path`), server | `http.request.method`, `url.path`, `http.response.status_code` (error if >= 500) |
//! | `tls_handshake_start` / `tls_handshake_end` | id, server name; id, version | `TLS Handshake` | `server.address`, `tls.protocol.version` |
//! | `net_dial_start` / `net_dial_end` | id, host, port; id, error | `net.Dial`, client | `server.address`, `server.port` (error if the error is non-zero) |
//! | `request_start` / `request_end` | id; id | `Request` | `request.id` |

use std::{borrow::Cow, collections::BTreeMap, path::Path, time::Duration};

use agent_common::usdt::{USDT_MAX_ARGS, USDT_STR_CAP_DEFAULT, USDT_STR_CAP_MAX};
use serde::Deserialize;

use super::attach::{ArgBytes, StringArg, StringArgs, StringMode, UsdtEvent};

/// Errors reading or validating a mapping file.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("reading mapping file {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping file is not valid TOML for the mapping format")]
    Toml(#[source] toml::de::Error),
    #[error("span #{index} ({name:?}): {reason}")]
    Span {
        index: usize,
        name: String,
        reason: String,
    },
    #[error("probe {probe:?} starts or ends more than one span (spans #{first} and #{second})")]
    DuplicateProbe {
        probe: String,
        first: usize,
        second: usize,
    },
}

/// The kind of span a mapping makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    #[default]
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// How an argument is read and what it becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
    I64,
    U64,
    /// A pointer to a NUL-terminated string.
    Str,
    /// A pointer to `len` bytes, `len` being argument `len_index`.
    Bytes {
        len_index: u8,
    },
}

/// One argument of a start or end probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgMapping {
    pub name: String,
    pub index: u8,
    pub ty: ArgType,
    /// Bytes copied at most for strings.
    pub cap: u8,
    pub attribute: Option<String>,
}

/// A probe by name, and optionally provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRef {
    pub provider: Option<String>,
    pub name: String,
}

impl ProbeRef {
    fn parse(text: &str) -> Option<Self> {
        let (provider, name) = match text.split_once(':') {
            Some((p, n)) => (Some(p.to_owned()), n),
            None => (None, text),
        };
        let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !valid(name) || provider.as_deref().is_some_and(|p| !valid(p)) {
            return None;
        }
        Some(Self {
            provider,
            name: name.to_owned(),
        })
    }

    /// Whether probe `provider:name` is this one.
    pub fn matches(&self, provider: &str, name: &str) -> bool {
        self.name == name && self.provider.as_deref().is_none_or(|p| p == provider)
    }

    fn overlaps(&self, other: &ProbeRef) -> bool {
        self.name == other.name
            && match (&self.provider, &other.provider) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for ProbeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.provider {
            Some(p) => write!(f, "{p}:{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A piece of a span name template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Arg(String),
}

/// A span name template such as `HTTP {method} {uri}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameTemplate {
    pub parts: Vec<TemplatePart>,
}

impl NameTemplate {
    /// Parses a template; errors name the problem.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '.' => {
                                name.push(c)
                            }
                            _ => {
                                return Err(format!("unterminated or invalid {{...}} in {text:?}"));
                            }
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("empty {{}} in {text:?}"));
                    }
                    if !literal.is_empty() {
                        parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(TemplatePart::Arg(name));
                }
                '}' => return Err(format!("unmatched '}}' in {text:?} (write '}}}}')")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// The arguments the template uses.
    pub fn args(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Arg(a) => Some(a.as_str()),
            TemplatePart::Literal(_) => None,
        })
    }

    /// Renders the template; `value` gives an argument's text (missing ones
    /// render as `?`).
    pub fn render(&self, mut value: impl FnMut(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(l) => out.push_str(l),
                TemplatePart::Arg(a) => out.push_str(value(a).as_deref().unwrap_or("?")),
            }
        }
        out
    }
}

/// When a span's status is an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRule {
    /// An integer argument of the end (or start) probe.
    pub arg: String,
    pub error_if: ErrorIf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorIf {
    NonZero,
    AtLeast(i64),
}

impl ErrorIf {
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text == "nonzero" {
            return Some(Self::NonZero);
        }
        text.strip_prefix(">=")
            .and_then(|n| n.trim().parse().ok())
            .map(Self::AtLeast)
    }

    /// Whether `value` makes the span an error.
    pub fn is_error(self, value: i64) -> bool {
        match self {
            Self::NonZero => value != 0,
            Self::AtLeast(n) => value >= n,
        }
    }
}

/// Which end of a span a probe is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Start,
    End,
}

/// A decoded argument value; a string borrows the event's bytes when they
/// are valid UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgValue<'a> {
    I64(i64),
    U64(u64),
    Str(Cow<'a, str>),
}

impl std::fmt::Display for ArgValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::I64(v) => write!(f, "{v}"),
            Self::U64(v) => write!(f, "{v}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

/// The key pairing a start with its end (within one process).
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestId {
    Int(u64),
    Bytes(ArgBytes),
}

impl Clone for RequestId {
    // SmallVec's own clone goes byte by byte through an iterator; the open
    // span table clones every request id once.
    fn clone(&self) -> Self {
        match self {
            Self::Int(v) => Self::Int(*v),
            Self::Bytes(b) => Self::Bytes(ArgBytes::from_slice(b)),
        }
    }
}

/// One start/end pair and what it becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanMapping {
    pub name: NameTemplate,
    pub kind: SpanKind,
    pub start: ProbeRef,
    pub end: ProbeRef,
    pub start_args: Vec<ArgMapping>,
    pub end_args: Vec<ArgMapping>,
    /// Name of the request id argument (in both `start_args` and `end_args`).
    pub request_id: String,
    pub status: Option<StatusRule>,
    /// Where the request id is in `start_args` and `end_args`: looked up
    /// once here, not by name for every record.
    id_at: [Option<usize>; 2],
}

impl SpanMapping {
    /// The argument mappings of `role`'s probe.
    pub fn args(&self, role: Role) -> &[ArgMapping] {
        match role {
            Role::Start => &self.start_args,
            Role::End => &self.end_args,
        }
    }

    /// The value of argument mapping `arg` in `event`, `None` when it could
    /// not be read.
    pub fn value<'e>(arg: &ArgMapping, event: &'e UsdtEvent) -> Option<ArgValue<'e>> {
        let raw = event.args.get(arg.index as usize)?;
        if raw.failed {
            return None;
        }
        Some(match arg.ty {
            ArgType::I64 => ArgValue::I64(raw.as_i64()),
            ArgType::U64 => ArgValue::U64(raw.as_u64()),
            ArgType::Str | ArgType::Bytes { .. } => ArgValue::Str(raw.as_str()?),
        })
    }

    /// The named values of `role`'s arguments in `event`.
    pub fn values<'e>(&self, role: Role, event: &'e UsdtEvent) -> Vec<(&ArgMapping, ArgValue<'e>)> {
        self.args(role)
            .iter()
            .filter_map(|a| Some((a, Self::value(a, event)?)))
            .collect()
    }

    /// The request id carried by `event` (a `role` probe of this mapping).
    pub fn request_id(&self, role: Role, event: &UsdtEvent) -> Option<RequestId> {
        let at = match role {
            Role::Start => self.id_at[0],
            Role::End => self.id_at[1],
        }?;
        let arg = self.args(role).get(at)?;
        let raw = event.args.get(arg.index as usize)?;
        if raw.failed {
            return None;
        }
        Some(match arg.ty {
            ArgType::I64 | ArgType::U64 => RequestId::Int(raw.value),
            ArgType::Str | ArgType::Bytes { .. } => {
                RequestId::Bytes(ArgBytes::from_slice(raw.string.as_deref()?))
            }
        })
    }

    /// The attributes (semantic-convention name, value) of `role`'s
    /// arguments in `event`.
    pub fn attributes<'e>(&self, role: Role, event: &'e UsdtEvent) -> Vec<(String, ArgValue<'e>)> {
        self.values(role, event)
            .into_iter()
            .filter_map(|(a, v)| Some((a.attribute.clone()?, v)))
            .collect()
    }

    /// Whether the pair makes an error span, by the status rule.
    pub fn is_error(&self, start: &UsdtEvent, end: &UsdtEvent) -> bool {
        let Some(rule) = &self.status else {
            return false;
        };
        let found = self
            .end_args
            .iter()
            .find(|a| a.name == rule.arg)
            .map(|a| (a, end))
            .or_else(|| {
                self.start_args
                    .iter()
                    .find(|a| a.name == rule.arg)
                    .map(|a| (a, start))
            });
        match found.and_then(|(a, e)| Self::value(a, e)) {
            Some(ArgValue::I64(v)) => rule.error_if.is_error(v),
            Some(ArgValue::U64(v)) => rule.error_if.is_error(v as i64),
            _ => false,
        }
    }

    /// The span name for a start (and, when known, its end).
    pub fn span_name(&self, start: &UsdtEvent, end: Option<&UsdtEvent>) -> Cow<'_, str> {
        if let [TemplatePart::Literal(name)] = self.name.parts.as_slice() {
            return Cow::Borrowed(name);
        }
        Cow::Owned(self.name.render(|name| {
            let from = |role, event| {
                let arg = self.args(role).iter().find(|a| a.name == name)?;
                Self::value(arg, event).map(|v| v.to_string())
            };
            from(Role::Start, start).or_else(|| end.and_then(|e| from(Role::End, e)))
        }))
    }
}

/// The whole mapping: every span pair, and the pairing engine's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingConfig {
    pub spans: Vec<SpanMapping>,
    pub open_span_timeout: Option<Duration>,
    pub max_open_spans: Option<usize>,
}

// The file format, as deserialized before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    open_span_timeout_ms: Option<u64>,
    max_open_spans: Option<usize>,
    builtins: Option<bool>,
    #[serde(default)]
    span: Vec<RawSpan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpan {
    name: String,
    #[serde(default)]
    kind: SpanKind,
    start: String,
    end: String,
    request_id: String,
    status: Option<RawStatus>,
    #[serde(default)]
    start_args: BTreeMap<String, RawArg>,
    #[serde(default)]
    end_args: BTreeMap<String, RawArg>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    arg: String,
    error_if: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArg {
    index: u8,
    #[serde(rename = "type")]
    ty: String,
    attribute: Option<String>,
    cap: Option<u8>,
    len: Option<String>,
}

impl MappingConfig {
    /// Parses and validates a mapping file's text. Built-in mappings are
    /// added unless the file says `builtins = false`.
    pub fn from_toml_str(text: &str) -> Result<Self, MappingError> {
        let raw: RawConfig = toml::from_str(text).map_err(MappingError::Toml)?;
        let mut spans = Vec::with_capacity(raw.span.len());
        for (index, span) in raw.span.into_iter().enumerate() {
            spans.push(validate_span(index, span)?);
        }
        check_duplicates(&spans)?;
        let config = Self {
            spans,
            open_span_timeout: raw.open_span_timeout_ms.map(Duration::from_millis),
            max_open_spans: raw.max_open_spans,
        };
        Ok(if raw.builtins.unwrap_or(true) {
            config.with_builtins()
        } else {
            config
        })
    }

    /// Reads a mapping file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, MappingError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The built-in mappings alone.
    pub fn builtin() -> Self {
        match Self::from_toml_str(BUILTIN) {
            Ok(config) => config,
            // The built-in text is checked by a test; an empty mapping is
            // the safe answer should it ever not parse.
            Err(err) => {
                log::error!("built-in USDT mappings do not parse: {err}");
                Self {
                    spans: Vec::new(),
                    open_span_timeout: None,
                    max_open_spans: None,
                }
            }
        }
    }

    /// Adds the built-in mappings whose probes no span here uses.
    pub fn with_builtins(mut self) -> Self {
        let builtin: RawConfig = match toml::from_str(BUILTIN) {
            Ok(raw) => raw,
            Err(err) => {
                log::error!("built-in USDT mappings do not parse: {err}");
                return self;
            }
        };
        for (index, span) in builtin.span.into_iter().enumerate() {
            let Ok(span) = validate_span(index, span) else {
                continue;
            };
            let taken = self.spans.iter().any(|s| {
                [&s.start, &s.end]
                    .iter()
                    .any(|p| p.overlaps(&span.start) || p.overlaps(&span.end))
            });
            if !taken {
                self.spans.push(span);
            }
        }
        self
    }

    /// The span mapping probe `provider:name` starts or ends.
    pub fn find(&self, provider: &str, name: &str) -> Option<(&SpanMapping, Role)> {
        self.find_index(provider, name)
            .map(|(index, role)| (&self.spans[index], role))
    }

    /// Like [`Self::find`], with the mapping's index in `spans`.
    pub fn find_index(&self, provider: &str, name: &str) -> Option<(usize, Role)> {
        self.spans.iter().enumerate().find_map(|(i, s)| {
            if s.start.matches(provider, name) {
                Some((i, Role::Start))
            } else if s.end.matches(provider, name) {
                Some((i, Role::End))
            } else {
                None
            }
        })
    }

    /// The string arguments every mapped probe needs read, for
    /// [`super::attach_usdt`].
    pub fn string_args(&self) -> StringArgs {
        let mut strings = StringArgs::new();
        for span in &self.spans {
            for (probe, args) in [(&span.start, &span.start_args), (&span.end, &span.end_args)] {
                for arg in args {
                    let mode = match arg.ty {
                        ArgType::Str => StringMode::Nul,
                        ArgType::Bytes { len_index } => StringMode::PtrLen { len_arg: len_index },
                        ArgType::I64 | ArgType::U64 => continue,
                    };
                    strings.add(
                        probe.provider.as_deref(),
                        &probe.name,
                        StringArg {
                            arg: arg.index,
                            mode,
                            cap: arg.cap,
                        },
                    );
                }
            }
        }
        strings
    }
}

fn validate_span(index: usize, raw: RawSpan) -> Result<SpanMapping, MappingError> {
    let err = |reason: String| MappingError::Span {
        index,
        name: raw.name.clone(),
        reason,
    };
    let name = NameTemplate::parse(&raw.name).map_err(|r| err(format!("name: {r}")))?;
    let start = ProbeRef::parse(&raw.start).ok_or_else(|| {
        err(format!(
            "start: {:?} is not \"name\" or \"provider:name\"",
            raw.start
        ))
    })?;
    let end = ProbeRef::parse(&raw.end).ok_or_else(|| {
        err(format!(
            "end: {:?} is not \"name\" or \"provider:name\"",
            raw.end
        ))
    })?;
    if start.overlaps(&end) {
        return Err(err(format!("start and end are the same probe {start}")));
    }
    let start_args = validate_args("start_args", &raw.start_args).map_err(&err)?;
    let end_args = validate_args("end_args", &raw.end_args).map_err(&err)?;
    let id_start = start_args.iter().find(|a| a.name == raw.request_id);
    let id_end = end_args.iter().find(|a| a.name == raw.request_id);
    match (id_start, id_end) {
        (Some(s), Some(e)) => {
            let int = |t: ArgType| matches!(t, ArgType::I64 | ArgType::U64);
            if int(s.ty) != int(e.ty) {
                return Err(err(format!(
                    "request_id {:?} is an integer in one probe and a string in the other",
                    raw.request_id
                )));
            }
        }
        _ => {
            return Err(err(format!(
                "request_id {:?} must be declared in both start_args and end_args",
                raw.request_id
            )));
        }
    }
    for arg in name.args() {
        if !start_args.iter().chain(&end_args).any(|a| a.name == arg) {
            return Err(err(format!(
                "name uses {{{arg}}}, which is not in start_args or end_args"
            )));
        }
    }
    let status = match raw.status {
        None => None,
        Some(s) => {
            let error_if = ErrorIf::parse(&s.error_if).ok_or_else(|| {
                err(format!(
                    "status.error_if {:?} is not \"nonzero\" or \">=N\"",
                    s.error_if
                ))
            })?;
            let arg = end_args
                .iter()
                .chain(&start_args)
                .find(|a| a.name == s.arg)
                .ok_or_else(|| err(format!("status.arg {:?} is not an argument", s.arg)))?;
            if !matches!(arg.ty, ArgType::I64 | ArgType::U64) {
                return Err(err(format!("status.arg {:?} is not an integer", s.arg)));
            }
            Some(StatusRule {
                arg: s.arg,
                error_if,
            })
        }
    };
    let id_at = [
        start_args.iter().position(|a| a.name == raw.request_id),
        end_args.iter().position(|a| a.name == raw.request_id),
    ];
    Ok(SpanMapping {
        name,
        kind: raw.kind,
        start,
        end,
        start_args,
        end_args,
        request_id: raw.request_id,
        status,
        id_at,
    })
}

fn validate_args(table: &str, raw: &BTreeMap<String, RawArg>) -> Result<Vec<ArgMapping>, String> {
    let mut args = Vec::with_capacity(raw.len());
    for (name, arg) in raw {
        let bad = |reason: String| format!("{table}.{name}: {reason}");
        if arg.index as usize >= USDT_MAX_ARGS {
            return Err(bad(format!(
                "index {} is out of range (a probe has at most {USDT_MAX_ARGS} arguments)",
                arg.index
            )));
        }
        if let Some(other) = raw.iter().find(|(n, a)| *n != name && a.index == arg.index) {
            return Err(bad(format!(
                "index {} is also argument {:?}",
                arg.index, other.0
            )));
        }
        let ty = match (arg.ty.as_str(), &arg.len) {
            ("i64", None) => ArgType::I64,
            ("u64", None) => ArgType::U64,
            ("str", None) => ArgType::Str,
            ("bytes", Some(len)) => {
                let len_arg = raw
                    .get(len)
                    .ok_or_else(|| bad(format!("len {len:?} is not an argument of this probe")))?;
                if !matches!(len_arg.ty.as_str(), "i64" | "u64") {
                    return Err(bad(format!("len {len:?} is not an integer argument")));
                }
                ArgType::Bytes {
                    len_index: len_arg.index,
                }
            }
            ("bytes", None) => return Err(bad("type \"bytes\" needs len = \"<argument>\"".into())),
            ("i64" | "u64" | "str", Some(_)) => {
                return Err(bad("len is only for type \"bytes\"".into()));
            }
            (other, _) => {
                return Err(bad(format!(
                    "type {other:?} is not \"i64\", \"u64\", \"str\" or \"bytes\""
                )));
            }
        };
        let cap = match (ty, arg.cap) {
            (ArgType::I64 | ArgType::U64, Some(_)) => {
                return Err(bad("cap is only for strings".into()));
            }
            (_, Some(cap)) if cap == 0 || cap > USDT_STR_CAP_MAX => {
                return Err(bad(format!("cap {cap} is not in 1..={USDT_STR_CAP_MAX}")));
            }
            (_, Some(cap)) => cap,
            (_, None) => USDT_STR_CAP_DEFAULT,
        };
        if arg
            .attribute
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(bad("attribute is empty".into()));
        }
        args.push(ArgMapping {
            name: name.clone(),
            index: arg.index,
            ty,
            cap,
            attribute: arg.attribute.clone(),
        });
    }
    args.sort_by_key(|a| a.index);
    Ok(args)
}

fn check_duplicates(spans: &[SpanMapping]) -> Result<(), MappingError> {
    for (i, a) in spans.iter().enumerate() {
        for (j, b) in spans.iter().enumerate().skip(i + 1) {
            for p in [&a.start, &a.end] {
                if [&b.start, &b.end].iter().any(|q| p.overlaps(q)) {
                    return Err(MappingError::DuplicateProbe {
                        probe: p.to_string(),
                        first: i,
                        second: j,
                    });
                }
            }
        }
    }
    Ok(())
}

/// The built-in HTTP span's name: the method alone, as OpenTelemetry's HTTP
/// conventions name a server span whose route is unknown (the probes carry
/// the raw path, which would give every request its own operation name; it
/// stays in `url.path`).
pub const BUILTIN_HTTP_NAME: &str = "{method}";

/// The built-in HTTP span's name under `--span-name=path`: the bpftrace
/// exporter's, with the path.
pub const BUILTIN_HTTP_PATH_NAME: &str = "HTTP {method} {uri}";

impl MappingConfig {
    /// Names the spans of the built-in HTTP mapping by path
    /// (`--span-name=path`). A span named otherwise (a user's own mapping
    /// of the probes) keeps its name.
    pub fn name_builtin_http_by_path(&mut self) {
        let (Ok(by_route), Ok(by_path)) = (
            NameTemplate::parse(BUILTIN_HTTP_NAME),
            NameTemplate::parse(BUILTIN_HTTP_PATH_NAME),
        ) else {
            return;
        };
        for span in &mut self.spans {
            if span.start.name == "http_request_start" && span.name == by_route {
                span.name = by_path.clone();
            }
        }
    }
}

/// The built-in mappings, in the file format.
pub const BUILTIN: &str = r#"
builtins = false

[[span]]
name = "{method}"
kind = "server"
start = "http_request_start"
end = "http_request_end"
request_id = "request_id"
status = { arg = "status_code", error_if = ">=500" }
[span.start_args]
request_id = { index = 0, type = "str" }
method = { index = 1, type = "str", cap = 16, attribute = "http.request.method" }
uri = { index = 2, type = "str", cap = 128, attribute = "url.path" }
[span.end_args]
request_id = { index = 0, type = "str" }
status_code = { index = 1, type = "i64", attribute = "http.response.status_code" }

[[span]]
name = "TLS Handshake"
start = "tls_handshake_start"
end = "tls_handshake_end"
request_id = "request_id"
[span.start_args]
request_id = { index = 0, type = "str" }
server_name = { index = 1, type = "str", attribute = "server.address" }
[span.end_args]
request_id = { index = 0, type = "str" }
version = { index = 1, type = "str", cap = 16, attribute = "tls.protocol.version" }

[[span]]
name = "net.Dial"
kind = "client"
start = "net_dial_start"
end = "net_dial_end"
request_id = "request_id"
status = { arg = "error", error_if = "nonzero" }
[span.start_args]
request_id = { index = 0, type = "str" }
host = { index = 1, type = "str", attribute = "server.address" }
port = { index = 2, type = "i64", attribute = "server.port" }
[span.end_args]
request_id = { index = 0, type = "str" }
error = { index = 1, type = "i64" }

[[span]]
name = "Request"
start = "request_start"
end = "request_end"
request_id = "request_id"
[span.start_args]
request_id = { index = 0, type = "str", attribute = "request.id" }
[span.end_args]
request_id = { index = 0, type = "str" }
"#;
