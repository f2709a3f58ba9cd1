//! Which processes to trace: `--pid N`, `--exe PATTERN` and `--port N`, any
//! number of each, and `--go`. Each has its environment variable
//! (`AGENT_PID`, `AGENT_EXE`, `AGENT_PORT`: comma-separated; `AGENT_GO`),
//! read when its flag is not given: flags, then environment (then the
//! configuration file, which gives its values as the flags' defaults).

use std::path::Path;

use super::glob;

/// Why the selectors cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("AGENT_PID: {value:?} is not a PID")]
    BadPid { value: String },
    #[error("--exe: an empty pattern matches nothing")]
    EmptyPattern,
    #[error("AGENT_PORT: {value:?} is not a TCP port")]
    BadEnvPort { value: String },
    #[error("--port: 0 is not a port a server listens on")]
    PortZero,
    #[error("--port: {count} ports; at most {max}")]
    TooManyPorts { count: usize, max: u32 },
    #[error("AGENT_GO: {value:?} is not true or false")]
    BadGo { value: String },
    #[error("--service-name-map: {value:?} is not EXE=NAME")]
    BadServiceMap { value: String },
}

/// An `--exe` pattern: with a `/`, a glob on the executable's full path;
/// without, a glob on its file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExePattern {
    pattern: String,
    whole_path: bool,
}

impl ExePattern {
    pub fn parse(pattern: &str) -> Result<Self, SelectorError> {
        if pattern.is_empty() {
            return Err(SelectorError::EmptyPattern);
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            whole_path: pattern.contains('/'),
        })
    }

    /// Whether the executable at `path` (as the process sees it) matches.
    pub fn matches(&self, path: &Path) -> bool {
        if self.whole_path {
            glob::matches(&self.pattern, &path.to_string_lossy())
        } else {
            path.file_name()
                .is_some_and(|name| glob::matches(&self.pattern, &name.to_string_lossy()))
        }
    }
}

/// Every selector given.
#[derive(Clone, Debug, Default)]
pub struct Selectors {
    pub pids: Vec<u32>,
    pub exes: Vec<ExePattern>,
    /// Processes listening on these TCP ports.
    pub ports: Vec<u16>,
    /// Every Go process with something to trace.
    pub go: bool,
}

impl Selectors {
    /// From the flags and the environment: `AGENT_PID`, `AGENT_EXE` and
    /// `AGENT_PORT` (comma-separated lists) and `AGENT_GO` (`true`/`1` or
    /// `false`/`0`), each read only when its flag gives nothing.
    pub fn resolve(
        pids: &[u32],
        exes: &[String],
        ports: &[u16],
        go: bool,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SelectorError> {
        let mut selectors = Self {
            pids: pids.to_vec(),
            exes: exes
                .iter()
                .map(|e| ExePattern::parse(e))
                .collect::<Result<_, _>>()?,
            ports: ports.to_vec(),
            go,
        };
        if pids.is_empty() {
            for value in list(env("AGENT_PID")) {
                selectors
                    .pids
                    .push(value.parse().map_err(|_| SelectorError::BadPid {
                        value: value.clone(),
                    })?);
            }
        }
        if exes.is_empty() {
            for value in list(env("AGENT_EXE")) {
                selectors.exes.push(ExePattern::parse(&value)?);
            }
        }
        if ports.is_empty() {
            for value in list(env("AGENT_PORT")) {
                selectors
                    .ports
                    .push(value.parse().map_err(|_| SelectorError::BadEnvPort {
                        value: value.clone(),
                    })?);
            }
        }
        if !go && let Some(value) = env("AGENT_GO") {
            selectors.go = match value.trim() {
                "1" | "true" => true,
                "" | "0" | "false" => false,
                _ => return Err(SelectorError::BadGo { value }),
            };
        }
        selectors.pids.sort_unstable();
        selectors.pids.dedup();
        selectors.ports.sort_unstable();
        selectors.ports.dedup();
        if selectors.ports.contains(&0) {
            return Err(SelectorError::PortZero);
        }
        let max = agent_common::discovery::MAX_PORTS;
        if selectors.ports.len() > max as usize {
            return Err(SelectorError::TooManyPorts {
                count: selectors.ports.len(),
                max,
            });
        }
        Ok(selectors)
    }

    /// Nothing selected.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.exes.is_empty() && self.ports.is_empty() && !self.go
    }

    /// One `--pid` and nothing else: the agent traces that process and
    /// exits with it, as it always did.
    pub fn single_pid(&self) -> Option<u32> {
        let only_pids = self.exes.is_empty() && self.ports.is_empty() && !self.go;
        match (self.pids.as_slice(), only_pids) {
            ([pid], true) => Some(*pid),
            _ => None,
        }
    }

    /// The program names a process can be held by at exec: the bare
    /// names without glob characters (a glob cannot be matched in the
    /// kernel; its matches are found at exec all the same, only not held).
    pub fn plain_names(&self) -> Vec<String> {
        self.exes
            .iter()
            .filter(|p| !p.whole_path && !p.pattern.contains(['*', '?', '[']))
            .map(|p| p.pattern.clone())
            .collect()
    }

    /// Whether process `pid`, running `exe`, is selected by `--pid` or
    /// `--exe` (`--port` and `--go` look at more than these two).
    pub fn matches(&self, pid: u32, exe: &Path) -> bool {
        self.pids.contains(&pid) || self.exes.iter().any(|p| p.matches(exe))
    }
}

fn list(value: Option<String>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `--service-name-map EXE=NAME`: the service name of targets whose
/// executable's file name is EXE.
#[derive(Clone, Debug, Default)]
pub struct ServiceNames(Vec<(String, String)>);

impl ServiceNames {
    pub fn parse(values: &[String]) -> Result<Self, SelectorError> {
        values
            .iter()
            .map(|value| match value.split_once('=') {
                Some((exe, name)) if !exe.is_empty() && !name.is_empty() => {
                    Ok((exe.to_owned(), name.to_owned()))
                }
                _ => Err(SelectorError::BadServiceMap {
                    value: value.clone(),
                }),
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The name mapped for the executable at `exe` (by file name, or by
    /// the whole path when EXE has a `/`).
    pub fn lookup(&self, exe: &Path) -> Option<&str> {
        self.0.iter().find_map(|(key, name)| {
            let hit = if key.contains('/') {
                Path::new(key) == exe
            } else {
                exe.file_name().is_some_and(|n| n == key.as_str())
            };
            hit.then_some(name.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn bare_names_match_file_names_and_paths_match_paths() {
        let patterns = ["httpserver".into(), "/opt/*/api".into()];
        let s = Selectors::resolve(&[], &patterns, &[], false, |_| None).unwrap();
        assert!(s.matches(1, Path::new("/tmp/x/httpserver")));
        assert!(!s.matches(1, Path::new("/tmp/x/httpserver-2")));
        assert!(s.matches(1, Path::new("/opt/a/api")));
        assert!(!s.matches(1, Path::new("/srv/a/api")));
    }

    #[test]
    fn environment_stands_in_for_flags_not_given() {
        let env = |name: &str| match name {
            "AGENT_PID" => Some("8, 9".into()),
            "AGENT_EXE" => Some("api".into()),
            "AGENT_PORT" => Some("8080,9090".into()),
            "AGENT_GO" => Some("1".into()),
            _ => None,
        };
        let s = Selectors::resolve(&[], &[], &[], false, env).unwrap();
        assert_eq!(s.pids, [8, 9]);
        assert_eq!(s.ports, [8080, 9090]);
        assert!(s.go);
        assert!(s.matches(1, Path::new("/bin/api")));
        assert!(s.single_pid().is_none());
        // A flag wins over its variable.
        let s = Selectors::resolve(&[7], &["web".into()], &[80], false, env).unwrap();
        assert_eq!(s.pids, [7]);
        assert_eq!(s.ports, [80]);
        assert!(!s.matches(1, Path::new("/bin/api")));
        let bad = |name: &'static str, value: &'static str| {
            Selectors::resolve(&[], &[], &[], false, move |n| {
                (n == name).then(|| value.to_owned())
            })
        };
        assert!(matches!(
            bad("AGENT_PID", "x"),
            Err(SelectorError::BadPid { .. })
        ));
        assert!(matches!(
            bad("AGENT_PORT", "70000"),
            Err(SelectorError::BadEnvPort { .. })
        ));
        assert!(matches!(
            bad("AGENT_PORT", "0"),
            Err(SelectorError::PortZero)
        ));
        assert!(matches!(
            bad("AGENT_GO", "maybe"),
            Err(SelectorError::BadGo { .. })
        ));
        assert!(
            Selectors::resolve(&[], &[], &[], false, |_| None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn service_names_by_executable() {
        let names = ServiceNames::parse(&["api=checkout".into()]).unwrap();
        assert_eq!(names.lookup(Path::new("/bin/api")), Some("checkout"));
        assert_eq!(names.lookup(Path::new("/bin/web")), None);
        assert!(ServiceNames::parse(&["api".into()]).is_err());
    }
}
