//! `GET /v1/accounts`: every account with any row (lots, ledger, rollups, balances, alerts,
//! or a state in the checkpoints, which is where open holds live), in pages ordered by id.

use clickhouse::Client;
use serde::Serialize;

use super::{ReportError, Tabular};

/// One page of account ids, in order.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Accounts {
    pub accounts: Vec<String>,
}

impl Tabular for Accounts {
    fn header(&self) -> Vec<&'static str> {
        vec!["account"]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.accounts.iter().map(|a| vec![a.clone()]).collect()
    }
}

/// Where a page of accounts ends: the last account id. Its text form is opaque to clients
/// (hex), as the ledger's is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountCursor(pub String);

impl AccountCursor {
    pub fn encode(&self) -> String {
        self.0.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// `None` when `text` is not a cursor this server made.
    pub fn decode(text: &str) -> Option<AccountCursor> {
        if text.is_empty() || !text.len().is_multiple_of(2) || !text.is_ascii() {
            return None;
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        String::from_utf8(bytes).ok().map(AccountCursor)
    }
}

/// Tables with an `account` column, and the rows of each that name an account. Every
/// table that keeps something of an account is here, so an account with calls but no lots
/// (or only an open hold, kept in its checkpointed state) is listed too.
const SOURCES: [(&str, &str); 7] = [
    ("lots", ""),
    ("ledger", ""),
    ("daily_rollups", ""),
    ("daily_usage", ""),
    ("balances", ""),
    ("alerts", ""),
    ("checkpoints", "row_kind = 'state' AND "),
];

/// At most `limit` accounts after `after`, in order, and the cursor of the next page if
/// there is one.
pub async fn page(
    client: &Client,
    after: Option<&AccountCursor>,
    limit: u64,
) -> Result<(Accounts, Option<AccountCursor>), ReportError> {
    // Each table gives at most one page and one row past it, so a page costs the same
    // however many accounts there are; no FINAL: any version of any row counts.
    let parts: Vec<String> = SOURCES
        .iter()
        .map(|(table, filter)| {
            format!(
                "SELECT DISTINCT account FROM {table} WHERE {filter}account > ? \
                 ORDER BY account LIMIT {}",
                limit + 1
            )
        })
        .collect();
    let sql = format!(
        "SELECT account FROM ({}) GROUP BY account ORDER BY account LIMIT {}",
        parts.join(" UNION ALL "),
        limit + 1
    );
    let after = after.map(|c| c.0.as_str()).unwrap_or_default();
    let mut query = client.query(&sql);
    for _ in SOURCES {
        query = query.bind(after);
    }
    let mut accounts: Vec<String> = query
        .fetch_all()
        .await
        .map_err(|e| ReportError::read("the accounts")(e.into()))?;
    let next = if accounts.len() as u64 > limit {
        accounts.truncate(limit as usize);
        accounts.last().cloned().map(AccountCursor)
    } else {
        None
    };
    Ok((Accounts { accounts }, next))
}

/// The page of a key that reads one account: that account, if it is after `after`.
pub fn own(account: &str, after: Option<&AccountCursor>) -> Accounts {
    let listed = after.is_none_or(|c| account > c.0.as_str());
    Accounts {
        accounts: if listed {
            vec![account.to_string()]
        } else {
            Vec::new()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{own, AccountCursor};

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = AccountCursor("acme-한국".into());
        assert_eq!(AccountCursor::decode(&c.encode()), Some(c));
        assert_eq!(AccountCursor::decode(""), None);
        assert_eq!(AccountCursor::decode("zz"), None);
        assert_eq!(AccountCursor::decode("abc"), None);
        assert_eq!(AccountCursor::decode("ff"), None);
    }

    #[test]
    fn an_account_key_sees_its_account_once() {
        assert_eq!(own("b", None).accounts, vec!["b"]);
        assert_eq!(
            own("b", Some(&AccountCursor("a".into()))).accounts,
            vec!["b"]
        );
        assert!(own("b", Some(&AccountCursor("b".into())))
            .accounts
            .is_empty());
    }
}
