//! Go's text form of the wire format (`internal/trace/raw`'s text reader)
//! and its `.test` files (txtar archives of an expectation and a trace), as
//! used by Go's own trace test data. Converting text to bytes lets the tests
//! and the fuzz corpus use Go's test traces.

use super::spec::{SPECS, Version};

/// Why a text trace could not be converted.
#[derive(Debug, thiserror::Error)]
#[error("text trace line {line}: {reason}")]
pub struct TextError {
    pub line: usize,
    pub reason: String,
}

/// One file of a txtar archive.
#[derive(Debug, Clone)]
pub struct TxtarFile {
    pub name: String,
    pub data: String,
}

/// Splits a txtar archive into its files.
pub fn parse_txtar(s: &str) -> Vec<TxtarFile> {
    let mut files: Vec<TxtarFile> = Vec::new();
    for line in s.split_inclusive('\n') {
        let t = line.trim_end_matches('\n');
        if let Some(rest) = t.strip_prefix("-- ").and_then(|r| r.strip_suffix(" --")) {
            files.push(TxtarFile {
                name: rest.trim().to_string(),
                data: String::new(),
            });
        } else if let Some(f) = files.last_mut() {
            f.data.push_str(line);
        }
    }
    files
}

fn read_token(s: &str) -> (&str, &str) {
    let s2 = s.trim_start();
    if s2.is_empty() || s2.starts_with('#') {
        return ("", "");
    }
    let end = s2
        .find(|c: char| c.is_whitespace() || c == '#')
        .unwrap_or(s2.len());
    (&s2[..end], &s2[end..])
}

fn read_args(mut s: &str, names: &[&str], line: usize) -> Result<Vec<u64>, TextError> {
    let err = |reason: String| TextError { line, reason };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let (tok, rest) = read_token(s);
        if tok.is_empty() {
            return Err(err("no argument".into()));
        }
        let (arg, val) = tok
            .split_once('=')
            .ok_or_else(|| err(format!("malformed argument: {tok:?}")))?;
        if arg != *name {
            return Err(err(format!("expected argument {name:?}, but got {arg:?}")));
        }
        let v: u64 = val.parse().map_err(|_| {
            err(format!(
                "failed to parse argument value {val:?} for arg {arg:?}"
            ))
        })?;
        out.push(v);
        s = rest;
    }
    if !s.trim().is_empty() {
        return Err(err(format!(
            "unexpected text at the end of an event: {s:?}"
        )));
    }
    Ok(out)
}

/// Unquotes a Go double-quoted string literal into bytes.
pub fn go_unquote(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() < 2 || b[0] != b'"' || b[b.len() - 1] != b'"' {
        return None;
    }
    let b = &b[1..b.len() - 1];
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex =
        |x: &[u8]| -> Option<u32> { u32::from_str_radix(std::str::from_utf8(x).ok()?, 16).ok() };
    while i < b.len() {
        let c = b[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *b.get(i + 1)?;
        i += 2;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'\\' => out.push(b'\\'),
            b'"' => out.push(b'"'),
            b'\'' => out.push(b'\''),
            b'x' => {
                out.push(hex(b.get(i..i + 2)?)? as u8);
                i += 2;
            }
            b'u' | b'U' => {
                let n = if e == b'u' { 4 } else { 8 };
                let cp = char::from_u32(hex(b.get(i..i + n)?)?)?;
                let mut buf = [0; 4];
                out.extend_from_slice(cp.encode_utf8(&mut buf).as_bytes());
                i += n;
            }
            b'0'..=b'7' => {
                let d = b.get(i - 1..i + 2)?;
                let v = u32::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()?;
                out.push(u8::try_from(v).ok()?);
                i += 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Converts Go's text trace form (`Trace Go1.N` then one event per line)
/// into the binary wire format, as Go's `testtrace.ParseFile` does.
pub fn text_to_binary(text: &str) -> Result<Vec<u8>, TextError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !read_token(l).0.is_empty());
    let (ln, header) = lines.next().ok_or(TextError {
        line: 0,
        reason: "empty trace".into(),
    })?;
    let err = |line: usize, reason: String| TextError {
        line: line + 1,
        reason,
    };
    let (t, rest) = read_token(header);
    if t != "Trace" {
        return Err(err(ln, "failed to parse header".into()));
    }
    let (gover, _) = read_token(rest);
    let v: u32 = gover
        .strip_prefix("Go1.")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| err(ln, "failed to parse header Go version".into()))?;
    let ver = Version(v);
    if !ver.is_supported() {
        return Err(err(ln, format!("unsupported Go version 1.{v}")));
    }
    let mut out = format!("go 1.{v} trace\0\0\0").into_bytes();
    while let Some((ln, line)) = lines.next() {
        let (name, rest) = read_token(line);
        let typ = (0..ver.num_specs())
            .find(|&i| !SPECS[i].name.is_empty() && SPECS[i].name == name)
            .ok_or_else(|| err(ln, format!("unidentified event: {name}")))?;
        let spec = &SPECS[typ];
        let args = read_args(rest, spec.args, ln + 1)?;
        out.push(typ as u8);
        for a in &args {
            put_uvarint(&mut out, *a);
        }
        if spec.is_stack {
            let n = args.get(1).copied().unwrap_or(0);
            for _ in 0..n {
                let (fl, fline) = lines
                    .next()
                    .ok_or_else(|| err(ln, "unexpected EOF while reading stack".into()))?;
                for a in read_args(fline, &["pc", "func", "file", "line"], fl + 1)? {
                    put_uvarint(&mut out, a);
                }
            }
        }
        if spec.has_data {
            let (dl, dline) = lines
                .next()
                .ok_or_else(|| err(ln, "unexpected EOF while reading data".into()))?;
            let (k, v) = dline
                .split_once('=')
                .ok_or_else(|| err(dl, format!("malformed data: {dline:?}")))?;
            if k.trim() != "data" {
                return Err(err(dl, format!("malformed data: {dline:?}")));
            }
            let data = go_unquote(v.trim())
                .ok_or_else(|| err(dl, format!("failed to parse data: {dline:?}")))?;
            put_uvarint(&mut out, data.len() as u64);
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// A Go `.test` file: the trace bytes and the expected outcome.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub trace: Vec<u8>,
    /// `None` if reading must succeed, else the quoted error pattern (a Go
    /// regular expression) the error must match.
    pub expect_failure: Option<String>,
}

/// Parses one of Go's `internal/trace/testdata/tests/*.test` files.
pub fn parse_test_file(s: &str) -> Result<TestCase, TextError> {
    let files = parse_txtar(s);
    let bad = |reason: &str| TextError {
        line: 0,
        reason: reason.into(),
    };
    if files.len() != 2 || files[0].name != "expect" || files[1].name != "trace" {
        return Err(bad("malformed test file"));
    }
    let first = files[0].data.lines().next().unwrap_or("");
    let expect_failure = match first.split_once(' ') {
        None if first == "SUCCESS" => None,
        Some(("FAILURE", pat)) => {
            let p = go_unquote(pat.trim()).ok_or_else(|| bad("bad FAILURE pattern"))?;
            Some(String::from_utf8_lossy(&p).into_owned())
        }
        _ => return Err(bad("bad expectation")),
    };
    Ok(TestCase {
        trace: text_to_binary(&files[1].data)?,
        expect_failure,
    })
}
