//! API keys: bearer tokens, each with one role and no more: `admin` (every account's reads,
//! checks, holds and ingest), `ingest` (`POST /v1/events` only), `account:ID` (that
//! account's reads only) or `service:ID` (a product service acting for that account:
//! checks, holds and releases, no reads). Tokens are never logged or echoed in errors.

use tally_core::event::check_name;

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every account's reads, checks and holds, and ingest.
    Admin,
    /// Ingest only: a pipeline that forwards usage from products.
    Ingest,
    /// Reads of this account only (a dashboard user, a billing page).
    Account(String),
    /// A product service acting for this account: check, hold, release.
    Service(String),
}

impl Scope {
    /// Whether this key may read `account`.
    pub fn can_read(&self, account: &str) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Account(own) => own == account,
            Scope::Ingest | Scope::Service(_) => false,
        }
    }

    /// Whether this key may check, hold and release for `account`.
    pub fn can_act(&self, account: &str) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Service(own) => own == account,
            Scope::Ingest | Scope::Account(_) => false,
        }
    }

    /// Whether this key may ingest events.
    pub fn can_ingest(&self) -> bool {
        matches!(self, Scope::Admin | Scope::Ingest)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key {entry}: expected SCOPE=TOKEN")]
    NoScope { entry: usize },
    /// The text before `=` is not echoed: a swapped `TOKEN=admin` would print the token.
    #[error(
        "key {entry}: the scope (before `=`) is none of `admin`, `ingest`, `account:ID`, \
         `service:ID` (not shown: it may be a token)"
    )]
    BadScope { entry: usize },
    #[error("key {entry}: the account of a scope must be a valid account id ({problem})")]
    BadAccount { entry: usize, problem: String },
    #[error(
        "key {entry}: the token must be at least 16 visible ASCII characters without `=` \
         (one `=` a line: between scope and token)"
    )]
    WeakToken { entry: usize },
    #[error("key {entry}: the same token is given twice")]
    Duplicate { entry: usize },
}

/// The keys a server accepts. A key's index is its identity for rate limits.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<(Vec<u8>, Scope)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet({} keys)", self.keys.len())
    }
}

impl KeySet {
    /// Parses `SCOPE=TOKEN` entries separated by `separator` (and line breaks); blank
    /// entries and lines starting with `#` are skipped. Strict: exactly one `=`, a known
    /// scope, an account id as the core takes it, a token of 16 or more visible characters.
    pub fn parse(text: &str, separator: char) -> Result<KeySet, KeyError> {
        let mut set = KeySet::default();
        let entries = text
            .split([separator, '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let entry_no = i + 1;
            let (scope, token) = entry
                .split_once('=')
                .ok_or(KeyError::NoScope { entry: entry_no })?;
            let token = token.trim();
            // `account:a=b=TOKEN` must not silently become account `a` with token
            // `b=TOKEN`.
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic() && b != b'=') {
                return Err(KeyError::WeakToken { entry: entry_no });
            }
            let scope = parse_scope(scope.trim(), entry_no)?;
            if set.keys.iter().any(|(t, _)| t == token.as_bytes()) {
                return Err(KeyError::Duplicate { entry: entry_no });
            }
            set.keys.push((token.as_bytes().to_vec(), scope));
        }
        Ok(set)
    }

    pub fn extend(&mut self, other: KeySet) {
        self.keys.extend(other.keys);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The index and scope of `token`, comparing every key in constant time.
    pub fn find(&self, token: &str) -> Option<(usize, Scope)> {
        let mut found = None;
        for (index, (key, scope)) in self.keys.iter().enumerate() {
            if constant_time_eq(key, token.as_bytes()) && found.is_none() {
                found = Some((index, scope.clone()));
            }
        }
        found
    }

    /// The scope of `token`.
    pub fn scope_of(&self, token: &str) -> Option<Scope> {
        self.find(token).map(|(_, scope)| scope)
    }
}

fn parse_scope(scope: &str, entry: usize) -> Result<Scope, KeyError> {
    let scoped = |account: &str| -> Result<String, KeyError> {
        if account.is_empty() {
            return Err(KeyError::BadAccount {
                entry,
                problem: "empty".into(),
            });
        }
        check_name(account).map_err(|e| KeyError::BadAccount {
            entry,
            problem: format!("it {e}"),
        })?;
        Ok(account.to_string())
    };
    match scope {
        "admin" => Ok(Scope::Admin),
        "ingest" => Ok(Scope::Ingest),
        other => {
            if let Some(account) = other.strip_prefix("account:") {
                Ok(Scope::Account(scoped(account)?))
            } else if let Some(account) = other.strip_prefix("service:") {
                Ok(Scope::Service(scoped(account)?))
            } else {
                Err(KeyError::BadScope { entry })
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scopes_and_never_echoes_tokens() {
        let set = KeySet::parse(
            "admin=0123456789abcdef0123, account:acme=acme-key-0123456789, \
             service:acme=acme-service-0123456789, ingest=ingest-key-0123456789",
            ',',
        )
        .expect("valid keys");
        assert_eq!(set.scope_of("0123456789abcdef0123"), Some(Scope::Admin));
        assert_eq!(
            set.scope_of("acme-key-0123456789"),
            Some(Scope::Account("acme".into()))
        );
        assert_eq!(
            set.find("acme-service-0123456789"),
            Some((2, Scope::Service("acme".into())))
        );
        assert_eq!(set.scope_of("ingest-key-0123456789"), Some(Scope::Ingest));
        assert_eq!(set.scope_of("acme-key-012345678"), None);
        let err = KeySet::parse("root=supersecrettoken123456", ',').unwrap_err();
        assert!(!err.to_string().contains("supersecret"), "{err}");
        let err = KeySet::parse("admin=short", ',').unwrap_err();
        assert_eq!(err, KeyError::WeakToken { entry: 1 });
        assert!(format!("{set:?}").contains("4 keys"));
    }

    #[test]
    fn roles_do_what_they_need_and_no_more() {
        let account = Scope::Account("acme".into());
        let service = Scope::Service("acme".into());
        assert!(account.can_read("acme") && !account.can_read("acme2"));
        assert!(!account.can_act("acme") && !account.can_ingest());
        assert!(service.can_act("acme") && !service.can_act("acme2"));
        assert!(!service.can_read("acme") && !service.can_ingest());
        assert!(Scope::Ingest.can_ingest() && !Scope::Ingest.can_read("acme"));
        assert!(!Scope::Ingest.can_act("acme"));
        assert!(Scope::Admin.can_read("x") && Scope::Admin.can_act("x"));
    }

    #[test]
    fn key_lines_are_strict() {
        // A second `=` would scope account `a` with the token `b=TOKEN`.
        assert_eq!(
            KeySet::parse("account:a=b=acme-key-0123456789", ',').unwrap_err(),
            KeyError::WeakToken { entry: 1 }
        );
        // A swapped line never prints the token.
        let err = KeySet::parse("swapped-token-0123456789=admin", ',').unwrap_err();
        assert!(!err.to_string().contains("swapped-token"), "{err}");
        // Account ids follow the core's rules.
        let long = format!("account:{}=acme-key-0123456789", "a".repeat(300));
        assert!(matches!(
            KeySet::parse(&long, ',').unwrap_err(),
            KeyError::BadAccount { .. }
        ));
        assert!(matches!(
            KeySet::parse("service:=acme-key-0123456789", ',').unwrap_err(),
            KeyError::BadAccount { .. }
        ));
    }
}
