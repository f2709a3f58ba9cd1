//! Records of the database/sql probes.
//!
//! One call into `database/sql` that reaches the database (a query, an
//! exec, a prepare, a transaction's begin, commit or rollback) is a
//! [`SqlStart`] from the entry site of the function every variant of it goes
//! through, and a [`SqlEnd`] from one of that function's return sites, on
//! the same goroutine. The agent pairs them per goroutine into a CLIENT span.

use crate::{event::EventHeader, target::OFFSET_ABSENT};

/// `EventHeader::kind` of a [`SqlStart`] record.
pub const KIND_SQL_START: u32 = 13;
/// `EventHeader::kind` of a [`SqlEnd`] record.
pub const KIND_SQL_END: u32 = 14;

/// Bytes of the SQL text kept (the record stays within the ring buffer's
/// largest record); a longer text is cut, and the agent knows it from
/// `query_len`.
pub const QUERY_CAP: usize = 448;

/// What a probed function does; the low bits of a probe's site index
/// (`EventHeader::site`), and [`SqlStart::op`].
///
/// `(*DB).queryDC`: every `Query`/`QueryContext`/`QueryRow` of a DB, a
/// Conn or a Tx.
pub const OP_QUERY: u32 = 0;
/// `(*DB).execDC`: every `Exec`/`ExecContext` of a DB, a Conn or a Tx.
pub const OP_EXEC: u32 = 1;
/// `(*DB).prepareDC`: `Prepare`/`PrepareContext` of a DB or a Conn.
pub const OP_PREPARE: u32 = 2;
/// `(*DB).beginDC`: `Begin`/`BeginTx` of a DB or a Conn.
pub const OP_BEGIN: u32 = 3;
/// `(*Tx).Commit`.
pub const OP_COMMIT: u32 = 4;
/// `(*Tx).rollback` (`Rollback`, and a transaction's context ending).
pub const OP_ROLLBACK: u32 = 5;
/// `(*Stmt).QueryContext` (a prepared statement's query).
pub const OP_STMT_QUERY: u32 = 6;
/// `(*Stmt).ExecContext` (a prepared statement's exec).
pub const OP_STMT_EXEC: u32 = 7;
/// Number of operations.
pub const OPS: u32 = 8;

/// Set in a site index for a return site (clear: the entry site).
pub const SITE_RETURN: u32 = 1 << 8;

/// `SqlStart::flags`: the SQL text was read.
pub const START_QUERY: u32 = 1 << 0;
/// The driver's connector (`DB.connector`) was read.
pub const START_CONNECTOR: u32 = 1 << 1;
/// The driver behind a `database/sql.dsnConnector` was read.
pub const START_DRIVER: u32 = 1 << 2;
/// The transaction was already done (committed or rolled back) when
/// `Commit`/`Rollback` was called: nothing reaches the database, and the
/// call is not a span.
pub const START_TX_DONE: u32 = 1 << 3;
/// The SQL text could not be read in the kernel (a uprobe cannot fault a
/// page in: a constant on a page the program has not touched yet):
/// `query_ptr` and `query_len` say where it is, for the agent to read.
pub const START_QUERY_UNREAD: u32 = 1 << 4;

/// A database/sql call began.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SqlStart {
    pub header: EventHeader,
    /// The `*sql.DB`.
    pub db: u64,
    /// The itab of `DB.connector` (a `driver.Connector`), 0 if unread.
    pub connector_itab: u64,
    /// The itab of `dsnConnector.driver` (a `driver.Driver`) behind the
    /// connector's data word, read whatever the connector's type: the agent
    /// uses it only when the connector is a `database/sql.dsnConnector`.
    pub driver_itab: u64,
    /// The SQL text's address in the target (with [`START_QUERY_UNREAD`]).
    pub query_ptr: u64,
    /// One of `OP_*`.
    pub op: u32,
    /// Bit set of `START_*`.
    pub flags: u32,
    /// The SQL text's full length; its first `min(len, QUERY_CAP)` bytes
    /// are in `query`.
    pub query_len: u32,
    pub _pad: u32,
    pub query: [u8; QUERY_CAP],
}

const _: () = assert!(core::mem::size_of::<SqlStart>() == 32 + 8 * 4 + 4 * 4 + QUERY_CAP);
const _: () = assert!(core::mem::size_of::<SqlStart>() <= crate::http::MAX_RECORD);

/// A database/sql call returned (a return site of the function whose entry
/// wrote the [`SqlStart`], on the same goroutine).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SqlEnd {
    pub header: EventHeader,
    /// The returned `error`'s itab (0: no error) and data word.
    pub err_itab: u64,
    pub err_data: u64,
    /// One of `OP_*`.
    pub op: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SqlEnd>() == 32 + 8 * 2 + 8);

/// Byte offsets of the fields the probes read, from DWARF or the table;
/// `OFFSET_ABSENT` where unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlOffsets {
    /// `runtime.g.goid`.
    pub g_goid: u64,
    /// `database/sql.DB.connector` (a `driver.Connector`).
    pub db_connector: u64,
    /// `database/sql.dsnConnector.driver` (a `driver.Driver`).
    pub dsn_connector_driver: u64,
    /// `database/sql.Tx.db` (`*DB`).
    pub tx_db: u64,
    /// `database/sql.Tx.done` (`int32` before Go 1.19, then `atomic.Bool`:
    /// a 32-bit word either way).
    pub tx_done: u64,
    /// `database/sql.Stmt.db` (`*DB`).
    pub stmt_db: u64,
    /// `database/sql.Stmt.query` (string).
    pub stmt_query: u64,
}

impl SqlOffsets {
    /// Every offset absent.
    pub const ABSENT: Self = Self {
        g_goid: OFFSET_ABSENT,
        db_connector: OFFSET_ABSENT,
        dsn_connector_driver: OFFSET_ABSENT,
        tx_db: OFFSET_ABSENT,
        tx_done: OFFSET_ABSENT,
        stmt_db: OFFSET_ABSENT,
        stmt_query: OFFSET_ABSENT,
    };
}

const _: () = assert!(core::mem::size_of::<SqlOffsets>() == 7 * 8);

/// One entry of the `SQL_CONFIG` array map, by target slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqlConfig {
    /// Non-zero once the agent has filled this slot.
    pub active: u32,
    pub _pad: u32,
    pub offsets: SqlOffsets,
}

const _: () = assert!(core::mem::size_of::<SqlConfig>() == 8 + 7 * 8);
