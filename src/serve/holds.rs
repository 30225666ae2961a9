//! `POST /v1/check`, `POST /v1/holds` and `DELETE /v1/holds/{id}`: routed to the owner of
//! the account's partition. The partition is the producers' (`holds::partition_of`), the
//! owner is the latest claim row of that partition (its `advertise` address). A check is
//! answered by the owner from its state as applied so far. A hold or release is produced to
//! the commands topic keyed by the account, and the answer is the owner's decision on that
//! very record, handed out once the flush that contains it has committed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::json;
use tally_core::Credits;

use super::api::{valid_id, ApiError, Caller};
use super::Shared;
use crate::holds::{partition_of, CheckRequest, ClaimInfo};
use crate::kafka;
use crate::store::checkpoint;

/// Longest a check waits for the owner (connect, send, answer).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a connection to an owner may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Claim rows are read again at most this often when an owner is missing or moved.
const OWNERS_REFRESH: Duration = Duration::from_millis(100);
/// Pause before asking again when the owner is unreachable or not the owner any more.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How often a hold request is produced again when its record got no decision (a
/// duplicate, or a checkpoint that moved past it on a new owner).
const MAX_SENDS: u32 = 3;
/// Checks tried on successive owners before answering 503.
const CHECK_ATTEMPTS: u32 = 3;

type Client = HyperClient<HttpConnector, Full<Bytes>>;

/// Where each partition's owner answers, from the claim rows, and the partition count.
pub struct Owners {
    client: Client,
    cache: tokio::sync::Mutex<Cache>,
    /// `Authorization` for the owners' `/internal` routes (`status.token`), if set.
    token: Option<header::HeaderValue>,
}

#[derive(Default)]
struct Cache {
    partitions: Option<i32>,
    owners: HashMap<i32, String>,
    loaded: Option<Instant>,
}

impl Owners {
    /// `token`: the shared token of the `/internal` routes (`status.token`), sent with
    /// every call to an owner; `None` when the owners listen on loopback without one.
    pub fn new(token: Option<&str>) -> Owners {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(20))
            .build(http);
        let token = token.and_then(|t| {
            let mut value = header::HeaderValue::from_str(&format!("Bearer {t}")).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Owners {
            client,
            cache: tokio::sync::Mutex::new(Cache::default()),
            token,
        }
    }

    /// The partition of `account` in the commands topic.
    async fn partition(&self, state: &Shared, account: &str) -> Result<i32, ApiError> {
        let mut cache = self.cache.lock().await;
        if let Some(count) = cache.partitions {
            return Ok(partition_of(account, count, state.config.kafka.partitioner));
        }
        let producer = state.producer.clone();
        let topic = state.config.kafka.commands_topic.clone();
        let count = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .map_err(|e| format!("Kafka: {e}"))?;
            metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map(|t| t.partitions().len() as i32)
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("topic `{topic}` has no partitions"))
        })
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot read the partition count");
            ApiError::Unavailable("the broker is unavailable; try again shortly".into())
        })?;
        cache.partitions = Some(count);
        Ok(partition_of(account, count, state.config.kafka.partitioner))
    }

    /// The owner's address of `partition`; `fresh` reads the claim rows again first (at
    /// most every [`OWNERS_REFRESH`]).
    async fn owner(&self, state: &Shared, partition: i32, fresh: bool) -> Result<String, ApiError> {
        let mut cache = self.cache.lock().await;
        let stale = cache.loaded.is_none_or(|at| {
            (fresh || !cache.owners.contains_key(&partition)) && at.elapsed() >= OWNERS_REFRESH
        });
        if stale {
            let stream = state.config.kafka.stream_name();
            let rows = checkpoint::owners(&state.client, &stream)
                .await
                .map_err(|e| {
                    state.metrics.clickhouse_errors.inc();
                    tracing::error!(error = %e, "cannot read the partitions' owners");
                    ApiError::Unavailable(super::api::STORE_UNAVAILABLE.into())
                })?;
            cache.owners = rows
                .into_iter()
                .filter_map(|(partition, info)| {
                    let info: ClaimInfo = serde_json::from_str(&info).ok()?;
                    (!info.advertise.is_empty()).then_some((partition as i32, info.advertise))
                })
                .collect();
            cache.loaded = Some(Instant::now());
        }
        cache.owners.get(&partition).cloned().ok_or_else(|| {
            ApiError::Unavailable(format!(
                "partition {partition} has no owner that answers checks and holds yet \
                 (a `tally run` with a status endpoint); retry"
            ))
        })
    }

    /// One request to an owner: (status, body), within `timeout`.
    async fn call(
        &self,
        method: Method,
        url: String,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        if let Some(token) = &self.token {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, token.clone());
        }
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
    }
}

/// A request body as `T`; 400 naming the field when it does not fit.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        ApiError::bad(&param, e.into_inner().to_string())
    })
}

/// What a check and a hold both ask of the call they name before it goes to the owner: an
/// account within the key's scope and a call the matrix prices now. Gives the quantity.
fn call_terms(
    state: &Shared,
    caller: &Caller,
    account: &str,
    feature: &str,
    variant: Option<&str>,
    quantity: Option<Credits>,
) -> Result<Credits, ApiError> {
    valid_id("account", account)?;
    caller.may_act(account)?;
    valid_id("feature", feature)?;
    if let Some(variant) = variant {
        valid_id("variant", variant)?;
    }
    let quantity = quantity.unwrap_or(Credits::from_whole(1));
    priced(state, feature, variant, quantity)?;
    Ok(quantity)
}

/// 400 unless the matrix prices the call now.
fn priced(
    state: &Shared,
    feature: &str,
    variant: Option<&str>,
    quantity: Credits,
) -> Result<(), ApiError> {
    if quantity.is_negative() {
        return Err(ApiError::bad("quantity", "must not be negative"));
    }
    state
        .rules
        .matrix
        .price(feature, variant, quantity, Utc::now())
        .map(|_| ())
        .map_err(|e| {
            let param = if variant.is_some() && e.to_string().contains("variant") {
                "variant"
            } else {
                "feature"
            };
            ApiError::bad(param, e.to_string())
        })
}

/// The owner's answer, passed through as it is.
fn passthrough(status: u16, body: Bytes) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// `POST /v1/check`: `{account, feature, variant?, quantity?}`.
pub async fn check(
    State(state): State<Shared>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CheckRequest = parse_body(&body)?;
    call_terms(
        &state,
        &caller,
        &request.account,
        &request.feature,
        request.variant.as_deref(),
        request.quantity,
    )?;
    let owners = &state.owners;
    let partition = owners.partition(&state, &request.account).await?;
    let body = serde_json::to_vec(&request).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let mut last = String::new();
    let retried = |reason: &str| {
        state
            .metrics
            .owner_retries
            .with_label_values(&[reason])
            .inc()
    };
    for attempt in 0..CHECK_ATTEMPTS {
        let owner = match owners.owner(&state, partition, attempt > 0).await {
            Ok(owner) => owner,
            Err(e) => {
                retried("no_owner");
                return Err(e);
            }
        };
        let url = format!("http://{owner}/internal/check?partition={partition}");
        match owners
            .call(Method::POST, url, body.clone(), CHECK_TIMEOUT)
            .await
        {
            Ok((421, _)) => {
                retried("not_owner");
                last = format!("{owner} does not own partition {partition} any more")
            }
            Ok((status @ (200 | 400), body)) => return Ok(passthrough(status, body)),
            Ok((status, body)) => {
                retried("unreachable");
                last = format!("{owner}: {status} {}", String::from_utf8_lossy(&body))
            }
            Err(e) => {
                retried("unreachable");
                last = e
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    tracing::warn!(partition, problem = %last, "check: no owner answered");
    Err(ApiError::Unavailable(format!(
        "the owner of partition {partition} did not answer; try again shortly"
    )))
}

/// `POST /v1/holds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    id: String,
    account: String,
    feature: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    quantity: Option<Credits>,
    ttl: u32,
}

pub async fn hold(
    State(state): State<Shared>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: HoldBody = parse_body(&body)?;
    let quantity = call_terms(
        &state,
        &caller,
        &request.account,
        &request.feature,
        request.variant.as_deref(),
        request.quantity,
    )?;
    valid_id("id", &request.id)?;
    let max = tally_core::holds::MAX_HOLD_TTL_SECS;
    if request.ttl == 0 || request.ttl > max {
        return Err(ApiError::bad(
            "ttl",
            format!("must be between 1 and {max} seconds"),
        ));
    }
    let mut data = json!({"hold": request.id, "feature": request.feature,
                          "quantity": quantity, "ttl": request.ttl});
    if let Some(variant) = &request.variant {
        data["variant"] = json!(variant);
    }
    decide(&state, &request.account, "credit.hold", data).await
}

/// `DELETE /v1/holds/{id}?account=A[&reason=R]`.
pub async fn release(
    State(state): State<Shared>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default())
            .map_err(|e| ApiError::bad("query", e.to_string()))?;
    let mut account = None;
    let mut reason = None;
    for (name, value) in pairs {
        match name.as_str() {
            "account" => account = Some(value),
            "reason" => reason = Some(value),
            other => {
                return Err(ApiError::bad(
                    other,
                    "unknown parameter; known: account, reason",
                ))
            }
        }
    }
    let account = account.ok_or_else(|| ApiError::bad("account", "is required"))?;
    valid_id("account", &account)?;
    caller.may_act(&account)?;
    valid_id("id", &id)?;
    if let Some(reason) = &reason {
        tally_core::event::check_text(reason)
            .map_err(|e| ApiError::bad("reason", e.to_string()))?;
    }
    let mut data = json!({"hold": id});
    if let Some(reason) = reason {
        data["reason"] = json!(reason);
    }
    decide(&state, &account, "credit.release", data).await
}

/// Produces the command (a fresh event id each time) and waits for the owner's committed
/// decision on that record; produces again when the record got none.
async fn decide(
    state: &Shared,
    account: &str,
    kind: &str,
    data: serde_json::Value,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let timeout = state.config.serve.hold_timeout;
    let deadline = started + timeout;
    let owners = &state.owners;
    let retried = |reason: &str| {
        state
            .metrics
            .owner_retries
            .with_label_values(&[reason])
            .inc()
    };
    let phase_seconds = |phase: &str, took: Duration| {
        state
            .metrics
            .hold_phase_seconds
            .with_label_values(&[phase])
            .observe(took.as_secs_f64())
    };
    let timed_out = || {
        retried("timeout");
        ApiError::Timeout(format!(
            "no committed answer from the partition's owner within {timeout:?}; \
             sending the same request again (same id) is safe"
        ))
    };
    for _ in 0..MAX_SENDS {
        let event = json!({"specversion": "1.0", "type": kind,
            "id": uuid::Uuid::new_v4().to_string(), "source": "tally-serve",
            "subject": account, "time": Utc::now().to_rfc3339(), "data": data});
        let payload =
            serde_json::to_vec(&event).map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let producing = Instant::now();
        let remaining = deadline.saturating_duration_since(producing);
        let topic = &state.config.kafka.commands_topic;
        let sent = tokio::time::timeout(
            remaining,
            kafka::send(
                &state.commands_producer,
                topic,
                Some(account),
                &payload,
                None,
            ),
        )
        .await;
        let (partition, offset) = match sent {
            Ok(Ok(position)) => position,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "hold: the broker did not take the command");
                return Err(ApiError::Unavailable(
                    "the broker did not take the command; sending the same request again \
                     (same id) is safe"
                        .into(),
                ));
            }
            Err(_) => return Err(timed_out()),
        };
        let produced = Instant::now();
        phase_seconds("produce", produced.duration_since(producing));
        let mut fresh = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timed_out());
            }
            let owner = match owners.owner(state, partition, fresh).await {
                Ok(owner) => owner,
                Err(_) => {
                    retried("no_owner");
                    fresh = true;
                    tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
                    continue;
                }
            };
            let wait = remaining.min(crate::status::internal::MAX_ANSWER_WAIT);
            let url = format!(
                "http://{owner}/internal/answers/{partition}/{offset}?wait_ms={}",
                wait.as_millis()
            );
            match owners
                .call(Method::GET, url, Vec::new(), wait + Duration::from_secs(1))
                .await
            {
                Ok((status @ (200 | 201 | 402 | 409), body)) => {
                    phase_seconds("answer", produced.elapsed());
                    tracing::debug!(
                        partition,
                        offset,
                        status,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "hold answered"
                    );
                    return Ok(passthrough(status, body));
                }
                // Not decided yet: ask the same owner again.
                Ok((202, _)) => fresh = false,
                // Committed without a decision: produce again.
                Ok((410, _)) => {
                    retried("resent");
                    break;
                }
                Ok((status, body)) => {
                    retried(if status == 421 {
                        "not_owner"
                    } else {
                        "unreachable"
                    });
                    tracing::debug!(partition, owner = %owner, status, body = %String::from_utf8_lossy(&body), "hold: owner cannot answer, looking again");
                    fresh = true;
                    tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
                }
                Err(e) => {
                    retried("unreachable");
                    tracing::debug!(partition, owner = %owner, error = %e, "hold: owner unreachable, looking again");
                    fresh = true;
                    tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
                }
            }
        }
    }
    Err(timed_out())
}
