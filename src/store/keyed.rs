//! Lookups of notice rows (alerts, webhook deliveries) by their (account, id) key, shared by
//! the tables whose workers recover what a replay decided again.

use clickhouse::{Client, RowOwned, RowRead};

use super::writes::quote;
use super::StoreError;

/// Pairs looked up per query: keeps each query well under ClickHouse's query size limit.
const FIND_PER_QUERY: usize = 500;

/// A row of a table whose sorting key starts with (account, id).
pub trait KeyedRow: RowOwned + RowRead {
    /// The table the rows live in.
    const TABLE: &'static str;
    /// The id column next to `account`.
    const ID_COLUMN: &'static str;
    /// This row's (account, id).
    fn key(&self) -> (&str, &str);
}

/// The stored rows of these (account, id) pairs, where they exist.
pub async fn find<R: KeyedRow>(
    client: &Client,
    keys: &[(&str, &str)],
) -> Result<Vec<R>, StoreError> {
    let mut found = Vec::new();
    for chunk in keys.chunks(FIND_PER_QUERY) {
        // Both columns are the sorting key, the same in every version of a row, so the
        // filter cannot prefer an older version over the newest one.
        let mut accounts: Vec<String> = chunk.iter().map(|(a, _)| quote(a)).collect();
        accounts.sort();
        accounts.dedup();
        let ids: Vec<String> = chunk.iter().map(|(_, id)| quote(id)).collect();
        let sql = format!(
            "SELECT ?fields FROM {} FINAL WHERE account IN ({}) AND {} IN ({})",
            R::TABLE,
            accounts.join(", "),
            R::ID_COLUMN,
            ids.join(", ")
        );
        let rows: Vec<R> = client.query(&sql).fetch_all().await?;
        found.extend(rows.into_iter().filter(|r| chunk.contains(&r.key())));
    }
    Ok(found)
}
