//! What the database/sql fixtures (`sqlapp`, `sqlapp-old`) run, as spans.

/// One expected SQL span: name, operation, collection, query text
/// (sanitized), whether it fails.
pub type SqlSpan = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    bool,
);

/// The SQL spans `GET /run` of the sqlapp fixtures makes, in order.
pub const SQL_SPANS: [SqlSpan; 12] = [
    (
        "CREATE TABLE items",
        Some("CREATE TABLE"),
        Some("items"),
        Some("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT, price REAL)"),
        false,
    ),
    (
        "DELETE items",
        Some("DELETE"),
        Some("items"),
        Some("DELETE FROM items"),
        false,
    ),
    (
        "INSERT items",
        Some("INSERT"),
        Some("items"),
        Some("INSERT INTO items (id, name, price) VALUES (?, ?, ?)"),
        false,
    ),
    (
        "SELECT items",
        Some("SELECT"),
        Some("items"),
        Some("SELECT id, name FROM items WHERE id IN (?, ?, ?) AND name <> ?"),
        false,
    ),
    ("BEGIN", Some("BEGIN"), None, None, false),
    (
        "INSERT items",
        Some("INSERT"),
        Some("items"),
        Some("INSERT INTO items (id, name, price) VALUES (?, ?, ?)"),
        false,
    ),
    ("COMMIT", Some("COMMIT"), None, None, false),
    ("BEGIN", Some("BEGIN"), None, None, false),
    ("ROLLBACK", Some("ROLLBACK"), None, None, false),
    (
        "PREPARE items",
        Some("PREPARE"),
        Some("items"),
        Some("SELECT name FROM items WHERE id = ?"),
        false,
    ),
    (
        "SELECT items",
        Some("SELECT"),
        Some("items"),
        Some("SELECT name FROM items WHERE id = ?"),
        false,
    ),
    (
        "sqlite",
        None,
        None,
        Some("SELEC * FORM items WHERE id = ?"),
        true,
    ),
];
