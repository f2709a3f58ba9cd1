//! Naming the Go types behind interface values the probes saw: the
//! driver behind a `*sql.DB` (for `db.system.name`) and a returned error's
//! dynamic type (for `error.type`).
//!
//! An interface value's first word is its itab. The itabs the compiler
//! knows of are symbols of the binary, `go:itab.<type>,<interface>`, with the
//! type's full package path (`*modernc.org/sqlite.Driver`). A stripped
//! binary has none: its drivers are then `other_sql` and its errors
//! `_OTHER`.

use std::collections::HashMap;

use object::{Object as _, ObjectSymbol as _};

use crate::binary::GoBinary;

/// The interfaces whose itabs are looked up.
const INTERFACES: [&str; 3] = [
    ",database/sql/driver.Connector",
    ",database/sql/driver.Driver",
    ",error",
];

/// Link-time itab addresses to the name of their concrete type.
#[derive(Clone, Debug, Default)]
pub struct ItabNames {
    names: HashMap<u64, String>,
    /// Added to a link-time address for the run-time one (PIE).
    bias: u64,
}

impl ItabNames {
    /// The itab symbols of `bin` for the interfaces this family reads.
    pub fn from_binary(bin: &GoBinary) -> Self {
        let mut names = HashMap::new();
        if let Ok(file) = object::File::parse(bin.bytes()) {
            for sym in file.symbols() {
                let Ok(name) = sym.name() else { continue };
                let Some(rest) = name.strip_prefix("go:itab.") else {
                    continue;
                };
                if let Some(ty) = INTERFACES.iter().find_map(|i| rest.strip_suffix(i)) {
                    names.insert(sym.address(), ty.to_owned());
                }
            }
        }
        Self { names, bias: 0 }
    }

    /// The same names at the addresses of a process loaded with `bias`.
    pub fn with_bias(mut self, bias: u64) -> Self {
        self.bias = bias;
        self
    }

    /// How many itabs are known.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The concrete type of the interface value whose itab is at run-time
    /// address `itab`.
    pub fn name(&self, itab: u64) -> Option<&str> {
        let addr = itab.checked_sub(self.bias)?;
        self.names.get(&addr).map(String::as_str)
    }

    #[cfg(test)]
    pub fn insert(&mut self, addr: u64, name: &str) {
        self.names.insert(addr, name.to_owned());
    }
}

/// The connector `sql.Open` wraps a driver in when the driver has no
/// connector of its own.
pub const DSN_CONNECTOR: &str = "database/sql.dsnConnector";

/// `db.system.name` for a driver or connector type (`*modernc.org/sqlite.Driver`):
/// by the package that defines it; `other_sql` for an unknown one.
pub fn system_name(type_name: &str) -> &'static str {
    let path = type_name.trim_start_matches('*');
    // The package path: everything before the type name's last `.` after
    // the last `/`.
    let package = match path.rfind('/') {
        Some(slash) => match path[slash..].find('.') {
            Some(dot) => &path[..slash + dot],
            None => path,
        },
        None => path.split('.').next().unwrap_or(path),
    };
    const SYSTEMS: &[(&str, &str)] = &[
        ("modernc.org/sqlite", "sqlite"),
        ("github.com/mattn/go-sqlite3", "sqlite"),
        ("github.com/ncruces/go-sqlite3", "sqlite"),
        ("zombiezen.com/go/sqlite", "sqlite"),
        ("github.com/glebarez/go-sqlite", "sqlite"),
        ("github.com/lib/pq", "postgresql"),
        ("github.com/jackc/pgx", "postgresql"),
        ("github.com/go-sql-driver/mysql", "mysql"),
        ("github.com/ziutek/mymysql", "mysql"),
        ("github.com/microsoft/go-mssqldb", "microsoft.sql_server"),
        ("github.com/denisenkom/go-mssqldb", "microsoft.sql_server"),
        ("github.com/sijms/go-ora", "oracle.db"),
        ("github.com/godror/godror", "oracle.db"),
        ("github.com/ClickHouse/clickhouse-go", "clickhouse"),
        ("github.com/trinodb/trino-go-client", "trino"),
        ("github.com/nakagami/firebirdsql", "firebirdsql"),
        ("github.com/ibmdb/go_ibm_db", "ibm.db2"),
        ("github.com/SAP/go-hdb", "sap.hana"),
    ];
    SYSTEMS
        .iter()
        .find(|(prefix, _)| {
            package == *prefix
                || package
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .map_or("other_sql", |(_, system)| system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_map_to_systems() {
        for (ty, system) in [
            ("*modernc.org/sqlite.Driver", "sqlite"),
            ("*github.com/mattn/go-sqlite3.SQLiteDriver", "sqlite"),
            ("*github.com/lib/pq.Driver", "postgresql"),
            ("github.com/lib/pq.Driver", "postgresql"),
            ("*github.com/jackc/pgx/v5/stdlib.Driver", "postgresql"),
            ("*github.com/jackc/pgx/v4/stdlib.connector", "postgresql"),
            ("github.com/go-sql-driver/mysql.MySQLDriver", "mysql"),
            ("*github.com/go-sql-driver/mysql.connector", "mysql"),
            (
                "*github.com/microsoft/go-mssqldb.Driver",
                "microsoft.sql_server",
            ),
            ("*github.com/sijms/go-ora/v2.OracleDriver", "oracle.db"),
            ("*github.com/lib/pqx.Driver", "other_sql"),
            ("*main.fakeDriver", "other_sql"),
            ("database/sql.dsnConnector", "other_sql"),
            ("", "other_sql"),
        ] {
            assert_eq!(system_name(ty), system, "{ty}");
        }
    }

    #[test]
    fn names_follow_the_load_bias() {
        let mut names = ItabNames::default();
        names.insert(0x1000, "*errors.errorString");
        assert_eq!(names.name(0x1000), Some("*errors.errorString"));
        let names = names.with_bias(0x5555_0000_0000);
        assert_eq!(names.name(0x1000), None);
        assert_eq!(names.name(0x5555_0000_1000), Some("*errors.errorString"));
    }
}
