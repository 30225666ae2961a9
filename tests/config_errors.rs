//! A bad config stops start-up naming the file, the key and the problem.

use std::process::Command;

fn tally(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .envs(env.iter().copied())
        .env(
            "TALLY_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/tally.toml"),
        )
        .output()
        .expect("tally runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_refuses_to_start_with_file_key_and_problem() {
    let (ok, stderr) = tally(&["run"], &[("TALLY_PIPELINE__FLUSH_INTERVAL", "soonish")]);
    assert!(!ok);
    assert!(stderr.contains("tally.toml"), "{stderr}");
    assert!(stderr.contains("pipeline.flush_interval"), "{stderr}");

    let (ok, stderr) = tally(&["run"], &[("TALLY_RULES__TIMEZONE", "Mars/Base")]);
    assert!(!ok);
    assert!(
        stderr.contains("rules.timezone") && stderr.contains("Mars/Base"),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["--config", "/nowhere/tally.toml", "migrate"])
        .env_remove("TALLY_CONFIG")
        .output()
        .expect("tally runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nowhere/tally.toml"));
}
