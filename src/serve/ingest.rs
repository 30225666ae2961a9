//! `POST /v1/events`: one CloudEvent (`application/cloudevents+json`) or a batch
//! (`application/cloudevents-batch+json`). Each is checked with the core's own parser, its
//! time limits and the cost matrix; the valid ones are produced keyed by account to their
//! topic (usage to the usage topic, everything else to the commands topic, as `tally send`
//! does), and the answer comes only once the broker acknowledged them. Invalid ones are
//! answered with their reason and not produced.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tally_core::event::{self, Body, Rejection};
use tally_core::Rules;

use super::api::{ApiError, Caller};
use super::Shared;
use crate::kafka;

/// An event that passed the checks: where it goes.
struct Valid<'a> {
    index: usize,
    id: String,
    account: String,
    usage: bool,
    payload: &'a [u8],
}

/// Checks one event as `tally run` would, short of applying it: the envelope and data,
/// the time limits, and (for usage) that the matrix prices it.
pub fn check(
    payload: &[u8],
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<(String, String, bool), Rejection> {
    let event = event::parse(payload, now)?;
    if event.time > now + rules.max_future_skew {
        return Err(Rejection::InFuture {
            time: event.time,
            skew_secs: rules.max_future_skew.num_seconds(),
        });
    }
    if event.time < now - rules.max_lateness {
        return Err(Rejection::TooLate {
            time: event.time,
            lateness_secs: rules.max_lateness.num_seconds(),
        });
    }
    let usage = match &event.body {
        Body::Usage(u) => {
            rules
                .matrix
                .price(&u.feature, u.variant.as_deref(), u.quantity, event.time)?;
            true
        }
        Body::Tick => {
            return Err(Rejection::UnknownType(format!(
                "{} (clock ticks are sent by tally itself)",
                event::TICK
            )))
        }
        _ => false,
    };
    Ok((event.id, event.account, usage))
}

pub async fn post_events(
    State(state): State<Shared>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !caller.0.can_ingest() {
        return Err(ApiError::Forbidden(
            "ingest needs an `ingest` or admin key".into(),
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let payloads: Vec<&[u8]> = match content_type.as_str() {
        "application/cloudevents-batch+json" => {
            let batch: Vec<&RawValue> = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad("body", format!("not a JSON array of events: {e}")))?;
            batch.iter().map(|raw| raw.get().as_bytes()).collect()
        }
        "application/cloudevents+json" | "application/json" => vec![&body[..]],
        other => {
            return Ok((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(json!({"error": format!(
                    "content type `{other}`: use application/cloudevents+json or application/cloudevents-batch+json"
                )})),
            )
                .into_response())
        }
    };
    let max = state.config.serve.max_batch;
    if payloads.len() > max {
        return Ok((
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(
                json!({"error": format!("{} events in one batch; at most {max}", payloads.len())}),
            ),
        )
            .into_response());
    }
    if payloads.is_empty() {
        return Err(ApiError::bad("body", "an empty batch"));
    }
    let now = Utc::now();
    let mut results: Vec<Value> = vec![Value::Null; payloads.len()];
    let mut valid = Vec::new();
    for (index, payload) in payloads.iter().enumerate() {
        match check(payload, &state.rules, now) {
            Ok((id, account, usage)) => valid.push(Valid {
                index,
                id,
                account,
                usage,
                payload,
            }),
            Err(rejection) => {
                state
                    .metrics
                    .rejected
                    .with_label_values(&[rejection.code()])
                    .inc();
                let id = serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .filter(Value::is_string)
                    .unwrap_or(Value::Null);
                results[index] = json!({"index": index, "id": id, "status": "rejected",
                    "code": rejection.code(), "reason": rejection.to_string()});
            }
        }
    }
    let k = &state.config.kafka;
    let (producer, timeout) = (&state.producer, state.config.serve.ingest_timeout);
    let sends = valid.iter().map(|v| {
        let topic = if v.usage {
            &k.usage_topic
        } else {
            &k.commands_topic
        };
        async move {
            let sent = tokio::time::timeout(
                timeout,
                kafka::send(producer, topic, Some(&v.account), v.payload, None),
            )
            .await;
            (v, topic, sent)
        }
    });
    let (mut accepted, mut failed) = (0usize, 0usize);
    for (v, topic, sent) in futures::future::join_all(sends).await {
        results[v.index] = match sent {
            Ok(Ok((partition, offset))) => {
                accepted += 1;
                state.metrics.ingested.with_label_values(&[topic]).inc();
                json!({"index": v.index, "id": v.id, "status": "accepted", "topic": topic,
                       "partition": partition, "offset": offset})
            }
            Ok(Err(e)) => {
                failed += 1;
                tracing::error!(error = %e, "ingest: the broker did not take an event");
                json!({"index": v.index, "id": v.id, "status": "failed",
                       "reason": "the broker did not take it; sending again is safe (duplicates are charged once)"})
            }
            Err(_) => {
                failed += 1;
                json!({"index": v.index, "id": v.id, "status": "failed",
                       "reason": "the broker did not acknowledge in time; sending again is safe (duplicates are charged once)"})
            }
        };
    }
    let rejected = payloads.len() - valid.len();
    let status = if failed > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if rejected == 0 {
        StatusCode::OK
    } else if accepted == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((
        status,
        Json(json!({"accepted": accepted, "rejected": rejected, "failed": failed, "results": results})),
    )
        .into_response())
}
