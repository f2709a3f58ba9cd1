//! Planning the database/sql probes for one Go binary: which functions,
//! which sites, which struct offsets; and attaching them.
//!
//! Every public way into a database goes through one of these (Go 1.17 to
//! 1.26 have the same signatures):
//!
//! - `(*DB).queryDC`: `Query`, `QueryContext`, `QueryRow`, `QueryRowContext`
//!   of `DB` (through `(*DB).query`), `Conn` and `Tx`;
//! - `(*DB).execDC`: `Exec`, `ExecContext` of `DB`, `Conn` and `Tx`;
//! - `(*DB).prepareDC`: `Prepare`, `PrepareContext` of `DB` and `Conn`;
//! - `(*DB).beginDC`: `Begin`, `BeginTx` of `DB` and `Conn`;
//! - `(*Tx).Commit`; `(*Tx).rollback`, which `(*Tx).Rollback` calls (and
//!   inlines: the exported method is often not in the binary) and which
//!   the goroutine watching a transaction's context calls when it ends;
//! - `(*Stmt).QueryContext`, `(*Stmt).ExecContext` (and so `Query`,
//!   `QueryRow`, `Exec` of a prepared statement), which reach the driver
//!   without the functions above.
//!
//! Each at its entry site (the arguments still in their registers) and at
//! every return site (the results in theirs), never with a uretprobe.

use agent_common::{
    sql::{
        OP_BEGIN, OP_COMMIT, OP_EXEC, OP_PREPARE, OP_QUERY, OP_ROLLBACK, OP_STMT_EXEC,
        OP_STMT_QUERY, SITE_RETURN, SqlConfig, SqlOffsets,
    },
    target::OFFSET_ABSENT,
};
use iced_x86::Register;

use crate::{
    binary::{BuiltinProbe, GoBinary, OffsetError, ProbeSite, SiteError},
    probes::{LinkHandle, ProbeError, Probes},
    target::Target,
};

/// The fields every probe reads of the `*DB` (for the driver's name).
const DB_FIELDS: [(&str, &str); 3] = [
    ("runtime.g", "goid"),
    ("database/sql.DB", "connector"),
    ("database/sql.dsnConnector", "driver"),
];

/// The probes of this family, with what they read: for `agent inspect`.
pub const PROBES: &[BuiltinProbe] = &[
    BuiltinProbe {
        name: "sql.query",
        function: "database/sql.(*DB).queryDC",
        preserve: &[Register::RAX, Register::R10, Register::R11],
        fields: &DB_FIELDS,
    },
    BuiltinProbe {
        name: "sql.exec",
        function: "database/sql.(*DB).execDC",
        preserve: &[Register::RAX, Register::R8, Register::R9],
        fields: &DB_FIELDS,
    },
    BuiltinProbe {
        name: "sql.prepare",
        function: "database/sql.(*DB).prepareDC",
        preserve: &[Register::RAX, Register::R10, Register::R11],
        fields: &DB_FIELDS,
    },
    BuiltinProbe {
        name: "sql.begin",
        function: "database/sql.(*DB).beginDC",
        preserve: &[Register::RAX],
        fields: &DB_FIELDS,
    },
    BuiltinProbe {
        name: "sql.commit",
        function: "database/sql.(*Tx).Commit",
        preserve: &[Register::RAX],
        fields: &[
            ("runtime.g", "goid"),
            ("database/sql.Tx", "db"),
            ("database/sql.Tx", "done"),
            ("database/sql.DB", "connector"),
            ("database/sql.dsnConnector", "driver"),
        ],
    },
    BuiltinProbe {
        name: "sql.rollback",
        function: "database/sql.(*Tx).rollback",
        preserve: &[Register::RAX],
        fields: &[
            ("runtime.g", "goid"),
            ("database/sql.Tx", "db"),
            ("database/sql.Tx", "done"),
            ("database/sql.DB", "connector"),
            ("database/sql.dsnConnector", "driver"),
        ],
    },
    BuiltinProbe {
        name: "sql.stmt.query",
        function: "database/sql.(*Stmt).QueryContext",
        preserve: &[Register::RAX],
        fields: &[
            ("runtime.g", "goid"),
            ("database/sql.Stmt", "db"),
            ("database/sql.Stmt", "query"),
            ("database/sql.DB", "connector"),
            ("database/sql.dsnConnector", "driver"),
        ],
    },
    BuiltinProbe {
        name: "sql.stmt.exec",
        function: "database/sql.(*Stmt).ExecContext",
        preserve: &[Register::RAX],
        fields: &[
            ("runtime.g", "goid"),
            ("database/sql.Stmt", "db"),
            ("database/sql.Stmt", "query"),
            ("database/sql.DB", "connector"),
            ("database/sql.dsnConnector", "driver"),
        ],
    },
];

/// The functions, with their operation, the registers the entry reads, and
/// whether the family is useless without them.
const FUNCTIONS: [(&str, u32, &[Register], bool); 8] = [
    (
        "database/sql.(*DB).queryDC",
        OP_QUERY,
        &[Register::RAX, Register::R10, Register::R11],
        true,
    ),
    (
        "database/sql.(*DB).execDC",
        OP_EXEC,
        &[Register::RAX, Register::R8, Register::R9],
        true,
    ),
    (
        "database/sql.(*DB).prepareDC",
        OP_PREPARE,
        &[Register::RAX, Register::R10, Register::R11],
        false,
    ),
    (
        "database/sql.(*DB).beginDC",
        OP_BEGIN,
        &[Register::RAX],
        false,
    ),
    (
        "database/sql.(*Tx).Commit",
        OP_COMMIT,
        &[Register::RAX],
        false,
    ),
    (
        "database/sql.(*Tx).rollback",
        OP_ROLLBACK,
        &[Register::RAX],
        false,
    ),
    (
        "database/sql.(*Stmt).QueryContext",
        OP_STMT_QUERY,
        &[Register::RAX],
        false,
    ),
    (
        "database/sql.(*Stmt).ExecContext",
        OP_STMT_EXEC,
        &[Register::RAX],
        false,
    ),
];

/// Why the probes cannot be planned for a binary.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the program does not use database/sql ({function} not found)")]
    NoFunction { function: &'static str },
    #[error("no usable offset for {type_name}.{field}")]
    Offset {
        type_name: &'static str,
        field: &'static str,
        #[source]
        source: OffsetError,
    },
    #[error("no probe site in {function}")]
    Site {
        function: &'static str,
        #[source]
        source: SiteError,
    },
}

/// One probed function: its operation, entry and return sites.
#[derive(Clone, Debug)]
pub struct SqlFunction {
    pub name: &'static str,
    pub op: u32,
    pub entry: ProbeSite,
    pub returns: Vec<ProbeSite>,
}

/// Where and how to probe one binary.
#[derive(Clone, Debug)]
pub struct SqlPlan {
    pub offsets: SqlOffsets,
    pub functions: Vec<SqlFunction>,
    /// What this binary lacks (logged, not fatal).
    pub missing: Vec<String>,
}

/// Resolves functions, sites and offsets.
pub fn plan(bin: &GoBinary) -> Result<SqlPlan, PlanError> {
    // A program without queryDC does not use database/sql: say that before
    // any offset is looked up.
    for (function, _, _, required) in FUNCTIONS {
        if required && bin.function(function).is_none() {
            return Err(PlanError::NoFunction { function });
        }
    }
    let required = |(type_name, field): (&'static str, &'static str)| {
        bin.struct_field_offset(type_name, field)
            .map(|f| f.offset)
            .map_err(|source| PlanError::Offset {
                type_name,
                field,
                source,
            })
    };
    let mut missing = Vec::new();
    let mut optional = |(type_name, field): (&'static str, &'static str)| {
        bin.optional_field_offset(type_name, field, &mut missing)
    };
    let offsets = SqlOffsets {
        g_goid: required(("runtime.g", "goid"))?,
        db_connector: optional(("database/sql.DB", "connector")),
        dsn_connector_driver: optional(("database/sql.dsnConnector", "driver")),
        tx_db: optional(("database/sql.Tx", "db")),
        tx_done: optional(("database/sql.Tx", "done")),
        stmt_db: optional(("database/sql.Stmt", "db")),
        stmt_query: optional(("database/sql.Stmt", "query")),
    };
    let mut functions = Vec::new();
    for (name, op, preserve, required) in FUNCTIONS {
        let Some(func) = bin.function(name) else {
            missing.push(format!("{name}: not in the binary"));
            continue;
        };
        // Prepared statements without their query text are not worth a span.
        if matches!(op, OP_STMT_QUERY | OP_STMT_EXEC) && offsets.stmt_query == OFFSET_ABSENT {
            missing.push(format!("{name}: no offset of Stmt.query"));
            continue;
        }
        let sites = bin
            .entry_site(&func, preserve)
            .and_then(|entry| Ok((entry, bin.return_sites(&func)?)));
        match sites {
            Ok((entry, returns)) if !returns.is_empty() => functions.push(SqlFunction {
                name,
                op,
                entry,
                returns,
            }),
            Ok(_) if required => {
                return Err(PlanError::Site {
                    function: name,
                    source: SiteError::Undecodable {
                        name: func.name.clone(),
                        address: func.address,
                    },
                });
            }
            Ok(_) => missing.push(format!("{name}: no return site")),
            Err(source) if required => {
                return Err(PlanError::Site {
                    function: name,
                    source,
                });
            }
            Err(err) => missing.push(format!("{name}: {err}")),
        }
    }
    Ok(SqlPlan {
        offsets,
        functions,
        missing,
    })
}

/// The per-target configuration array of the SQL programs.
pub const CONFIG_MAP: &str = "SQL_CONFIG";

/// Writes the target's configuration and attaches the probes: the return
/// sites first, so that no call starts without its end probed. On error,
/// what was attached is detached.
pub fn attach(
    probes: &mut Probes,
    target: &Target,
    slot: u32,
    plan: &SqlPlan,
) -> Result<Vec<LinkHandle>, ProbeError> {
    probes.set_array(
        CONFIG_MAP,
        slot,
        SqlConfig {
            active: 1,
            _pad: 0,
            offsets: plan.offsets,
        },
    )?;
    let returns = plan.functions.iter().flat_map(|f| {
        f.returns
            .iter()
            .map(|r| ("sql_end", r.file_offset, f.op | SITE_RETURN))
    });
    let entries = plan
        .functions
        .iter()
        .map(|f| ("sql_start", f.entry.file_offset, f.op));
    probes.attach_sites(
        super::NAME,
        &target.exe_path,
        target.pid,
        slot,
        returns.chain(entries),
    )
}
