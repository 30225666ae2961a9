//! A shell that cannot hang: against a ClickHouse that accepts connections and never
//! answers (a listener this test spawns), every call times out, a second SIGTERM exits at
//! once, and shutdown has a deadline. Needs no stack: the real binary, a local listener.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A "ClickHouse" that accepts every connection and never says a word. Returns its URL.
fn blackhole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    format!("http://{addr}")
}

fn tally(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command
        .args(args)
        .env(
            "TALLY_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/tally.toml"),
        )
        .env("TALLY_STATUS__LISTEN", "")
        .env("TALLY_LOG", "info,tally=debug")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A child process that is SIGKILLed and reaped when dropped while it runs, so a failed
/// assertion leaves nothing behind.
struct Guarded(Child);

impl std::ops::Deref for Guarded {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `command` and returns it with a channel of its stderr lines.
fn spawn(mut command: Command) -> (Guarded, mpsc::Receiver<String>) {
    let mut child = Guarded(command.spawn().expect("tally starts"));
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a stderr line containing `text`, collecting what it read.
fn wait_for_line(rx: &mpsc::Receiver<String>, text: &str, log: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let found = line.contains(text);
            log.push(line);
            if found {
                return;
            }
        }
    }
    panic!("no `{text}` on stderr: {log:#?}");
}

/// Waits at most `limit` (a generous bound, not a timing assertion) for `child` to exit.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "SIGTERM sent");
}

fn drain(rx: &mpsc::Receiver<String>, log: &mut Vec<String>) {
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        log.push(line);
    }
}

#[test]
fn every_clickhouse_call_times_out_on_a_hung_server() {
    let url = blackhole();
    let started = Instant::now();
    let (mut child, rx) = spawn(tally(
        &["balance", "acme"],
        &[
            ("TALLY_CLICKHOUSE__URL", &url),
            ("TALLY_CLICKHOUSE__TIMEOUT", "1s"),
        ],
    ));
    let status = wait_exit(&mut child, Duration::from_secs(60))
        .expect("a hung ClickHouse fails the call instead of blocking");
    let mut log = Vec::new();
    drain(&rx, &mut log);
    assert!(!status.success(), "{log:#?}");
    let text = log.join("\n").to_lowercase();
    assert!(
        text.contains("timed out") || text.contains("timeout"),
        "{log:#?}"
    );
    eprintln!("failed after {:?}", started.elapsed());
}

#[test]
fn a_second_signal_exits_at_once() {
    let url = blackhole();
    // A long ClickHouse timeout and deadline: only the second signal can end this run.
    let (mut child, rx) = spawn(tally(
        &["run"],
        &[
            ("TALLY_CLICKHOUSE__URL", &url),
            ("TALLY_CLICKHOUSE__TIMEOUT", "10min"),
            ("TALLY_PIPELINE__SHUTDOWN_TIMEOUT", "10min"),
        ],
    ));
    let mut log = Vec::new();
    wait_for_line(&rx, "watching for Ctrl-C and SIGTERM", &mut log);
    sigterm(&child);
    wait_for_line(&rx, "shutting down", &mut log);
    // The run thread is stuck in a ClickHouse call: the first signal cannot end it.
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().expect("try_wait").is_none(), "{log:#?}");
    sigterm(&child);
    let status =
        wait_exit(&mut child, Duration::from_secs(30)).expect("a second SIGTERM exits the process");
    drain(&rx, &mut log);
    assert_eq!(status.code(), Some(130), "{log:#?}");
}

#[test]
fn shutdown_has_a_deadline() {
    let url = blackhole();
    let (mut child, rx) = spawn(tally(
        &["run"],
        &[
            ("TALLY_CLICKHOUSE__URL", &url),
            ("TALLY_CLICKHOUSE__TIMEOUT", "10min"),
            ("TALLY_PIPELINE__SHUTDOWN_TIMEOUT", "1s"),
        ],
    ));
    let mut log = Vec::new();
    wait_for_line(&rx, "watching for Ctrl-C and SIGTERM", &mut log);
    sigterm(&child);
    let status =
        wait_exit(&mut child, Duration::from_secs(60)).expect("shutdown ends at its deadline");
    drain(&rx, &mut log);
    assert_eq!(status.code(), Some(124), "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("shutdown_timeout")),
        "{log:#?}"
    );
}
