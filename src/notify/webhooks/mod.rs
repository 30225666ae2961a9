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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use ring::hmac;
use serde::{Deserialize, Serialize};
use tally_core::hooks::{self, Notice, NoticeKind};

use crate::config::{ConfigError, Secret};

pub use worker::{HookSender, WebhookWorker, WebhookWorkerHandle};

/// `webhooks` in config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Endpoints that get every account's notices (a billing system, say), by id, each
    /// `{url, events}`; its secret is in `webhooks.secrets`.
    pub endpoints: BTreeMap<String, GlobalEndpoint>,
    /// Secrets of the global endpoints, `ID=whsec_...` separated by commas. Only from the
    /// environment (TALLY_WEBHOOKS__SECRETS) or `secrets_file`; never logged.
    pub secrets: Secret,
    /// Or: absolute path of a file of `ID=whsec_...` lines.
    pub secrets_file: PathBuf,
    /// The key accounts' endpoint secrets are derived from (at least 32 characters). Only
    /// from the environment (TALLY_WEBHOOKS__SIGNING_KEY) or `signing_key_file`. Empty:
    /// accounts' endpoints get nothing (their deliveries are recorded as failed).
    pub signing_key: Secret,
    /// Or: absolute path of a file holding the signing key.
    pub signing_key_file: PathBuf,
    /// Whether accounts' endpoints may be on loopback, private, link-local or other
    /// non-public addresses. Off (the default), such a delivery is refused, so an account
    /// cannot make tally call into its own network; global endpoints are the operator's
    /// and always allowed.
    pub allow_private_addresses: bool,
    /// Longest wait for connecting, and for each read and write of one delivery.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per delivery before it is recorded as failed.
    pub max_attempts: u32,
    /// Wait before the second attempt; it doubles after each failure.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Deliveries a second at most to one endpoint (URL); more wait their turn.
    pub per_endpoint_per_second: u32,
    /// Deliveries a second at most over all endpoints.
    pub global_per_second: u32,
    /// At start, deliveries a crashed process recorded but did not finish are sent if
    /// they were created within this window. 0 to send none.
    #[serde(with = "humantime_serde")]
    pub resend_within: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            endpoints: BTreeMap::new(),
            secrets: Secret::default(),
            secrets_file: PathBuf::new(),
            signing_key: Secret::default(),
            signing_key_file: PathBuf::new(),
            allow_private_addresses: false,
            timeout: Duration::from_secs(10),
            max_attempts: 10,
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            per_endpoint_per_second: 10,
            global_per_second: 100,
            resend_within: Duration::from_secs(3 * 86_400),
        }
    }
}

/// A global endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalEndpoint {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Event types it gets; empty: every type but `credit.reset`. A list, or one string
    /// of types separated by commas (for TALLY_WEBHOOKS__ENDPOINTS__ID__EVENTS).
    #[serde(default, deserialize_with = "list_or_commas")]
    pub events: Vec<String>,
}

fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(list) => list,
        Either::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

const MIN_SIGNING_KEY: usize = 32;

impl WebhooksConfig {
    /// Checks everything but the secrets (read later): ids, URLs, event types, limits.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: String, problem: String| ConfigError::Key {
            file: file.to_string(),
            key,
            problem,
        };
        for (id, e) in &self.endpoints {
            let key = format!("webhooks.endpoints.{id}");
            let as_account = tally_core::hooks::Endpoint {
                id: id.clone(),
                url: e.url.clone(),
                events: e.events.clone(),
                rotation: 0,
            };
            hooks::check(&hooks::HookSettings {
                webhooks: Some(std::slice::from_ref(&as_account)),
                ..Default::default()
            })
            .map_err(|problem| err(key.clone(), problem))?;
            url::Url::parse(&e.url).map_err(|e| err(format!("{key}.url"), e.to_string()))?;
        }
        for (key, value) in [
            ("webhooks.max_attempts", self.max_attempts),
            (
                "webhooks.per_endpoint_per_second",
                self.per_endpoint_per_second,
            ),
            ("webhooks.global_per_second", self.global_per_second),
        ] {
            if value == 0 {
                return Err(err(key.into(), "must be at least 1".into()));
            }
        }
        if self.timeout.is_zero() || self.initial_backoff.is_zero() {
            return Err(err(
                "webhooks.timeout".into(),
                "timeout and initial_backoff must be above zero".into(),
            ));
        }
        Ok(())
    }

    /// Reads the secret files and checks that every global endpoint has a valid secret
    /// and that the signing key, if any, is long enough. Never names a secret's value.
    pub fn load_secrets(&mut self, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, problem: String| ConfigError::Key {
            file: file.to_string(),
            key: key.to_string(),
            problem,
        };
        for (key, path, secret, joiner) in [
            (
                "webhooks.secrets_file",
                &self.secrets_file,
                &mut self.secrets,
                ",",
            ),
            (
                "webhooks.signing_key_file",
                &self.signing_key_file,
                &mut self.signing_key,
                "",
            ),
        ] {
            if path.as_os_str().is_empty() {
                continue;
            }
            if !secret.is_empty() {
                return Err(err(key, "set the file or the environment, not both".into()));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(key, format!("cannot read `{}`: {e}", path.display())))?;
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            *secret = Secret::new(lines.join(joiner));
        }
        let secrets = self
            .global_secrets()
            .map_err(|problem| err("webhooks.secrets", problem))?;
        if let Some(id) = self.endpoints.keys().find(|id| !secrets.contains_key(*id)) {
            return Err(err(
                "webhooks.secrets",
                format!(
                    "endpoint `{id}` has no secret: set `{id}=whsec_...` in \
                     TALLY_WEBHOOKS__SECRETS or webhooks.secrets_file"
                ),
            ));
        }
        let key = self.signing_key.expose();
        if !key.is_empty() && key.len() < MIN_SIGNING_KEY {
            return Err(err(
                "webhooks.signing_key",
                format!("must be at least {MIN_SIGNING_KEY} characters"),
            ));
        }
        Ok(())
    }

    /// The global endpoints' secret keys by id.
    pub fn global_secrets(&self) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let mut out = BTreeMap::new();
        for pair in self
            .secrets
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (id, value) = pair
                .split_once('=')
                .ok_or("each secret is `ID=whsec_...`")?;
            let key = decode_secret(value.trim())
                .map_err(|problem| format!("the secret of `{}`: {problem}", id.trim()))?;
            out.insert(id.trim().to_string(), key);
        }
        Ok(out)
    }
}

/// The key of a `whsec_<base64>` secret (16 to 64 bytes, as the specification asks).
pub fn decode_secret(text: &str) -> Result<Vec<u8>, String> {
    let b64 = text
        .strip_prefix("whsec_")
        .ok_or("must start with `whsec_`")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "is not base64 after `whsec_`".to_string())?;
    if !(16..=64).contains(&key.len()) {
        return Err("must be 16 to 64 bytes".into());
    }
    Ok(key)
}

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

    fn load(env: &[(&str, &str)]) -> Result<crate::config::Config, String> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        crate::config::Config::load_from(None, env)
            .map(|(config, _)| config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn global_endpoints_need_a_secret_and_an_http_url() {
        let url = (
            "TALLY_WEBHOOKS__ENDPOINTS__BILLING__URL",
            "https://b.example/h",
        );
        let e = load(&[url]).expect_err("no secret");
        assert!(e.contains("endpoint `billing` has no secret"), "{e}");
        let secret = (
            "TALLY_WEBHOOKS__SECRETS",
            "billing=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let config = load(&[url, secret]).expect("valid");
        assert_eq!(
            config.webhooks.endpoints["billing"].url,
            "https://b.example/h"
        );
        let e = load(&[("TALLY_WEBHOOKS__SECRETS", "billing=nope"), url]).expect_err("bad");
        assert!(e.contains("whsec_") && !e.contains("nope"), "{e}");
        let ftp = (
            "TALLY_WEBHOOKS__ENDPOINTS__BILLING__URL",
            "ftp://b.example/",
        );
        let e = load(&[ftp, secret]).expect_err("ftp");
        assert!(e.contains("not an http"), "{e}");
        let events = (
            "TALLY_WEBHOOKS__ENDPOINTS__BILLING__EVENTS",
            "credit.reset, credit.nope",
        );
        let e = load(&[url, secret, events]).expect_err("unknown type");
        assert!(e.contains("credit.nope"), "{e}");
        let short = ("TALLY_WEBHOOKS__SIGNING_KEY", "short");
        let e = load(&[short]).expect_err("short key");
        assert!(e.contains("at least 32") && !e.contains("short\""), "{e}");
    }

    #[test]
    fn secrets_are_refused_in_the_config_file() {
        let dir = std::env::temp_dir().join(format!("tally-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("tally.toml");
        std::fs::write(
            &file,
            "[webhooks]\nsigning_key = \"0123456789abcdef0123456789abcdef\"\n",
        )
        .expect("write");
        let e = crate::config::Config::load(&file, Vec::new()).expect_err("refused");
        let text = e.to_string();
        assert!(
            text.contains("TALLY_WEBHOOKS__SIGNING_KEY") && !text.contains("0123456789abcdef"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
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
