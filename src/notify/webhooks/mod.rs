//! Signed webhooks: the core decides notices (alerts and lifecycle events, `tally_core::hooks`);
//! this module turns each into one delivery per endpoint, signs it as the Standard
//! Webhooks specification says, and its worker records, rate-limits, sends and retries it.
//!
//! Secrets. A global endpoint's secret (`whsec_...`) comes from `webhooks.secrets` (the
//! environment or a file, never the config file). An account's endpoint has no secret in
//! any event or table: it is derived, HMAC-SHA256 of the account, the endpoint id and its
//! rotation under `webhooks.signing_key`, and shown to whoever holds that key
//! (`tally webhook-secret`), so a leaked Kafka topic or ClickHouse dump signs nothing.

pub mod client;
pub mod worker;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use ring::hmac;
use tally_core::hooks::{self, Notice, NoticeKind};

use crate::config::webhooks::WebhooksConfig;

pub use worker::{HookSender, WebhookWorker, WebhookWorkerHandle};

/// The signing secret of an account's endpoint: HMAC-SHA256 under the signing key of the
/// account, the endpoint id and its rotation, as `whsec_<base64>`.
pub fn account_secret(signing_key: &str, account: &str, endpoint: &str, rotation: u32) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, signing_key.as_bytes());
    // NUL cannot occur in account ids or endpoint ids, so the parts cannot run together.
    let input = format!("tally webhook secret v1\0{account}\0{endpoint}\0{rotation}");
    let tag = hmac::sign(&key, input.as_bytes());
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`: the `webhook-signature` header.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
    )
}

/// The `webhook-id` of a notice: the same for every endpoint and every attempt, derived
/// from the notice's stable id, so a receiver can drop what it already took.
pub fn webhook_id(notice_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, notice_id.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("msg_{hex}")
}

/// Where a delivery goes: an account's own endpoint or a global one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Account { id: String, rotation: u32 },
    Global { id: String },
}

impl Target {
    /// As stored: `account:ID` or `global:ID`.
    pub fn name(&self) -> String {
        match self {
            Target::Account { id, .. } => format!("account:{id}"),
            Target::Global { id } => format!("global:{id}"),
        }
    }

    pub fn parse(name: &str, rotation: u32) -> Option<Target> {
        match name.split_once(':')? {
            ("account", id) => Some(Target::Account {
                id: id.to_string(),
                rotation,
            }),
            ("global", id) => Some(Target::Global { id: id.to_string() }),
            _ => None,
        }
    }

    pub fn rotation(&self) -> u32 {
        match self {
            Target::Account { rotation, .. } => *rotation,
            Target::Global { .. } => 0,
        }
    }
}

/// One notice to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The `webhook-id` header, shared by the notice's deliveries to every endpoint.
    pub webhook_id: String,
    /// The core's id of the notice (e.g. the alert's id).
    pub notice_id: String,
    pub account: String,
    pub target: Target,
    pub url: String,
    pub event_type: String,
    /// The exact body, fixed when the notice is decided: every attempt sends these bytes.
    pub payload: String,
    pub time: DateTime<Utc>,
}

/// The body of a notice: `{"type", "timestamp", "data"}` as the specification suggests.
pub fn payload(n: &Notice) -> String {
    use serde_json::{json, Value};
    let mut data = json!({
        "id": n.id,
        "account": n.account,
        "pool": n.pool,
        "time": n.time.to_rfc3339_opts(SecondsFormat::Millis, true),
        "balance": n.balance,
    });
    let extra = match n.kind {
        NoticeKind::Alert(kind) => json!({"alert": kind.as_str(), "threshold": n.credits,
                                           "cycle_start": n.reference}),
        NoticeKind::Reset => json!({"credits": n.credits, "lot": n.reference}),
        NoticeKind::LotExpired => json!({"credits": n.credits, "lot": n.reference}),
        NoticeKind::HoldExpired => json!({"credits": n.credits, "hold": n.reference}),
        NoticeKind::ShortfallRecorded => json!({"credits": n.credits, "event": n.reference}),
        NoticeKind::TopUpRequested => json!({"credits": n.credits, "below": n.reference}),
    };
    if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
        d.extend(e);
    }
    json!({
        "type": n.kind.event_type(),
        "timestamp": n.time.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string()
}

/// The deliveries of `notice`: to each of the account's endpoints that takes it, and to
/// each global endpoint that does.
pub fn deliveries(notice: &Notice, config: &WebhooksConfig) -> Vec<Delivery> {
    let body = payload(notice);
    let id = webhook_id(&notice.id);
    let one = |target: Target, url: &str| Delivery {
        webhook_id: id.clone(),
        notice_id: notice.id.clone(),
        account: notice.account.clone(),
        target,
        url: url.to_string(),
        event_type: notice.kind.event_type().to_string(),
        payload: body.clone(),
        time: notice.time,
    };
    let mut out: Vec<Delivery> = notice
        .endpoints
        .iter()
        .map(|e| {
            one(
                Target::Account {
                    id: e.id.clone(),
                    rotation: e.rotation,
                },
                &e.url,
            )
        })
        .collect();
    for (id, e) in &config.endpoints {
        if hooks::wants(&e.events, notice.kind) {
            out.push(one(Target::Global { id: id.clone() }, &e.url));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::webhooks::decode_secret;

    /// The example of the Standard Webhooks specification's reference libraries: this
    /// secret, id, timestamp and body sign to this signature.
    #[test]
    fn signs_as_the_specification_example() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// README's signed example, signed by the `standardwebhooks` package (PyPI): tally's
    /// body and signature for the same notice are those bytes.
    #[test]
    fn the_readme_example_is_what_tally_sends() {
        let notice = Notice {
            id: "acme/ai/credit.top_up_requested/1".into(),
            account: "acme".into(),
            kind: NoticeKind::TopUpRequested,
            pool: "ai".into(),
            time: "2026-11-20T09:15:02Z".parse().expect("time"),
            credits: tally_core::Credits::from_whole(500),
            balance: tally_core::Credits::from_whole(45),
            reference: "50".into(),
            endpoints: Vec::new(),
        };
        let body = payload(&notice);
        assert_eq!(
            body,
            r#"{"data":{"account":"acme","balance":45,"below":"50","credits":500,"id":"acme/ai/credit.top_up_requested/1","pool":"ai","time":"2026-11-20T09:15:02.000Z"},"timestamp":"2026-11-20T09:15:02.000Z","type":"credit.top_up_requested"}"#
        );
        let id = webhook_id(&notice.id);
        assert_eq!(id, "msg_93573091a8d0def1932f6548e93b3fe1");
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        assert_eq!(
            sign(&key, &id, 1795684502, body.as_bytes()),
            "v1,Iup7xDD9ycxC+0Tai00bKLtVoOR6aNFOmLms+HTpmTA="
        );
    }

    #[test]
    fn account_secrets_differ_by_account_endpoint_and_rotation() {
        let key = "k".repeat(32);
        let a = account_secret(&key, "acme", "main", 0);
        assert!(decode_secret(&a).is_ok(), "{a}");
        assert_eq!(a, account_secret(&key, "acme", "main", 0));
        assert_ne!(a, account_secret(&key, "acme", "main", 1));
        assert_ne!(a, account_secret(&key, "acme", "other", 0));
        assert_ne!(a, account_secret(&key, "acme2", "main", 0));
        assert_ne!(a, account_secret(&"j".repeat(32), "acme", "main", 0));
    }

    #[test]
    fn webhook_ids_are_stable_and_header_safe() {
        let id = webhook_id("acme/ai/low_balance/1764547200");
        assert_eq!(id, webhook_id("acme/ai/low_balance/1764547200"));
        assert_ne!(id, webhook_id("acme/ai/low_balance/1764547201"));
        assert_eq!(id.len(), 36);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }
}
