//! The SMTP side: a lettre transport built from `[smtp]`, recipient validation, and the
//! MIME message (plain text and HTML alternatives) of a rendered alert.

use std::fmt;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::templates::{one_line, Rendered};
use crate::config::{SmtpConfig, SmtpSecurity};

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("smtp.from `{from}` is not an address: {problem}")]
    From { from: String, problem: String },
    #[error("cannot read smtp.password_file {path}: {source}")]
    PasswordFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot set up TLS for {host}: {source}")]
    Tls {
        host: String,
        source: lettre::transport::smtp::Error,
    },
}

/// Why an email did not go out.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The message could not be built; retrying cannot help.
    #[error("cannot build the email: {0}")]
    Build(#[from] lettre::error::Error),
    /// The server or the connection failed.
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

impl SendError {
    /// Whether a later attempt can succeed: connection problems and 4xx answers can, a
    /// 5xx answer (e.g. a rejected recipient) or a broken message cannot.
    pub fn is_permanent(&self) -> bool {
        match self {
            SendError::Build(_) => true,
            SendError::Smtp(e) => e.is_permanent(),
        }
    }
}

/// Sends emails through the configured server.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// For logs and Debug: where mail goes, never the credentials.
    server: String,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// A transport for `config`; connects only when the first email is sent.
    pub fn new(config: &SmtpConfig) -> Result<Mailer, MailerError> {
        let from: Mailbox = config.from.parse().map_err(|e| MailerError::From {
            from: config.from.clone(),
            problem: format!("{e}"),
        })?;
        let tls = |host: &str| {
            TlsParameters::new(host.to_string()).map_err(|source| MailerError::Tls {
                host: host.to_string(),
                source,
            })
        };
        let tls = match config.security {
            SmtpSecurity::None => Tls::None,
            SmtpSecurity::Starttls => Tls::Required(tls(&config.host)?),
            SmtpSecurity::Tls => Tls::Wrapper(tls(&config.host)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(config.timeout));
        if !config.username.is_empty() {
            let password = if config.password_file.as_os_str().is_empty() {
                config.password.expose().to_string()
            } else {
                let text = std::fs::read_to_string(&config.password_file).map_err(|source| {
                    MailerError::PasswordFile {
                        path: config.password_file.display().to_string(),
                        source,
                    }
                })?;
                // Files written by editors and `echo` end with a newline that is not part
                // of the password.
                text.trim_end_matches(['\r', '\n']).to_string()
            };
            builder = builder.credentials(Credentials::new(config.username.clone(), password));
        }
        let security = match config.security {
            SmtpSecurity::None => "plain",
            SmtpSecurity::Starttls => "starttls",
            SmtpSecurity::Tls => "tls",
        };
        Ok(Mailer {
            transport: builder.build(),
            from,
            server: format!("{}:{} ({security})", config.host, config.port),
        })
    }

    /// `host:port (security)`, for logs.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The MIME message of `rendered` to `to`. Headers come only from lettre's builder;
    /// the subject is flattened to one line once more in case a caller built it by hand.
    pub fn message(&self, to: &[Mailbox], rendered: &Rendered) -> Result<Message, SendError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(one_line(&rendered.subject));
        for mailbox in to {
            builder = builder.to(mailbox.clone());
        }
        Ok(builder.multipart(MultiPart::alternative_plain_html(
            rendered.text.clone(),
            rendered.html.clone(),
        ))?)
    }

    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        self.transport.send(message).await?;
        Ok(())
    }
}

/// The valid addresses of `list` as mailboxes (duplicates removed), and a note for each
/// one that is not an address.
pub fn recipients(list: &[String]) -> (Vec<Mailbox>, Vec<String>) {
    let mut valid: Vec<Mailbox> = Vec::new();
    let mut problems = Vec::new();
    for raw in list {
        let text = raw.trim();
        match text.parse::<Address>() {
            Ok(address) if !valid.iter().any(|m| m.email == address) => {
                valid.push(Mailbox::new(None, address));
            }
            Ok(_) => {}
            Err(e) => problems.push(format!(
                "recipient `{}` skipped: {e}",
                one_line(text).escape_default()
            )),
        }
    }
    (valid, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use std::time::Duration;

    fn config() -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: 1025,
            security: SmtpSecurity::None,
            username: String::new(),
            password: Secret::default(),
            password_file: Default::default(),
            from: "tally <alerts@tally.local>".into(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn invalid_recipients_are_skipped_with_a_note() {
        let (valid, problems) = recipients(&[
            "ops@acme.kr".into(),
            " kim@acme.kr ".into(),
            "ops@acme.kr".into(),
            "not an address".into(),
            "x@y.com\r\nBcc: evil@x.com".into(),
            String::new(),
        ]);
        let emails: Vec<String> = valid.iter().map(|m| m.email.to_string()).collect();
        assert_eq!(emails, ["ops@acme.kr", "kim@acme.kr"]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().all(|p| !p.contains('\n')));
    }

    #[test]
    fn credentials_never_show_in_debug() {
        let mut c = config();
        c.username = "mailer".into();
        c.password = Secret::new("hunter2".into());
        c.security = SmtpSecurity::Starttls;
        let mailer = Mailer::new(&c).expect("a transport");
        assert!(!format!("{mailer:?}").contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn password_file_is_read_without_its_newline() {
        let path = std::env::temp_dir().join(format!("tally-pw-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").expect("temp file");
        let mut c = config();
        c.username = "mailer".into();
        c.password_file = path.clone();
        c.security = SmtpSecurity::Tls;
        assert!(Mailer::new(&c).is_ok());
        c.password_file = path.with_extension("missing");
        let err = Mailer::new(&c).expect_err("missing file");
        assert!(err.to_string().contains("password_file"));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn message_headers_come_from_the_builder_only() {
        let mailer = Mailer::new(&config()).expect("a transport");
        let (to, _) = recipients(&["ops@acme.kr".into()]);
        let rendered = Rendered {
            subject: "acme\r\nBcc: evil@x.com".into(),
            text: "text".into(),
            html: "<p>html</p>".into(),
        };
        let message = mailer.message(&to, &rendered).expect("a message");
        let raw = String::from_utf8_lossy(&message.formatted()).into_owned();
        assert!(!raw.contains("\r\nBcc:"), "{raw}");
        assert!(raw.contains("To: ops@acme.kr"), "{raw}");
        assert_eq!(message.envelope().to().len(), 1);
    }
}
