//! The `[webhooks]` section of the config: global endpoints and their secrets, the key
//! accounts' endpoint secrets derive from, and the delivery limits. The secrets come from
//! the environment or files, never the config file; checked without the network.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tally_core::hooks;

use super::{ConfigError, Secret};

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

#[cfg(test)]
mod tests {
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
}
