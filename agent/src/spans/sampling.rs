//! Head sampling as the OpenTelemetry SDK environment defines it
//! (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`): which traces the
//! agent exports.
//!
//! The decision is made once per trace, where the trace enters the process:
//! by the span that starts it (a request with no trace context, a call with
//! no span open on its goroutine) or continues a caller's (a request whose
//! `traceparent` is valid), with [`Sampler::root_flags`]. Every span made in
//! the process under that one takes its parent's flags
//! ([`Sampler::child_flags`]): a trace is never split. For the parent-based
//! samplers that is the specification's default for local parents
//! (`localParentSampled`: always on, `localParentNotSampled`: always off);
//! for the others, deciding again would give the same answer, as it depends
//! on the trace id only.
//!
//! The decision is a pure function of (trace id, the remote parent's flags),
//! so that whatever sends a trace context on sets the flags the spans carry.

use opentelemetry::trace::TraceId;

/// The W3C `sampled` trace flag.
pub const SAMPLED: u8 = 0x01;

/// The default sampler's name.
pub const DEFAULT: &str = "parentbased_always_on";

/// The sampler names the specification lists, in its order.
pub const NAMES: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Decides which traces are exported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    root: Root,
    /// Whether a remote parent's `sampled` flag decides (`parentbased_*`).
    parent_based: bool,
}

/// What decides for a trace without a parent (or for every trace, when not
/// parent-based).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Root {
    AlwaysOn,
    AlwaysOff,
    /// `TraceIdRatioBased`: kept when the trace id's last 8 bytes, read
    /// big-endian and shifted right by one, are below `bound`
    /// (`ratio * 2^63`).
    Ratio {
        ratio: f64,
        bound: u64,
    },
}

impl Default for Sampler {
    /// `parentbased_always_on`.
    fn default() -> Self {
        Self {
            root: Root::AlwaysOn,
            parent_based: true,
        }
    }
}

/// Why a sampler cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    #[error("unknown sampler {0:?} (one of {names})", names = NAMES.join(", "))]
    Unknown(String),
    #[error("{0:?} is not a ratio: a number from 0 to 1, such as 0.25")]
    BadRatio(String),
    #[error("the sampler {sampler} takes no argument (only the *traceidratio samplers do)")]
    NoArgument { sampler: &'static str },
}

impl Sampler {
    /// Exports every trace.
    pub const ALWAYS_ON: Self = Self {
        root: Root::AlwaysOn,
        parent_based: false,
    };

    /// Exports nothing.
    pub const ALWAYS_OFF: Self = Self {
        root: Root::AlwaysOff,
        parent_based: false,
    };

    /// The sampler `name` (one of [`NAMES`], any case) with the ratio `arg`
    /// for the `*traceidratio` ones (1.0 when `None`).
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Self, SamplerError> {
        let lower = name.trim().to_ascii_lowercase();
        let (parent_based, root) = match lower.strip_prefix("parentbased_") {
            Some(root) => (true, root),
            None => (false, lower.as_str()),
        };
        let root = match root {
            "always_on" => Root::AlwaysOn,
            "always_off" => Root::AlwaysOff,
            "traceidratio" => {
                let ratio = match arg {
                    Some(arg) => parse_ratio(arg)?,
                    None => 1.0,
                };
                return Ok(Self::ratio(ratio, parent_based));
            }
            _ => return Err(SamplerError::Unknown(name.to_owned())),
        };
        let sampler = Self { root, parent_based };
        if arg.is_some() {
            return Err(SamplerError::NoArgument {
                sampler: sampler.name(),
            });
        }
        Ok(sampler)
    }

    /// `traceidratio` (`parentbased_traceidratio` when `parent_based`) with
    /// `ratio`, clamped to [0, 1].
    pub fn ratio(ratio: f64, parent_based: bool) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        // 2^63 as a float; `as` saturates 1.0 * 2^63 to u64 without loss
        // (2^63 fits), and every shifted id is below it.
        let bound = (ratio * 9_223_372_036_854_775_808.0) as u64;
        Self {
            root: Root::Ratio { ratio, bound },
            parent_based,
        }
    }

    /// Whether no trace can ever be exported (then spans need not be
    /// built at all).
    pub fn never_samples(&self) -> bool {
        !self.parent_based && self.root == Root::AlwaysOff
    }

    /// The specification's name of the sampler.
    pub fn name(&self) -> &'static str {
        match (self.parent_based, self.root) {
            (false, Root::AlwaysOn) => "always_on",
            (false, Root::AlwaysOff) => "always_off",
            (false, Root::Ratio { .. }) => "traceidratio",
            (true, Root::AlwaysOn) => "parentbased_always_on",
            (true, Root::AlwaysOff) => "parentbased_always_off",
            (true, Root::Ratio { .. }) => "parentbased_traceidratio",
        }
    }

    /// The ratio of a `*traceidratio` sampler.
    pub fn ratio_arg(&self) -> Option<f64> {
        match self.root {
            Root::Ratio { ratio, .. } => Some(ratio),
            _ => None,
        }
    }

    /// Whether the trace `trace_id`, entering the process with a remote
    /// parent whose trace flags are `remote_parent` (or none), is exported.
    ///
    /// `TraceIdRatioBased` uses the rule of the OpenTelemetry Go SDK
    /// (`sdk/trace/sampling.go`, `traceIDRatioSampler`) and Rust SDK
    /// (`sample_based_on_probability`), so that a trace id gets the same
    /// decision in every service: the last 8 bytes of the id as a
    /// big-endian integer, shifted right by one bit, kept when below
    /// `ratio * 2^63`.
    pub fn should_sample(&self, trace_id: TraceId, remote_parent: Option<u8>) -> bool {
        if self.parent_based
            && let Some(flags) = remote_parent
        {
            // remoteParentSampled: always on; remoteParentNotSampled:
            // always off (the specification's defaults).
            return flags & SAMPLED != 0;
        }
        match self.root {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::Ratio { bound, .. } => {
                let bytes = trace_id.to_bytes();
                let mut low = [0u8; 8];
                low.copy_from_slice(&bytes[8..]);
                (u64::from_be_bytes(low) >> 1) < bound
            }
        }
    }

    /// The W3C trace flags of a span that starts or continues a trace in
    /// the process: the remote parent's flags (0 without one) with the
    /// `sampled` bit as [`Self::should_sample`] decides, as the OpenTelemetry
    /// SDKs set them.
    pub fn root_flags(&self, trace_id: TraceId, remote_parent: Option<u8>) -> u8 {
        let others = remote_parent.unwrap_or(0) & !SAMPLED;
        if self.should_sample(trace_id, remote_parent) {
            others | SAMPLED
        } else {
            others
        }
    }

    /// The rule [`Self::should_sample`] applies to a trace id, as the
    /// kernel applies it to the contexts it sends on (`--propagate`):
    /// whether a remote parent's flag decides, and the bound the id's last
    /// 8 bytes (big-endian, shifted right by one) must be below.
    pub fn kernel_rule(&self) -> (bool, u64) {
        let bound = match self.root {
            // Every shifted id is below 2^63.
            Root::AlwaysOn => 1 << 63,
            Root::AlwaysOff => 0,
            Root::Ratio { bound, .. } => bound,
        };
        (self.parent_based, bound)
    }

    /// The W3C trace flags of a span whose parent is a span of this process
    /// (open on its goroutine, or inherited): its parent's.
    pub const fn child_flags(parent: u8) -> u8 {
        parent
    }
}

/// Whether spans with these W3C trace flags are exported.
pub const fn is_sampled(flags: u8) -> bool {
    flags & SAMPLED != 0
}

fn parse_ratio(arg: &str) -> Result<f64, SamplerError> {
    match arg.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(SamplerError::BadRatio(arg.to_owned())),
    }
}

/// The sampler from the command line (`--sampler`, `--sampler-arg`), which
/// overrides the environment (`OTEL_TRACES_SAMPLER`,
/// `OTEL_TRACES_SAMPLER_ARG`), and the warnings about the environment.
///
/// Bad flags are an error. Bad environment values are not: as the
/// specification says, each is warned about and ignored (an unknown
/// sampler: the default, `parentbased_always_on`; a ratio that is not a
/// number from 0 to 1: 1.0). An empty variable is an unset one.
pub fn resolve(
    flag_sampler: Option<&str>,
    flag_arg: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Sampler, Vec<String>), SamplerError> {
    let mut warnings = Vec::new();
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let Some(arg) = flag_arg {
        parse_ratio(arg)?;
    }
    let name = match flag_sampler {
        Some(name) => {
            Sampler::parse(name, None)?;
            name.to_owned()
        }
        None => match env("OTEL_TRACES_SAMPLER") {
            Some(name) => match Sampler::parse(&name, None) {
                Ok(_) => name,
                Err(err) => {
                    warnings.push(format!("OTEL_TRACES_SAMPLER: {err}; using {DEFAULT}"));
                    DEFAULT.to_owned()
                }
            },
            None => DEFAULT.to_owned(),
        },
    };
    let takes_arg = name.to_ascii_lowercase().ends_with("traceidratio");
    let arg = match flag_arg {
        Some(arg) if takes_arg => Some(arg.to_owned()),
        Some(_) => {
            return Err(SamplerError::NoArgument {
                sampler: Sampler::parse(&name, None)?.name(),
            });
        }
        None if takes_arg => match env("OTEL_TRACES_SAMPLER_ARG") {
            Some(arg) => match parse_ratio(&arg) {
                Ok(_) => Some(arg),
                Err(err) => {
                    warnings.push(format!("OTEL_TRACES_SAMPLER_ARG: {err}; using 1.0"));
                    None
                }
            },
            None => None,
        },
        // The specification: the argument of a sampler that takes none is
        // ignored.
        None => None,
    };
    Sampler::parse(&name, arg.as_deref()).map(|s| (s, warnings))
}

impl std::fmt::Display for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())?;
        if let Some(ratio) = self.ratio_arg() {
            write!(f, " {ratio}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's rule (`--propagate`'s flags) decides as the agent does
    /// for every sampler, on ids spread over the whole range.
    #[test]
    fn the_kernel_rule_decides_as_should_sample() {
        for sampler in [
            Sampler::ALWAYS_ON,
            Sampler::ALWAYS_OFF,
            Sampler::ratio(0.25, false),
            Sampler::ratio(0.25, true),
            Sampler::ratio(1.0, false),
            Sampler::ratio(0.0, true),
        ] {
            let (parent_based, bound) = sampler.kernel_rule();
            assert_eq!(parent_based, sampler.parent_based);
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for _ in 0..10_000 {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let mut bytes = [0u8; 16];
                bytes[8..].copy_from_slice(&x.to_be_bytes());
                bytes[0] = 1;
                let id = TraceId::from_bytes(bytes);
                assert_eq!(
                    (x >> 1) < bound,
                    sampler.should_sample(id, None),
                    "{sampler:?} {x:#x}"
                );
            }
        }
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn id(low: u64) -> TraceId {
        TraceId::from(u128::from(low) | 0xabcd << 64)
    }

    #[test]
    fn the_default_is_parent_based_always_on() {
        let (s, warnings) = resolve(None, None, env(&[])).unwrap();
        assert_eq!(s, Sampler::default());
        assert_eq!(s.name(), "parentbased_always_on");
        assert!(warnings.is_empty());
        assert!(s.should_sample(id(1), None));
        assert!(s.should_sample(id(1), Some(0x01)));
        assert!(!s.should_sample(id(1), Some(0x00)));
        assert_eq!(s.root_flags(id(1), Some(0x02)), 0x02, "other flags kept");
        assert_eq!(s.root_flags(id(1), Some(0x03)), 0x03);
        assert_eq!(s.root_flags(id(1), None), 0x01);
    }

    #[test]
    fn not_parent_based_ignores_the_parent() {
        let on = Sampler::parse("always_on", None).unwrap();
        assert_eq!(on.root_flags(id(1), Some(0x00)), 0x01);
        let off = Sampler::parse("ALWAYS_OFF", None).unwrap();
        assert!(!off.should_sample(id(1), Some(0x01)));
        assert!(off.never_samples());
        let pb_off = Sampler::parse("parentbased_always_off", None).unwrap();
        assert!(!pb_off.never_samples());
        assert!(!pb_off.should_sample(id(1), None));
        assert!(pb_off.should_sample(id(1), Some(0x01)));
    }

    #[test]
    fn trace_id_ratio_follows_the_go_and_rust_sdks() {
        let s = Sampler::ratio(0.25, false);
        // bound = 0.25 * 2^63 = 2^61: kept when (low >> 1) < 2^61, i.e.
        // low < 2^62.
        assert!(s.should_sample(id((1 << 62) - 1), None));
        assert!(!s.should_sample(id(1 << 62), None));
        // Only the low 8 bytes count.
        assert!(s.should_sample(TraceId::from(u128::MAX << 64), None));
        // The same id, the same answer, with or without a parent.
        assert!(!s.should_sample(id(u64::MAX), Some(0x01)));
        let pb = Sampler::ratio(0.25, true);
        assert!(pb.should_sample(id(u64::MAX), Some(0x01)));
        assert!(!pb.should_sample(id(0), Some(0x00)));
        assert!(pb.should_sample(id(0), None));
        // The extremes.
        assert!(Sampler::ratio(1.0, false).should_sample(id(u64::MAX), None));
        assert!(!Sampler::ratio(0.0, false).should_sample(id(0), None));
        // Random ids: about the ratio.
        let mut ids = crate::spans::ids::IdGenerator::default();
        let kept = (0..100_000)
            .filter(|_| s.should_sample(ids.trace_id(), None))
            .count();
        assert!((24_000..26_000).contains(&kept), "{kept}");
    }

    #[test]
    fn flags_override_the_environment() {
        let e = env(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ]);
        let (s, _) = resolve(None, None, &e).unwrap();
        assert_eq!((s.name(), s.ratio_arg()), ("traceidratio", Some(0.5)));
        let (s, _) = resolve(None, Some("0.1"), &e).unwrap();
        assert_eq!(s.ratio_arg(), Some(0.1));
        let (s, _) = resolve(Some("parentbased_traceidratio"), None, &e).unwrap();
        assert_eq!(
            (s.name(), s.ratio_arg()),
            ("parentbased_traceidratio", Some(0.5)),
            "the environment's ratio still applies"
        );
        let (s, _) = resolve(Some("always_off"), None, &e).unwrap();
        assert_eq!(s, Sampler::ALWAYS_OFF, "the environment's ratio is ignored");
        assert_eq!(s.to_string(), "always_off");
        assert_eq!(
            resolve(None, None, env(&[("OTEL_TRACES_SAMPLER_ARG", "0.5")]))
                .unwrap()
                .0,
            Sampler::default(),
            "a ratio without its sampler is ignored"
        );
    }

    #[test]
    fn bad_environment_values_warn_and_fall_back() {
        let (s, w) = resolve(None, None, env(&[("OTEL_TRACES_SAMPLER", "sometimes")])).unwrap();
        assert_eq!(s, Sampler::default());
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("OTEL_TRACES_SAMPLER") && w[0].contains("sometimes"),
            "{w:?}"
        );
        for bad in ["half", "1.5", "-0.1", "NaN"] {
            let pairs: &'static [(&str, &str)] = Box::leak(Box::new([
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", bad),
            ]));
            let (s, w) = resolve(None, None, env(pairs)).unwrap();
            assert_eq!(s.ratio_arg(), Some(1.0), "{bad}");
            assert_eq!(w.len(), 1, "{bad}");
            assert!(w[0].contains("OTEL_TRACES_SAMPLER_ARG"), "{w:?}");
        }
        let (s, w) = resolve(None, None, env(&[("OTEL_TRACES_SAMPLER", "")])).unwrap();
        assert_eq!((s, w.len()), (Sampler::default(), 0), "empty is unset");
    }

    #[test]
    fn bad_flags_are_errors() {
        assert_eq!(
            resolve(Some("sometimes"), None, env(&[])),
            Err(SamplerError::Unknown("sometimes".into()))
        );
        assert_eq!(
            resolve(Some("traceidratio"), Some("2"), env(&[])),
            Err(SamplerError::BadRatio("2".into()))
        );
        assert_eq!(
            resolve(Some("always_on"), Some("0.5"), env(&[])),
            Err(SamplerError::NoArgument {
                sampler: "always_on"
            })
        );
        let msg = SamplerError::Unknown("x".into()).to_string();
        assert!(msg.contains("parentbased_traceidratio"), "{msg}");
    }
}
