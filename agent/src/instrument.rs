//! Instrumentation categories (`--instrument`, `--no-instrument`): what the
//! agent traces, by kind of work rather than by family. A family names the
//! categories it serves ([`crate::family::FamilyEntry::categories`]); one
//! whose categories are all off is not planned, so none of its probes is
//! attached.

/// One category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Category {
    /// net/http: the server (with routers' routes) and the client.
    Http,
    /// gRPC servers and clients.
    Grpc,
    /// database/sql calls.
    Sql,
    /// crypto/tls handshakes.
    Tls,
    /// DNS lookups through Go's resolver.
    Dns,
    /// Connection set-up (`net.Dialer`).
    Net,
    /// USDT probes.
    Usdt,
    /// runtime/trace flight-recorder dumps.
    Flight,
}

impl Category {
    /// Every category, in the order `--help` lists them.
    pub const ALL: [Self; 8] = [
        Self::Http,
        Self::Grpc,
        Self::Sql,
        Self::Tls,
        Self::Dns,
        Self::Net,
        Self::Usdt,
        Self::Flight,
    ];

    /// Its name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Sql => "sql",
            Self::Tls => "tls",
            Self::Dns => "dns",
            Self::Net => "net",
            Self::Usdt => "usdt",
            Self::Flight => "flight",
        }
    }

    const fn bit(self) -> u16 {
        1 << self as u8
    }
}

/// A set of categories.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Categories(u16);

impl Default for Categories {
    /// Every category.
    fn default() -> Self {
        Self::ALL
    }
}

impl std::fmt::Debug for Categories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Category::name))
            .finish()
    }
}

impl std::fmt::Display for Categories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.iter().map(Category::name).collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// A list naming a category that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: unknown category {name:?} (one of {known})", known = known())]
pub struct CategoryError {
    /// Where the list came from (`--instrument`, `AGENT_NO_INSTRUMENT`).
    pub source_name: &'static str,
    pub name: String,
}

fn known() -> String {
    Category::ALL.map(Category::name).join(", ")
}

impl Categories {
    /// Every category.
    pub const ALL: Self = Self((1 << Category::ALL.len()) - 1);
    /// None.
    pub const NONE: Self = Self(0);

    /// Whether `category` is on.
    pub const fn contains(self, category: Category) -> bool {
        self.0 & category.bit() != 0
    }

    /// Whether any of `categories` is on (a family serving none is always
    /// planned: it has no category of its own).
    pub fn any(self, categories: &[Category]) -> bool {
        categories.is_empty() || categories.iter().any(|&c| self.contains(c))
    }

    /// The categories on, in [`Category::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Category> {
        Category::ALL.into_iter().filter(move |&c| self.contains(c))
    }

    /// A comma-separated list (`http,sql`; spaces and empty items allowed).
    pub fn parse(list: &str, source_name: &'static str) -> Result<Self, CategoryError> {
        let mut set = Self::NONE;
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let lower = item.to_ascii_lowercase();
            let category = Category::ALL
                .into_iter()
                .find(|c| c.name() == lower)
                .ok_or_else(|| CategoryError {
                    source_name,
                    name: item.to_owned(),
                })?;
            set.0 |= category.bit();
        }
        Ok(set)
    }

    /// The categories on: `--instrument` (else `AGENT_INSTRUMENT`, else
    /// all) less `--no-instrument` (else `AGENT_NO_INSTRUMENT`). An empty
    /// flag is an empty list; an empty variable is an unset one.
    pub fn resolve(
        instrument: Option<&str>,
        no_instrument: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CategoryError> {
        // An empty variable is an unset one.
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let on = match (instrument, env("AGENT_INSTRUMENT")) {
            (Some(list), _) => Self::parse(list, "--instrument")?,
            (None, Some(list)) => Self::parse(&list, "AGENT_INSTRUMENT")?,
            (None, None) => Self::ALL,
        };
        let off = match (no_instrument, env("AGENT_NO_INSTRUMENT")) {
            (Some(list), _) => Self::parse(list, "--no-instrument")?,
            (None, Some(list)) => Self::parse(&list, "AGENT_NO_INSTRUMENT")?,
            (None, None) => Self::NONE,
        };
        Ok(Self(on.0 & !off.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn everything_by_default() {
        let all = Categories::resolve(None, None, no_env).unwrap();
        assert_eq!(all, Categories::ALL);
        assert_eq!(all.to_string(), "http,grpc,sql,tls,dns,net,usdt,flight");
        assert!(all.any(&[]));
    }

    #[test]
    fn on_less_off_flags_over_environment() {
        let env = |name: &str| match name {
            "AGENT_INSTRUMENT" => Some("http, sql,grpc".to_owned()),
            "AGENT_NO_INSTRUMENT" => Some("grpc".to_owned()),
            _ => None,
        };
        let set = Categories::resolve(None, None, env).unwrap();
        assert_eq!(set.to_string(), "http,sql");
        let set = Categories::resolve(Some("SQL,usdt"), None, env).unwrap();
        assert_eq!(set.to_string(), "sql,usdt");
        let set = Categories::resolve(None, Some("sql"), env).unwrap();
        assert_eq!(set.to_string(), "http,grpc");
        assert!(set.any(&[Category::Sql, Category::Http]));
        assert!(!set.any(&[Category::Sql]));
        let none = Categories::resolve(Some(""), None, no_env).unwrap();
        assert_eq!(none.to_string(), "none");
    }

    #[test]
    fn an_unknown_name_is_named() {
        let err = Categories::resolve(None, Some("sql,kafka"), no_env).unwrap_err();
        assert_eq!(err.name, "kafka");
        let msg = err.to_string();
        assert!(
            msg.starts_with("--no-instrument: unknown category \"kafka\""),
            "{msg}"
        );
        assert!(
            msg.contains("http, grpc, sql, tls, dns, net, usdt, flight"),
            "{msg}"
        );
        let empty = |_: &str| Some(" ".to_owned());
        assert_eq!(
            Categories::resolve(None, None, empty).unwrap(),
            Categories::ALL,
            "an empty variable is unset"
        );
        let env = |_: &str| Some("htp".to_owned());
        let err = Categories::resolve(None, None, env).unwrap_err();
        assert_eq!(err.source_name, "AGENT_INSTRUMENT");
    }
}
