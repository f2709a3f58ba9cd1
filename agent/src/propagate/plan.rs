//! What the propagation family probes in a Go binary: the start of
//! `net/http.(*Request).write`, on the goroutine that writes the request's
//! bytes (HTTP/1's connection writer, not the caller).

use iced_x86::Register;

use crate::binary::{BuiltinProbe, GoBinary, ProbeSite, SiteError};

/// The function probed at its entry: RAX holds the request.
pub const FUNCTION: &str = "net/http.(*Request).write";

/// The probe, for `agent inspect`.
pub const PROBES: &[BuiltinProbe] = &[BuiltinProbe {
    name: "http.client.write",
    function: FUNCTION,
    preserve: &[Register::RAX],
    fields: &[],
}];

/// Why the probe cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the program writes no HTTP/1 requests with net/http ({function} not found)")]
    NoFunction { function: &'static str },
    #[error("no probe site in {function}")]
    Site {
        function: &'static str,
        #[source]
        source: SiteError,
    },
}

/// The probe site of `(*Request).write`.
pub fn plan(bin: &GoBinary) -> Result<ProbeSite, PlanError> {
    let func = bin
        .function(FUNCTION)
        .ok_or(PlanError::NoFunction { function: FUNCTION })?;
    bin.entry_site(&func, &[Register::RAX])
        .map_err(|source| PlanError::Site {
            function: FUNCTION,
            source,
        })
}
