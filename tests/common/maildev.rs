//! A private maildev for tests that read captured mail back through its REST API, and can
//! stop and start their SMTP server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::free_port;
use serde_json::Value;

/// How long any expected outcome may take before the test fails; a bound, not a pace.
pub const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn maildev_bin() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let bin = root().join(".stack/maildev/node_modules/.bin/maildev");
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !bin.exists() {
        let status = Command::new("bash")
            .arg(root().join("scripts/stack-up.sh"))
            .status()
            .expect("stack-up runs");
        assert!(status.success(), "scripts/stack-up.sh failed");
    }
    bin
}

/// Polls `check` until it gives a value or the deadline passes.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

pub fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A private maildev: SMTP and REST on ports of its own.
pub struct MailDev {
    child: Option<Child>,
    pub smtp: u16,
    pub web: u16,
    dir: PathBuf,
}

impl MailDev {
    pub fn start() -> MailDev {
        let mut dev = MailDev {
            child: None,
            smtp: free_port(),
            web: free_port(),
            dir: std::env::temp_dir().join(format!("tally-maildev-{:016x}", rand::random::<u64>())),
        };
        dev.resume();
        dev
    }

    /// Starts (again) on the same ports, with an empty mailbox.
    pub fn resume(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("mail directory");
        let log = std::fs::File::create(self.dir.with_extension("log")).expect("log file");
        let child = Command::new(maildev_bin())
            .args(["--ip", "127.0.0.1", "--web-ip", "127.0.0.1"])
            .args([
                "--smtp",
                &self.smtp.to_string(),
                "--web",
                &self.web.to_string(),
            ])
            .arg("--mail-directory")
            .arg(&self.dir)
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("maildev starts");
        self.child = Some(child);
        eventually("maildev to answer", || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log =
                    std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default();
                panic!("maildev exited ({status}): {log}");
            }
            self.raw_emails()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn raw_emails(&self) -> Option<Vec<Value>> {
        let body = curl(&[&format!("http://127.0.0.1:{}/email", self.web)])?;
        match serde_json::from_str(&body).ok()? {
            Value::Array(mails) => Some(mails),
            _ => None,
        }
    }

    /// The captured emails once there are at least `n`.
    pub fn wait_for(&self, n: usize) -> Vec<Value> {
        eventually(&format!("{n} emails in maildev"), || {
            self.raw_emails().filter(|m| m.len() >= n)
        })
    }
}

impl Drop for MailDev {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}
