//! A `tally serve` of one deployment, on a free port, with known keys; and a small HTTP
//! client (curl) to talk to it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Deployment;

pub const ADMIN_KEY: &str = "admin-test-key-0123456789abcdef";
pub const ACME_KEY: &str = "acme-test-key-0123456789abcdef";
pub const GLOBEX_KEY: &str = "globex-test-key-0123456789abcd";
/// `service:acme`: checks, holds and releases for acme (no reads).
pub const ACME_SERVICE_KEY: &str = "acme-service-key-0123456789abc";
pub const GLOBEX_SERVICE_KEY: &str = "globex-service-key-0123456789a";

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

pub struct Server {
    pub base: String,
    child: Child,
}

impl Server {
    /// Starts `tally serve` for `d` with the test keys and `env` on top, and waits (with a
    /// deadline) until it answers `/healthz`.
    pub fn start(d: &Deployment, env: &[(&str, &str)]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("address")
            .port();
        let keys = format!(
            "admin={ADMIN_KEY},account:acme={ACME_KEY},account:globex={GLOBEX_KEY},\
             service:acme={ACME_SERVICE_KEY},service:globex={GLOBEX_SERVICE_KEY}"
        );
        let child = d
            .command()
            .arg("serve")
            .env("TALLY_SERVE__LISTEN", format!("127.0.0.1:{port}"))
            .env("TALLY_SERVE__KEYS", keys)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tally serve starts");
        let mut server = Server {
            base: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server.get("/healthz", None).status == 200 {
                break;
            }
            if let Some(status) = server.child.try_wait().expect("wait works") {
                panic!("tally serve exited: {status}");
            }
            assert!(Instant::now() < deadline, "tally serve never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `curl` with `args`, returning status, headers and body.
    pub fn curl(&self, path: &str, args: &[&str]) -> Answer {
        let out = Command::new("curl")
            .args(["-sS", "-D", "-"])
            .args(args)
            .arg(format!("{}{path}", self.base))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Answer {
                status: 0,
                headers: String::new(),
                body: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
        };
        let status = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Answer {
            status,
            headers: head.to_string(),
            body: body.to_string(),
        }
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> Answer {
        self.get_with(path, key, &[])
    }

    pub fn get_with(&self, path: &str, key: Option<&str>, extra: &[&str]) -> Answer {
        let auth = key.map(|k| format!("Authorization: Bearer {k}"));
        let mut args: Vec<&str> = Vec::new();
        if let Some(a) = &auth {
            args.extend(["-H", a]);
        }
        args.extend_from_slice(extra);
        self.curl(path, &args)
    }

    pub fn post(&self, path: &str, key: &str, content_type: &str, body: &str) -> Answer {
        let auth = format!("Authorization: Bearer {key}");
        let ct = format!("Content-Type: {content_type}");
        self.curl(
            path,
            &["-X", "POST", "-H", &auth, "-H", &ct, "--data-binary", body],
        )
    }

    /// Stops the server and returns what it logged.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let out = std::mem::replace(
            &mut self.child,
            Command::new("true").spawn().expect("true runs"),
        )
        .wait_with_output()
        .expect("tally serve exits");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
