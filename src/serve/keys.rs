//! API keys: bearer tokens, each either admin (every account, ingest) or scoped to one
//! account (that account's reads). Tokens are never logged or echoed in errors.

/// What a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every account's reads, and ingest.
    Admin,
    /// Reads of this account only.
    Account(String),
}

impl Scope {
    /// Whether this key may read `account`.
    pub fn can_read(&self, account: &str) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Account(own) => own == account,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key {entry}: expected SCOPE=TOKEN")]
    NoScope { entry: usize },
    #[error("key {entry}: scope `{scope}` is neither `admin` nor `account:ID`")]
    BadScope { entry: usize, scope: String },
    #[error("key {entry}: the token must be at least 16 visible ASCII characters")]
    WeakToken { entry: usize },
    #[error("key {entry}: the same token is given twice")]
    Duplicate { entry: usize },
}

/// The keys a server accepts.
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
    /// entries and lines starting with `#` are skipped.
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
            let scope = match scope.trim() {
                "admin" => Scope::Admin,
                other => match other.strip_prefix("account:") {
                    Some(account) if !account.trim().is_empty() => {
                        Scope::Account(account.trim().to_string())
                    }
                    _ => {
                        return Err(KeyError::BadScope {
                            entry: entry_no,
                            scope: other.to_string(),
                        })
                    }
                },
            };
            let token = token.trim();
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(KeyError::WeakToken { entry: entry_no });
            }
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

    /// The scope of `token`, comparing every key in constant time.
    pub fn scope_of(&self, token: &str) -> Option<Scope> {
        let mut found = None;
        for (key, scope) in &self.keys {
            if constant_time_eq(key, token.as_bytes()) && found.is_none() {
                found = Some(scope.clone());
            }
        }
        found
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
            "admin=0123456789abcdef0123, account:acme=acme-key-0123456789",
            ',',
        )
        .expect("valid keys");
        assert_eq!(set.scope_of("0123456789abcdef0123"), Some(Scope::Admin));
        assert_eq!(
            set.scope_of("acme-key-0123456789"),
            Some(Scope::Account("acme".into()))
        );
        assert_eq!(set.scope_of("acme-key-012345678"), None);
        let err = KeySet::parse("root=supersecrettoken123456", ',').unwrap_err();
        assert!(!err.to_string().contains("supersecret"), "{err}");
        let err = KeySet::parse("admin=short", ',').unwrap_err();
        assert_eq!(err, KeyError::WeakToken { entry: 1 });
        assert!(format!("{set:?}").contains("2 keys"));
        assert!(Scope::Account("acme".into()).can_read("acme"));
        assert!(!Scope::Account("acme".into()).can_read("acme2"));
    }
}
