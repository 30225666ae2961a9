//! The owner's internal API, for `tally serve` (behind the shared token `status.token`
//! when one is set; it must be unless the endpoint listens on loopback):
//! `POST /internal/check` and `GET /internal/answers/{partition}/{offset}`, the owner's
//! answers to checks and holds. Here the owner's typed answers become HTTP statuses.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::holds::owner::{Asking, CheckError, Owner, Wait};
use crate::holds::{AnswerKind, CheckRequest};

/// The longest one wait for a hold's decision lasts; the caller asks again after it.
pub const MAX_ANSWER_WAIT: Duration = Duration::from_secs(4);

/// What the internal routes read.
#[derive(Clone)]
pub struct Internal {
    pub owner: Arc<Owner>,
    /// The bearer token every request must carry (`status.token`); `None`: none needed
    /// (only allowed on loopback, see the config's checks).
    pub token: Option<Arc<str>>,
}

/// The internal routes, each behind the token.
pub fn routes<S>(internal: Internal) -> Router<S> {
    Router::new()
        .route("/internal/check", post(internal_check))
        .route(
            "/internal/answers/{partition}/{offset}",
            get(internal_answer),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            internal.clone(),
            require_token,
        ))
        .with_state(internal)
}

/// 401 unless the request carries the token (when there is one), compared in
/// constant time.
async fn require_token(State(internal): State<Internal>, request: Request, next: Next) -> Response {
    if let Some(token) = &internal.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let same = given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return json_answer(
                401,
                serde_json::json!({"error": "the internal routes need the shared token (status.token)"}),
            );
        }
    }
    next.run(request).await
}

#[derive(Deserialize)]
struct PartitionQuery {
    partition: i32,
}

fn json_answer(status: u16, body: serde_json::Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

/// `POST /internal/check?partition=P` with a [`CheckRequest`]: the check from the
/// partition's state as applied so far; 421 when this process does not own it.
async fn internal_check(
    State(internal): State<Internal>,
    Query(query): Query<PartitionQuery>,
    body: Bytes,
) -> Response {
    let request: CheckRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return json_answer(400, serde_json::json!({"error": e.to_string()})),
    };
    // A published account is answered here, on the async worker: reading its state takes
    // microseconds. Only the first check of an account waits for the run loop to publish
    // it (up to two seconds), and that wait runs off the async workers.
    let checked = match internal
        .owner
        .check(query.partition, &request, Asking::Never)
    {
        Err(CheckError::NotPublished) => {
            let owner = internal.owner.clone();
            tokio::task::spawn_blocking(move || {
                owner.check(query.partition, &request, Asking::Wait)
            })
            .await
        }
        answered => Ok(answered),
    };
    match checked {
        Ok(Ok(answer)) => (StatusCode::OK, Json(answer)).into_response(),
        Ok(Err(e @ CheckError::NotOwner(_))) => {
            json_answer(421, serde_json::json!({"error": e.to_string()}))
        }
        Ok(Err(CheckError::Rejected(rejection))) => json_answer(
            400,
            serde_json::json!({"error": rejection.to_string(), "code": rejection.code()}),
        ),
        Ok(Err(e @ (CheckError::Starting | CheckError::NotPublished))) => {
            json_answer(503, serde_json::json!({"error": e.to_string()}))
        }
        Err(e) => json_answer(500, serde_json::json!({"error": e.to_string()})),
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait_ms: u64,
}

/// `GET /internal/answers/{partition}/{offset}?wait_ms=N`: the committed decision on that
/// commands record, waiting up to N ms (at most [`MAX_ANSWER_WAIT`]). 421: not the owner;
/// 410: committed without a decision here (send the command again); 202: not yet.
async fn internal_answer(
    State(internal): State<Internal>,
    Path((partition, offset)): Path<(i32, i64)>,
    Query(query): Query<WaitQuery>,
) -> Response {
    let wait = Duration::from_millis(query.wait_ms).min(MAX_ANSWER_WAIT);
    match internal.owner.wait(partition, offset, wait).await {
        Wait::Answered(kind, body) => (
            answer_status(kind),
            [(header::CONTENT_TYPE, "application/json")],
            body.to_vec(),
        )
            .into_response(),
        Wait::NotOwner => json_answer(
            421,
            serde_json::json!({"error": format!("partition {partition} is not owned by this process")}),
        ),
        Wait::Gone => json_answer(
            410,
            serde_json::json!({"error": "committed without a decision here; send the command again"}),
        ),
        Wait::Pending => json_answer(202, serde_json::json!({"error": "not decided yet"})),
    }
}

/// The status of each of the owner's answers, on `/internal/answers` and, passed through
/// by `tally serve`, on `/v1/holds` (its OpenAPI lists them).
pub fn answer_status(kind: AnswerKind) -> StatusCode {
    match kind {
        AnswerKind::Held => StatusCode::CREATED,
        AnswerKind::Refused => StatusCode::PAYMENT_REQUIRED,
        AnswerKind::Released => StatusCode::OK,
        AnswerKind::Rejected => StatusCode::CONFLICT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each answer has a status the public API declares for the route that gives it.
    #[test]
    fn answers_have_the_statuses_the_api_declares() {
        let api: serde_json::Value =
            serde_json::from_str(include_str!("../serve/openapi.json")).expect("valid JSON");
        let declared = |path: &str, method: &str, kind: AnswerKind| {
            let code = answer_status(kind).as_u16().to_string();
            api["paths"][path][method]["responses"].get(&code).is_some()
        };
        for kind in [AnswerKind::Held, AnswerKind::Refused, AnswerKind::Rejected] {
            assert!(declared("/v1/holds", "post", kind), "{kind:?}");
        }
        for kind in [AnswerKind::Released, AnswerKind::Rejected] {
            assert!(declared("/v1/holds/{id}", "delete", kind), "{kind:?}");
        }
        // `tally serve` reads 202 (pending), 410 (gone) and 421 (not the owner) as no answer.
        for kind in [
            AnswerKind::Held,
            AnswerKind::Refused,
            AnswerKind::Released,
            AnswerKind::Rejected,
        ] {
            let code = answer_status(kind).as_u16();
            assert!(![202, 410, 421].contains(&code), "{kind:?}: {code}");
        }
    }
}
