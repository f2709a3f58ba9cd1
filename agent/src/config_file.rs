//! The configuration file (`--config FILE`, `AGENT_CONFIG`, else
//! `/etc/agent/agent.toml` when it exists): one TOML table whose keys are
//! the flags' long names (`exe = ["api"]`, `otlp-endpoint = "http://…"`,
//! `no-hold = true`). The clap definitions in `cli.rs` are the one list of
//! settings: each key found there becomes that flag's default value, so the
//! order flags > environment > file > built-in holds for every option
//! without naming each twice. Environment variables clap reads itself
//! (`env = …`) already rank above defaults; those read elsewhere (the
//! `OTEL_*` of the exporter, the selectors' `AGENT_*`) are in
//! [`ENV_OUTRANKS_FILE`]: when one is set, the file's value of that key is
//! left out.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{Arg, ArgAction, Command, CommandFactory as _, FromArgMatches as _};

use crate::cli::Cli;

/// The file read when neither `--config` nor `AGENT_CONFIG` names one.
pub const DEFAULT_PATH: &str = "/etc/agent/agent.toml";
/// The variable naming the file.
const PATH_ENV: &str = "AGENT_CONFIG";
/// The flag naming the file.
const FLAG: &str = "config";

/// Keys whose environment variables are read outside clap: the variable
/// set leaves the file's value out, as a flag given would.
const ENV_OUTRANKS_FILE: &[(&str, &[&str])] = &[
    ("pid", &["AGENT_PID"]),
    ("exe", &["AGENT_EXE"]),
    ("port", &["AGENT_PORT"]),
    ("go", &["AGENT_GO"]),
    ("service-name", &["OTEL_SERVICE_NAME"]),
    (
        "otlp-endpoint",
        &[
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ],
    ),
    (
        "otlp-protocol",
        &[
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ],
    ),
    (
        "otlp-header",
        &[
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ],
    ),
    (
        "otlp-certificate",
        &[
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        ],
    ),
    (
        "otlp-client-certificate",
        &[
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        ],
    ),
    (
        "otlp-client-key",
        &[
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        ],
    ),
    (
        "otlp-insecure",
        &[
            "OTEL_EXPORTER_OTLP_INSECURE",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        ],
    ),
    (
        "otlp-compression",
        &[
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        ],
    ),
    (
        "metrics-listen",
        &[
            "OTEL_METRICS_EXPORTER",
            "OTEL_EXPORTER_PROMETHEUS_HOST",
            "OTEL_EXPORTER_PROMETHEUS_PORT",
        ],
    ),
];

/// Why the configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Why the command line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// Clap's own (usage, `--help`, `--version`): it prints and exits.
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// The command line `args` (the program's name first), over the
/// configuration file, with `env` the environment.
pub fn parse(args: Vec<OsString>, env: impl Fn(&str) -> Option<String>) -> Result<Cli, ParseError> {
    let mut command = Cli::command().arg(
        Arg::new(FLAG)
            .long(FLAG)
            .value_name("FILE")
            .global(true)
            .help(format!(
                "Settings from this TOML file (keys: the long flags' names); flags and environment override it. Default: {DEFAULT_PATH} when it exists; also {PATH_ENV}; '' for none"
            )),
    );
    if let Some(path) = config_path(&args, &env)? {
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
            path: path.clone(),
            source,
        })?;
        command = apply(command, &path, &text, &env)?;
    }
    let matches = command.try_get_matches_from(args)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// The file to read: `--config` (before any `--`), else `AGENT_CONFIG`,
/// else [`DEFAULT_PATH`] when it exists. An empty name reads none; a file
/// named but missing is an error (when reading it).
fn config_path(
    args: &[OsString],
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<PathBuf>, ConfigFileError> {
    let flag = format!("--{FLAG}");
    let prefix = format!("--{FLAG}=");
    let mut named = None;
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == flag {
            named = args.next().map(PathBuf::from);
        } else if let Some(value) = text.strip_prefix(&prefix) {
            named = Some(PathBuf::from(value));
        }
    }
    let named = named.or_else(|| env(PATH_ENV).map(PathBuf::from));
    Ok(match named {
        Some(path) if path.as_os_str().is_empty() => None,
        Some(path) => Some(path),
        None => Some(PathBuf::from(DEFAULT_PATH)).filter(|p| p.exists()),
    })
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `command` with the file's settings as its flags' defaults.
fn apply(
    mut command: Command,
    path: &Path,
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigFileError> {
    type Entries = std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;
    let at = |line: usize, message: String| ConfigFileError::At {
        path: path.to_owned(),
        line,
        message,
    };
    let entries: Entries = toml::from_str(text).map_err(|err| {
        let line = err.span().map_or(1, |span| line_of(text, span.start));
        at(line, err.message().trim().to_owned())
    })?;
    let mut entries: Vec<_> = entries.into_iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    for (key, value) in entries {
        let line = line_of(text, key.span().start);
        let name = key.get_ref().as_str();
        let Some(arg) = settable(&command, name) else {
            return Err(at(line, unknown_key(&command, name)));
        };
        let outranked = ENV_OUTRANKS_FILE
            .iter()
            .find(|(key, _)| *key == name)
            .is_some_and(|(_, vars)| vars.iter().any(|v| env(v).is_some_and(|v| !v.is_empty())));
        if outranked {
            continue;
        }
        let values = values(name, arg, value.get_ref()).map_err(|m| at(line, m))?;
        if matches!(arg.get_action(), ArgAction::Set | ArgAction::Append) {
            for v in &values {
                check_value(&command, name, v).map_err(|m| at(line, m))?;
            }
        }
        let id = arg.get_id().clone();
        command = command.mut_arg(id, |arg| arg.default_values(values));
    }
    Ok(command)
}

/// Whether clap takes `--NAME=VALUE`: its value parser's verdict, here,
/// where the file's line is known (clap checks defaults only when parsing,
/// with no line to point at). Errors of other kinds (an option that
/// requires another) are not the value's: defaults do not trigger them.
fn check_value(command: &Command, name: &str, value: &str) -> Result<(), String> {
    use clap::error::ErrorKind;
    match command
        .clone()
        .try_get_matches_from(["agent".to_owned(), format!("--{name}={value}")])
    {
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            Err(format!("{name}: {}", clap_message(&err)))
        }
        _ => Ok(()),
    }
}

/// The flag a key sets: a long option of the top-level command, not
/// `--help`, `--version` or `--config`.
fn settable<'a>(command: &'a Command, name: &str) -> Option<&'a Arg> {
    if matches!(name, "help" | "version" | FLAG) {
        return None;
    }
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(name))
}

fn unknown_key(command: &Command, name: &str) -> String {
    let kebab = name.replace('_', "-");
    if kebab != name && settable(command, &kebab).is_some() {
        format!("unknown key {name:?} (did you mean {kebab:?}?)")
    } else {
        format!("unknown key {name:?}: the keys are the long flags' names (see agent --help)")
    }
}

/// A TOML value as the flag's values, checked against what it takes.
fn values(name: &str, arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    use toml::Value;
    let scalar = |value: &Value| match value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(n) => Ok(n.to_string()),
        Value::Float(n) => Ok(n.to_string()),
        _ => Err(format!("{name}: expected a string or a number")),
    };
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, Value::Boolean(b)) => Ok(vec![b.to_string()]),
        (ArgAction::SetTrue, _) => Err(format!("{name}: expected true or false")),
        (ArgAction::Count, Value::Integer(n)) if (0..=i64::from(u8::MAX)).contains(n) => {
            Ok(vec![n.to_string()])
        }
        (ArgAction::Count, _) => Err(format!("{name}: expected a count (0, 1, 2)")),
        (ArgAction::Append, Value::Array(items)) => items.iter().map(scalar).collect(),
        (ArgAction::Append, value) => Ok(vec![scalar(value)?]),
        (_, Value::Array(_)) => Err(format!("{name}: takes one value, not a list")),
        (_, value) => Ok(vec![scalar(value)?]),
    }
}

/// The first line of a clap error, without its `error: `.
fn clap_message(err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("agent")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn with_file(text: &str, list: &[&str], env: &[(&str, &str)]) -> Result<Cli, ParseError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).expect("write");
        let mut all = vec!["--config", path.to_str().expect("utf-8")];
        all.extend_from_slice(list);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse(args(&all), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    const FILE: &str = r#"
exe = ["api", "web"]
port = 8080
no-hold = true
span-ttl = 60
otlp-endpoint = "http://collector:4317"
verbose = 1
"#;

    #[test]
    fn file_values_apply() {
        let cli = with_file(FILE, &[], &[]).expect("parse");
        assert_eq!(cli.trace.exe, ["api", "web"]);
        assert_eq!(cli.trace.port, [8080]);
        assert!(cli.trace.no_hold);
        assert_eq!(cli.trace.span_ttl, 60);
        assert_eq!(
            cli.export.otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(cli.log.verbose, 1);
        // Untouched settings keep their built-in defaults.
        assert_eq!(cli.trace.max_open_spans, 65_536);
    }

    #[test]
    fn flags_then_environment_override_the_file() {
        let cli = with_file(
            FILE,
            &["--exe", "db", "--span-ttl", "5"],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317")],
        )
        .expect("parse");
        assert_eq!(cli.trace.exe, ["db"]);
        assert_eq!(cli.trace.span_ttl, 5);
        // The variable is read by the exporter; the file's value is left
        // out so that it can be.
        assert_eq!(cli.export.otlp_endpoint, None);
        let cli = with_file(FILE, &[], &[("AGENT_PORT", "9090")]).expect("parse");
        assert!(cli.trace.port.is_empty(), "AGENT_PORT stands in");
    }

    fn file_error(text: &str) -> String {
        match with_file(text, &[], &[]) {
            Err(ParseError::File(err)) => {
                let text = err.to_string();
                // The temporary path, then line and message.
                text.split_once("agent.toml:")
                    .map(|(_, rest)| rest.to_owned())
                    .unwrap_or(text)
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn a_wrong_key_or_value_names_the_key_and_its_line() {
        assert_eq!(
            file_error("exe = [\"api\"]\n\nspan_ttl = 5\n"),
            "3: unknown key \"span_ttl\" (did you mean \"span-ttl\"?)"
        );
        assert_eq!(
            file_error("# comment\nexes = [\"api\"]\n"),
            "2: unknown key \"exes\": the keys are the long flags' names (see agent --help)"
        );
        assert_eq!(
            file_error("exe = \"a\"\nspan-ttl = \"soon\"\n"),
            "2: span-ttl: invalid value 'soon' for '--span-ttl <SECONDS>': invalid digit found in string"
        );
        assert_eq!(
            file_error("entry-site = \"middle\"\n").split(':').next(),
            Some("1")
        );
        assert_eq!(
            file_error("no-hold = 1\n"),
            "1: no-hold: expected true or false"
        );
        assert_eq!(
            file_error("span-ttl = [1, 2]\n"),
            "1: span-ttl: takes one value, not a list"
        );
        assert_eq!(file_error("config = \"x\"\n").split(':').next(), Some("1"));
        assert!(file_error("a = \n").starts_with("1: "));
    }

    #[test]
    fn a_missing_named_file_is_an_error_and_the_default_is_optional() {
        let err = parse(args(&["--config", "/nonexistent/agent.toml"]), |_| None)
            .expect_err("missing file");
        assert!(
            err.to_string().starts_with(
                "cannot read the configuration file /nonexistent/agent.toml: No such file"
            ),
            "{err}"
        );
        let err = parse(args(&[]), |name| {
            (name == PATH_ENV).then(|| "/nonexistent/b.toml".to_owned())
        })
        .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/b.toml"), "{err}");
        // '' reads none.
        assert!(parse(args(&["--config", "", "--exe", "x"]), |_| None).is_ok());
    }

    #[test]
    fn the_shipped_example_is_valid_with_every_setting_uncommented() {
        let example = include_str!("../../scripts/systemd/agent.toml");
        let uncommented: String = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    }) =>
                {
                    rest
                }
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(uncommented.lines().filter(|l| l.contains(" = ")).count() > 20);
        let cli = with_file(&uncommented, &[], &[]).expect("the example parses");
        assert_eq!(cli.trace.exe, ["api", "/srv/*/worker"]);
        assert!(cli.trace.go);
        // As shipped, it sets nothing.
        let cli = with_file(example, &[], &[]).expect("the example parses");
        assert!(cli.trace.exe.is_empty() && !cli.trace.go);
    }
}
