//! database/sql probes: a record at the entry site of each function every
//! variant of a query, exec, prepare, begin, commit or rollback goes
//! through, and one at each of its return sites (never a uretprobe: Go
//! moves goroutine stacks). The agent pairs them per goroutine.
//!
//! The attach cookie's site index says which function (`OP_*`) and whether
//! the site is its entry or a return (`SITE_RETURN`); the op fixes which
//! registers of Go's register ABI hold the receiver, the SQL text and the
//! returned error.

use agent_common::{
    sql::{
        KIND_SQL_END, KIND_SQL_START, OP_BEGIN, OP_COMMIT, OP_EXEC, OP_PREPARE, OP_QUERY,
        OP_ROLLBACK, OP_STMT_EXEC, OP_STMT_QUERY, SITE_RETURN, START_CONNECTOR, START_DRIVER,
        START_QUERY, START_QUERY_UNREAD, START_TX_DONE, SqlConfig, SqlEnd, SqlStart,
    },
    stats,
    target::MAX_TARGETS,
};
use aya_ebpf::{
    macros::{map, uprobe},
    maps::Array,
    programs::ProbeContext,
};

use crate::{
    go::{copy_string, goid, read_field},
    maps::count,
    record::{cookie, fields, header, reserve, slot_config, submit},
};

/// Per-target configuration, indexed by the target slot in the attach cookie.
#[map]
pub static SQL_CONFIG: Array<SqlConfig> = Array::with_max_entries(MAX_TARGETS, 0);

/// Entry site of one of the probed database/sql functions.
#[uprobe]
pub fn sql_start(ctx: ProbeContext) -> u32 {
    start(&ctx);
    0
}

/// A return site of one of them.
#[uprobe]
pub fn sql_end(ctx: ProbeContext) -> u32 {
    end(&ctx);
    0
}

#[inline(always)]
fn config(cookie: u64) -> Option<&'static SqlConfig> {
    slot_config(&SQL_CONFIG, cookie)
}

/// The integer registers of Go's ABIInternal on amd64, in argument order:
/// RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11.
#[inline(always)]
fn args(ctx: &ProbeContext) -> [u64; 9] {
    // SAFETY: `ctx.regs` points at the probed thread's saved registers,
    // which the kernel hands to the program and the verifier lets it read.
    let r = unsafe { &*ctx.regs };
    [r.rax, r.rbx, r.rcx, r.rdi, r.rsi, r.r8, r.r9, r.r10, r.r11]
}

fn start(ctx: &ProbeContext) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let off = &config.offsets;
    let Some(goid) = goid(ctx, off.g_goid) else {
        count(stats::READ_FAILED);
        return;
    };
    let op = (cookie as u32) & !SITE_RETURN;
    let a = args(ctx);
    let mut failed = false;
    let mut flags = 0;
    // The *DB, and where the SQL text is: in registers (data, len), or in
    // a struct field.
    let (db, query) = match op {
        // queryDC(db, ctx, txctx, dc, releaseConn, query, args):
        // RAX, RBX:RCX, RDI:RSI, R8, R9, R10:R11.
        // prepareDC(db, ctx, dc, release, cg, query): RAX, RBX:RCX, RDI,
        // RSI, R8:R9, R10:R11.
        OP_QUERY | OP_PREPARE => (a[0], Some((a[7], a[8]))),
        // execDC(db, ctx, dc, release, query, args): RAX, RBX:RCX, RDI,
        // RSI, R8:R9.
        OP_EXEC => (a[0], Some((a[5], a[6]))),
        // beginDC(db, ctx, dc, release, opts).
        OP_BEGIN => (a[0], None),
        // (*Tx).Commit(), (*Tx).rollback(discardConn): the receiver in RAX.
        OP_COMMIT | OP_ROLLBACK => {
            let tx = a[0];
            if read_field::<u32>(tx, off.tx_done).is_some_and(|done| done != 0) {
                flags |= START_TX_DONE;
            }
            // The *DB only names the driver: without it the span says
            // `other_sql`.
            (read_field::<u64>(tx, off.tx_db).unwrap_or(0), None)
        }
        // (*Stmt).QueryContext(ctx, args...), (*Stmt).ExecContext: the
        // receiver in RAX.
        OP_STMT_QUERY | OP_STMT_EXEC => {
            let stmt = a[0];
            let db = read_field::<u64>(stmt, off.stmt_db).unwrap_or(0);
            let query = read_field::<[u64; 2]>(stmt, off.stmt_query).map(|[d, l]| (d, l));
            if query.is_none() {
                failed = true;
            }
            (db, query)
        }
        _ => return,
    };
    let Some(mut entry) = reserve::<SqlStart>(KIND_SQL_START) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_SQL_START, goid);
    rec.db = db;
    rec.op = op;
    rec.query_len = 0;
    rec._pad = 0;
    rec.connector_itab = 0;
    rec.driver_itab = 0;
    rec.query_ptr = 0;
    if let Some((data, len)) = query {
        match copy_string(data, len, &mut rec.query) {
            Some(len) => {
                rec.query_len = len;
                flags |= START_QUERY;
            }
            None => {
                // Left to the agent, which can fault the page in.
                rec.query_ptr = data;
                rec.query_len = len.min(u64::from(u32::MAX)) as u32;
                flags |= START_QUERY_UNREAD;
            }
        }
    }
    if let Some([itab, data]) = read_field::<[u64; 2]>(db, off.db_connector) {
        rec.connector_itab = itab;
        flags |= START_CONNECTOR;
        if let Some(driver) = read_field::<u64>(data, off.dsn_connector_driver) {
            rec.driver_itab = driver;
            flags |= START_DRIVER;
        }
    }
    rec.flags = flags;
    if failed {
        count(stats::READ_FAILED);
    }
    let now = rec.header.ktime_ns;
    submit(entry, now);
}

fn end(ctx: &ProbeContext) {
    let cookie = cookie(ctx);
    let Some(config) = config(cookie) else { return };
    let Some(goid) = goid(ctx, config.offsets.g_goid) else {
        count(stats::READ_FAILED);
        return;
    };
    let op = (cookie as u32) & !SITE_RETURN;
    let a = args(ctx);
    // The returned error (itab, data).
    let (err_itab, err_data) = match op {
        // (*Rows, error), (*Stmt, error), (*Tx, error).
        OP_QUERY | OP_PREPARE | OP_BEGIN | OP_STMT_QUERY => (a[1], a[2]),
        // (Result, error): the Result interface in RAX:RBX.
        OP_EXEC | OP_STMT_EXEC => (a[2], a[3]),
        // error.
        OP_COMMIT | OP_ROLLBACK => (a[0], a[1]),
        _ => return,
    };
    let Some(mut entry) = reserve::<SqlEnd>(KIND_SQL_END) else {
        return;
    };
    let rec = fields(&mut entry);
    rec.header = header(cookie, KIND_SQL_END, goid);
    rec.err_itab = err_itab;
    rec.err_data = err_data;
    rec.op = op;
    rec._pad = 0;
    let now = rec.header.ktime_ns;
    submit(entry, now);
}
