//! The read API under `/v1`: each body is the JSON of the report's typed model, byte for
//! byte what `tally ... --json` prints; reports, the ledger and the other tables also as
//! CSV (`Accept: text/csv` or `?format=csv`). Bad parameters get 400 naming the parameter.

use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Serialize;
use serde_json::json;

use super::Shared;
use crate::config::keys::Scope;
use crate::report::{self, ReportError, Tabular};
use crate::store::reads::By;

/// An error answer: status and a JSON body naming the problem (and the parameter).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required: Authorization: Bearer TOKEN")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("`{param}`: {problem}")]
    BadParameter { param: String, problem: String },
    #[error("no such resource")]
    NotFound,
    #[error("{0}")]
    Unavailable(String),
    /// 504: an answer did not come in time; the request may be sent again.
    #[error("{0}")]
    Timeout(String),
    /// 429: this key's rate limit; `Retry-After` says when to come back.
    #[error("this key's rate limit is reached; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
}

impl ApiError {
    pub fn bad(param: &str, problem: impl Into<String>) -> ApiError {
        ApiError::BadParameter {
            param: param.to_string(),
            problem: problem.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut body = json!({"error": self.to_string()});
        if let ApiError::BadParameter { param, .. } = &self {
            body["parameter"] = json!(param);
        }
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

/// A report error as an answer; store errors are logged and counted, and never echoed:
/// ClickHouse's text names tables, queries and hosts, none of the caller's business.
pub(super) fn report_error(state: &Shared, e: ReportError) -> ApiError {
    match e {
        ReportError::BadParameter { param, problem } => ApiError::bad(param, problem),
        other => {
            state.metrics.clickhouse_errors.inc();
            tracing::error!(error = %other, "read failed");
            ApiError::Unavailable(STORE_UNAVAILABLE.into())
        }
    }
}

/// What a caller learns when the store fails (the error itself is in the log).
pub(super) const STORE_UNAVAILABLE: &str = "the store is unavailable; try again shortly";

/// 400 naming `param` unless `value` is an id as the core's parser takes them: at most
/// 256 bytes, no control character, not blank.
pub fn valid_id(param: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::bad(param, "must not be empty"));
    }
    tally_core::event::check_name(value).map_err(|e| ApiError::bad(param, e.to_string()))
}

/// The caller, from its bearer token, within its key's rate limit.
pub struct Caller(pub Scope);

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        let (index, scope) = state.keys.find(token).ok_or(ApiError::Unauthorized)?;
        if let Err(wait) = state.limits.check(index) {
            // Whole seconds, rounded up: `Retry-After: 0` would invite a busy loop.
            let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(ApiError::RateLimited {
                retry_after_secs: retry_after_secs.max(1),
            });
        }
        Ok(Caller(scope))
    }
}

impl Caller {
    /// 403 unless this key may check, hold and release for `account`.
    pub fn may_act(&self, account: &str) -> Result<(), ApiError> {
        if self.0.can_act(account) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this key may not check, hold or release for account `{account}` \
                 (that needs a `service:{account}` or admin key)"
            )))
        }
    }

    /// 403 unless this key may read `account`.
    pub fn may_read(&self, account: &str) -> Result<(), ApiError> {
        if self.0.can_read(account) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this key may not read account `{account}`"
            )))
        }
    }
}

/// The query string's parameters, in order; unknown names are refused.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<String>, known: &[&str]) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.as_deref().unwrap_or_default())
                .map_err(|e| ApiError::bad("query", e.to_string()))?;
        for (name, _) in &pairs {
            if !known.contains(&name.as_str()) && name != "format" {
                return Err(ApiError::bad(
                    name,
                    format!("unknown parameter; known: {}", known.join(", ")),
                ));
            }
        }
        Ok(Params(pairs))
    }

    /// The `cursor` parameter, decoded by `decode`: only a cursor this API gave out.
    fn cursor<T>(&self, decode: impl Fn(&str) -> Option<T>) -> Result<Option<T>, ApiError> {
        self.one("cursor")?
            .map(|c| {
                decode(c).ok_or_else(|| ApiError::bad("cursor", "not a cursor this API gave out"))
            })
            .transpose()
    }

    fn one(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(n, _)| n == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(ApiError::bad(name, "given more than once"));
        }
        Ok(first)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// An optional id parameter (e.g. `account`), checked as the core checks ids.
    fn id(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let value = self.one(name)?;
        if let Some(v) = value {
            valid_id(name, v)?;
        }
        Ok(value)
    }

    fn date(&self, name: &str) -> Result<Option<NaiveDate>, ApiError> {
        self.one(name)?
            .map(|v| {
                NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                    ApiError::bad(name, format!("`{v}` is not a date like 2026-11-20"))
                })
            })
            .transpose()
    }

    /// A time between 1970 and 9999 as written (what the document's pattern says), then
    /// held within those years in UTC: `1970-01-01T00:00:00+09:00` is the epoch for the
    /// store, not a refusal the document could not have told the caller about.
    fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.one(name)?
            .map(|v| {
                let bad =
                    || ApiError::bad(name, format!("`{v}` is neither RFC 3339 nor YYYY-MM-DD"));
                let written = match DateTime::parse_from_rfc3339(v) {
                    Ok(at) => at.date_naive(),
                    Err(_) => NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| bad())?,
                };
                check_day(name, written)?;
                let at = parse_time(v).ok_or_else(bad)?;
                let last = NaiveDate::from_ymd_opt(9999, 12, 31)
                    .and_then(|d| d.and_hms_opt(23, 59, 59))
                    .map_or(DateTime::<Utc>::MAX_UTC, |d| d.and_utc());
                Ok(at.clamp(DateTime::UNIX_EPOCH, last))
            })
            .transpose()
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.one(name)? {
            // Exactly what the OpenAPI document says (a boolean): a client that sends
            // `1` or nothing learns it at once instead of by a guess.
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(ApiError::bad(
                name,
                format!("`{other}` is not true or false"),
            )),
        }
    }

    fn csv(&self, headers: &HeaderMap) -> Result<bool, ApiError> {
        match self.one("format")? {
            Some("csv") => return Ok(true),
            Some("json") => return Ok(false),
            Some(other) => {
                return Err(ApiError::bad(
                    "format",
                    format!("`{other}` is not json or csv"),
                ))
            }
            None => {}
        }
        Ok(headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/csv")))
    }
}

/// RFC 3339, or a day (midnight UTC), as the CLI takes them.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
}

/// The model as JSON (what `--json` prints) or CSV.
fn respond<T: Serialize + Tabular>(model: &T, csv: bool) -> Result<Response, ApiError> {
    if csv {
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            model.csv(),
        )
            .into_response());
    }
    let body = report::to_json(model).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /v1/whoami`: the caller's scope, for the dashboard.
pub async fn whoami(caller: Caller) -> Response {
    match caller.0 {
        Scope::Admin => Json(json!({"scope": "admin"})),
        Scope::Ingest => Json(json!({"scope": "ingest"})),
        Scope::Account(account) => Json(json!({"scope": "account", "account": account})),
        Scope::Service(account) => Json(json!({"scope": "service", "account": account})),
    }
    .into_response()
}

/// `GET /v1/accounts?limit&cursor`: the accounts this key may read, one page in id order;
/// the next page's cursor is in `x-next-cursor` and `link` (`rel="next"`), as the ledger's.
pub async fn accounts(
    State(state): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["limit", "cursor"])?;
    let limit = page_limit(&params, state.config.serve.page_size)?;
    let cursor = params.cursor(report::accounts::AccountCursor::decode)?;
    let (page, next) = match &caller.0 {
        Scope::Account(own) => (report::accounts::own(own, cursor.as_ref()), None),
        Scope::Ingest | Scope::Service(_) => (report::accounts::Accounts::default(), None),
        Scope::Admin => report::accounts::page(&state.client, cursor.as_ref(), limit)
            .await
            .map_err(|e| report_error(&state, e))?,
    };
    let mut response = respond(&page, params.csv(&headers)?)?;
    if let Some(next) = next {
        let cursor = next.encode();
        let link = format!("</v1/accounts?limit={limit}&cursor={cursor}>; rel=\"next\"");
        next_page_headers(&mut response, cursor, link);
    }
    Ok(response)
}

/// `limit` of a paged read: 1 to `max` (`serve.page_size`), `max` when absent.
fn page_limit(params: &Params, max: u64) -> Result<u64, ApiError> {
    match params.one("limit")? {
        None => Ok(max),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::bad("limit", format!("must be a number from 1 to {max}"))),
    }
}

/// The next page's cursor, in `x-next-cursor` and in a `link` header (`rel="next"`).
fn next_page_headers(response: &mut Response, cursor: String, mut link: String) {
    link.retain(|c| c != '\n');
    for (name, value) in [("x-next-cursor", cursor), ("link", link)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
}

/// `GET /v1/accounts/{account}/balance?at=`
pub async fn balance(
    State(state): State<Shared>,
    caller: Caller,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    valid_id("account", &account)?;
    caller.may_read(&account)?;
    let params = Params::parse(query, &["at"])?;
    let at = params.time("at")?.unwrap_or_else(Utc::now);
    let model = report::balance::load(
        &state.client,
        &state.rules,
        &state.config.offers,
        &account,
        at,
    )
    .await
    .map_err(|e| report_error(&state, e))?;
    respond(&model, params.csv(&headers)?)
}

/// `GET /v1/accounts/{account}/ledger?from&to&limit&cursor`: one page; the next page's
/// cursor is in `x-next-cursor` and `link` (`rel="next"`).
pub async fn ledger(
    State(state): State<Shared>,
    caller: Caller,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    valid_id("account", &account)?;
    caller.may_read(&account)?;
    let params = Params::parse(query, &["from", "to", "limit", "cursor"])?;
    let from = params.time("from")?.unwrap_or(DateTime::UNIX_EPOCH);
    let to = params
        .time("to")?
        .unwrap_or_else(|| Utc::now() + TimeDelta::days(1));
    if to <= from {
        return Err(ApiError::bad("to", "must be after `from`"));
    }
    let limit = page_limit(&params, state.config.serve.page_size)?;
    let cursor = params.cursor(report::ledger::Cursor::decode)?;
    let (page, next) =
        report::ledger::page(&state.client, &account, from, to, cursor.as_ref(), limit)
            .await
            .map_err(|e| report_error(&state, e))?;
    let mut response = respond(&page, params.csv(&headers)?)?;
    if let Some(next) = next {
        let cursor = next.encode();
        let link = format!(
            "</v1/accounts/{}/ledger?from={}&to={}&limit={limit}&cursor={cursor}>; rel=\"next\"",
            urlencode(&account),
            urlencode(&from.to_rfc3339()),
            urlencode(&to.to_rfc3339()),
        );
        next_page_headers(&mut response, cursor, link);
    }
    Ok(response)
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("", text)])
        .map(|s| s.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

/// `GET /v1/accounts/{account}/history?purchases=true`
pub async fn history(
    State(state): State<Shared>,
    caller: Caller,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    valid_id("account", &account)?;
    caller.may_read(&account)?;
    let params = Params::parse(query, &["purchases"])?;
    let purchases = params.flag("purchases")?;
    let model = report::history::load(&state.client, &account, purchases)
        .await
        .map_err(|e| report_error(&state, e))?;
    respond(&model, params.csv(&headers)?)
}

/// `GET /v1/accounts/{account}/alerts`
pub async fn alerts(
    State(state): State<Shared>,
    caller: Caller,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    valid_id("account", &account)?;
    caller.may_read(&account)?;
    let params = Params::parse(query, &[])?;
    let mut model = report::alerts::load(&state.client, &account)
        .await
        .map_err(|e| report_error(&state, e))?;
    if caller.0 != Scope::Admin {
        // The SMTP server's text can name hosts, relays and addresses of other accounts:
        // operators read it (admin keys, `tally alerts`), account keys get the fact.
        for alert in &mut model.alerts {
            if !alert.error.is_empty() {
                alert.error = "the email could not be delivered".into();
            }
        }
    }
    respond(&model, params.csv(&headers)?)
}

/// The account a report covers: an account key reads only its own.
fn report_account(caller: &Caller, asked: Option<&str>) -> Result<Option<String>, ApiError> {
    match (&caller.0, asked) {
        (Scope::Admin, asked) => Ok(asked.map(str::to_string)),
        (Scope::Account(own), None) => Ok(Some(own.clone())),
        (Scope::Account(_), Some(asked)) => {
            caller.may_read(asked)?;
            Ok(Some(asked.to_string()))
        }
        (Scope::Ingest | Scope::Service(_), _) => {
            Err(ApiError::Forbidden("this key may not read reports".into()))
        }
    }
}

/// 400 naming `name` unless `day` is between 1970-01-01 and 9999-12-31: the days tally
/// stores (ClickHouse's DateTime starts in 1970) and can step a day or a month past.
fn check_day(name: &str, day: NaiveDate) -> Result<(), ApiError> {
    let first = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN);
    let last = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or(NaiveDate::MAX);
    if day < first || day > last {
        return Err(ApiError::bad(
            name,
            "must be between 1970-01-01 and 9999-12-31",
        ));
    }
    Ok(())
}

/// Days every report takes: no later than 9999-12-31 (what ClickHouse and the CLI can
/// read; later ones overflow date arithmetic), `to` not before `from`, at most ten years.
fn check_range(from: NaiveDate, to: NaiveDate) -> Result<(), ApiError> {
    check_day("from", from)?;
    check_day("to", to)?;
    if to < from {
        return Err(ApiError::bad("to", "must not be before `from`"));
    }
    if (to - from).num_days() > 3660 {
        return Err(ApiError::bad("to", "at most ten years after `from`"));
    }
    Ok(())
}

/// `GET /v1/reports/daily?from&to&by&account`
pub async fn daily(
    State(state): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["from", "to", "by", "account"])?;
    let from = params
        .date("from")?
        .ok_or_else(|| ApiError::bad("from", "required (YYYY-MM-DD)"))?;
    let to = params
        .date("to")?
        .ok_or_else(|| ApiError::bad("to", "required (YYYY-MM-DD)"))?;
    check_range(from, to)?;
    let mut by = Vec::new();
    for name in params.all("by") {
        let b = match name {
            "service" => By::Service,
            "user" => By::User,
            "feature" => By::Feature,
            other => {
                return Err(ApiError::bad(
                    "by",
                    format!("`{other}` is not service, user or feature"),
                ))
            }
        };
        if !by.contains(&b) {
            by.push(b);
        }
    }
    let account = report_account(&caller, params.id("account")?)?;
    let model = report::daily::load(&state.client, from, to, account.as_deref(), &by)
        .await
        .map_err(|e| report_error(&state, e))?;
    respond(&model, params.csv(&headers)?)
}

/// `GET /v1/reports/monthly?month=YYYY-MM` or `?from&to` (inclusive days), `&account`.
pub async fn monthly(
    State(state): State<Shared>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["month", "from", "to", "account"])?;
    let month = params
        .one("month")?
        .map(|m| {
            NaiveDate::parse_from_str(&format!("{m}-01"), "%Y-%m-%d")
                .map_err(|_| ApiError::bad("month", format!("`{m}` is not a month like 2026-11")))
        })
        .transpose()?;
    let (from, to) = match (month, params.date("from")?, params.date("to")?) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ApiError::bad(
                "month",
                "give `month` or `from` and `to`, not both",
            ))
        }
        (Some(first), None, None) => {
            check_day("month", first)?;
            let next = first
                .checked_add_months(chrono::Months::new(1))
                .ok_or_else(|| ApiError::bad("month", "out of range"))?;
            (first, next)
        }
        (None, Some(from), Some(to)) => {
            check_range(from, to)?;
            // `to` is inclusive; the day after it exists for any range check_range passed.
            let end = to
                .succ_opt()
                .ok_or_else(|| ApiError::bad("to", "out of range"))?;
            (from, end)
        }
        (None, Some(_), None) => return Err(ApiError::bad("to", "required with `from`")),
        (None, None, Some(_)) => return Err(ApiError::bad("from", "required with `to`")),
        (None, None, None) => {
            return Err(ApiError::bad("month", "give `month` or `from` and `to`"))
        }
    };
    let account = report_account(&caller, params.id("account")?)?;
    let model = report::monthly::load(&state.client, from, to, account.as_deref())
        .await
        .map_err(|e| report_error(&state, e))?;
    respond(&model, params.csv(&headers)?)
}

/// `GET /v1/matrix`: the cost matrix, every version.
pub async fn matrix(
    State(state): State<Shared>,
    _caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &[])?;
    respond(
        &report::catalog::Matrix::of(&state.rules),
        params.csv(&headers)?,
    )
}

/// `GET /v1/plans`: the plans in config.
pub async fn plans(
    State(state): State<Shared>,
    _caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &[])?;
    respond(
        &report::catalog::Plans::of(&state.rules),
        params.csv(&headers)?,
    )
}

/// `GET /v1/openapi.json`: the API's OpenAPI 3 document.
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}
