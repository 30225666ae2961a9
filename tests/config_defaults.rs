//! The defaults README.md documents are the defaults in code, every key is documented, tally
//! starts with no config file and only environment variables, and every `TALLY_*` variable
//! of docker-compose.yml names a real setting. No stack needed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tally::config::Config;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every leaf key of `table` as a dotted path, with its value.
fn leaves(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => leaves(&path, inner, out),
            other => out.push((path, other.clone())),
        }
    }
}

fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// `(key, documented default)` of every row of README.md's settings tables (`| key |
/// default | meaning |`). A row may list several keys and defaults split by ` / `; later
/// keys without a dot are in the first key's section.
fn readme_defaults() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in readme.lines() {
        if line.starts_with("| key | default | meaning |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (keys, defaults) = (cells[1], cells[2]);
        // The environment-only secrets and plans are documented elsewhere.
        if keys.starts_with("TALLY_") || keys.starts_with("plans.") || defaults.is_empty() {
            continue;
        }
        let keys: Vec<&str> = keys.split(" / ").collect();
        let defaults: Vec<&str> = defaults.split(" / ").collect();
        assert_eq!(keys.len(), defaults.len(), "README row `{line}`");
        let section = keys[0].rsplit_once('.').map(|(s, _)| s).unwrap_or("");
        for (key, default) in keys.iter().zip(defaults) {
            let key = if key.contains('.') {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            let default = default
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .trim_matches('`')
                .to_string();
            let default = if default == "\"\"" {
                String::new()
            } else {
                default
            };
            rows.push((key, default));
        }
    }
    rows
}

#[test]
fn readme_table_of_defaults_is_the_code() {
    let defaults = Config::default_table();
    let documented = readme_defaults();
    assert!(documented.len() > 40, "README tables found: {documented:?}");
    for (key, text) in &documented {
        let value = lookup(&defaults, key)
            .unwrap_or_else(|| panic!("README documents `{key}`, which is not a setting"));
        let same = match value {
            toml::Value::String(code) => {
                // Durations may be written differently (24h is 1day): compare as durations.
                match (
                    humantime::parse_duration(code),
                    humantime::parse_duration(text),
                ) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => code == text,
                }
            }
            toml::Value::Integer(code) => text.parse::<i64>().ok() == Some(*code),
            toml::Value::Boolean(code) => text.parse::<bool>().ok() == Some(*code),
            other => panic!("`{key}`: unexpected default {other:?}"),
        };
        assert!(
            same,
            "README says `{key}` defaults to `{text}`, code says {value}"
        );
    }
    // And the other way: every setting is in the README (secrets and plans apart).
    let mut all = Vec::new();
    leaves("", &defaults, &mut all);
    let documented: BTreeSet<&str> = documented.iter().map(|(k, _)| k.as_str()).collect();
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    for (key, _) in all {
        // Secrets are documented as their environment variables (checked below).
        if key.starts_with("plans.") || key.ends_with("password") {
            continue;
        }
        // Keys documented with an empty default column (e.g. the purchase texts).
        let mentioned = readme
            .lines()
            .any(|l| l.starts_with("| ") && l.contains(key.rsplit('.').next().unwrap_or(&key)));
        assert!(
            documented.contains(key.as_str()) || mentioned,
            "setting `{key}` is missing from README.md's tables"
        );
    }
    let secrets = [
        "TALLY_SMTP__PASSWORD",
        "TALLY_CLICKHOUSE__PASSWORD",
        "TALLY_KAFKA__SASL_PASSWORD",
        "TALLY_SERVE__KEYS",
        "TALLY_STATUS__TOKEN",
    ];
    for secret in secrets {
        assert!(
            readme.contains(&format!("| {secret} |")),
            "{secret} in README"
        );
    }
}

/// The `TALLY_*` variables of docker-compose.yml, with their value where one is set.
fn compose_variables() -> Vec<(String, Option<String>)> {
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).expect("compose");
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for line in compose.lines() {
        let mut rest = line;
        while let Some(at) = rest.find("TALLY_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = tail[..end].to_string();
            // `NAME: value` in an environment map; in comments and text, just the name.
            let value = tail[end..]
                .strip_prefix(':')
                .filter(|_| !line.trim_start().starts_with('#'))
                .map(|v| v.trim().trim_matches('"').to_string());
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some(seen) => {
                    if seen.1.is_none() {
                        seen.1 = value;
                    }
                }
                None => out.push((name, value)),
            }
            rest = &tail[end..];
        }
    }
    out
}

#[test]
fn every_tally_variable_in_docker_compose_names_a_real_setting() {
    let defaults = Config::default_table();
    let variables = compose_variables();
    assert!(variables.len() >= 5, "{variables:?}");
    let not_keys = ["TALLY_CONFIG", "TALLY_LOG"];
    let mut set = Vec::new();
    for (name, value) in &variables {
        if not_keys.contains(&name.as_str()) {
            continue;
        }
        let key = name["TALLY_".len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        // clickhouse.cluster has no default (absent: one server), so its keys are not in
        // the table of defaults; the load below checks their values.
        let cluster_key =
            ["clickhouse.cluster.name", "clickhouse.cluster.shards"].contains(&key.as_str());
        assert!(
            lookup(&defaults, &key).is_some() || cluster_key,
            "{name} in docker-compose.yml: `{key}` is not a setting"
        );
        if let Some(value) = value {
            set.push((name.clone(), value.clone()));
        }
    }
    // The values the compose file sets load together, as the containers would get them.
    let (config, _) = Config::load_from(None, set.clone())
        .unwrap_or_else(|e| panic!("compose environment {set:?}: {e}"));
    assert_eq!(config.kafka.brokers, "kafka:9092");
    let cluster = config
        .clickhouse
        .cluster
        .expect("the compose file's cluster");
    assert_eq!(
        cluster.shards,
        [["http://clickhouse-1:8123", "http://clickhouse-2:8123"]]
    );
}

fn tally_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .current_dir(dir)
        .args(args)
        .env_remove("TALLY_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("tally runs")
}

#[test]
fn tally_starts_with_no_config_file_and_only_environment_variables() {
    let dir = std::env::temp_dir().join(format!("tally-nofile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = tally_in(
        &dir,
        &["plans", "--json"],
        &[
            ("TALLY_KAFKA__PARTITIONS", "3"),
            ("TALLY_PLANS__PRO__CREDITS", "250"),
            ("TALLY_CLICKHOUSE__TIMEOUT", "5s"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"pro\""), "{stdout}");
    assert!(stdout.contains("250"), "{stdout}");
    // A file that is asked for must exist.
    let out = tally_in(&dir, &["plans"], &[("TALLY_CONFIG", "/nowhere/tally.toml")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nowhere/tally.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn duration_defaults_are_typed() {
    let config = Config::default();
    assert_eq!(config.clickhouse.timeout, Duration::from_secs(30));
    assert_eq!(config.pipeline.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(config.pipeline.progress_interval, Duration::from_secs(5));
    assert_eq!(config.serve.header_timeout, Duration::from_secs(10));
    assert_eq!(config.serve.idle_timeout, Duration::from_secs(60));
    assert_eq!(config.serve.request_timeout, Duration::from_secs(60));
}

#[test]
fn a_config_file_that_sets_nothing_works_wherever_it_lives() {
    // Issue 20, point 5: an empty file as TALLY_CONFIG, in a folder without matrix.toml,
    // used to stop start-up with "key `rules.matrix`: cannot read <folder>/matrix.toml"
    // although the key was never set; the shipped matrix is built in.
    let dir = std::env::temp_dir().join(format!("tally-emptyconf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("tally.toml");
    std::fs::write(&file, "").expect("empty file");
    let path = file.display().to_string();
    let out = tally_in(
        Path::new("/"),
        &["matrix", "--json"],
        &[("TALLY_CONFIG", path.as_str())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("text_to_image"), "{stdout}");
    // A file that names a matrix still needs it.
    std::fs::write(&file, "[rules]\nmatrix = \"prices.toml\"\n").expect("written");
    let out = tally_in(
        Path::new("/"),
        &["matrix"],
        &[("TALLY_CONFIG", path.as_str())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("rules.matrix") && stderr.contains("prices.toml"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
