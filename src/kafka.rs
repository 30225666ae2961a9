//! Kafka at the edge: client settings, the producer for commands, dead letters and
//! records forwarded to their account's partition, and topic creation.

use std::time::Duration;

use chrono::{DateTime, Utc};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("Kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("cannot create topic `{topic}`: {problem}")]
    CreateTopic { topic: String, problem: String },
    #[error("cannot deliver to `{topic}`: {problem}")]
    Delivery { topic: String, problem: String },
    /// The brokers refused the connection for good (credentials or certificates): a
    /// setting is wrong, and retrying would only hang.
    #[error("Kafka at {brokers}: {problem}")]
    Access { brokers: String, problem: String },
    #[error("topic `{topic}`: {problem}")]
    TopicConfig { topic: String, problem: String },
}

/// A client config for `kafka.brokers` with the security settings applied: every client
/// tally makes (consumers, producers, admin) starts from this one, so none can connect
/// without them.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    apply_security(&mut client, config);
    client
}

/// Sets `security.protocol` and the SASL and TLS properties of `config` on `client`.
/// librdkafka redacts `sasl.password` in its own logs and rdkafka in `Debug`.
pub fn apply_security(client: &mut ClientConfig, config: &KafkaConfig) {
    let protocol = config.security_protocol;
    client.set("security.protocol", protocol.as_str());
    if protocol.sasl() {
        client
            .set("sasl.mechanism", config.sasl_mechanism.as_str())
            .set("sasl.username", &config.sasl_username)
            .set("sasl.password", config.sasl_password.expose());
    }
    if protocol.tls() {
        for (property, path) in [
            ("ssl.ca.location", &config.ssl_ca_file),
            ("ssl.certificate.location", &config.ssl_cert_file),
            ("ssl.key.location", &config.ssl_key_file),
        ] {
            if !path.as_os_str().is_empty() {
                client.set(property, path.display().to_string());
            }
        }
        // Without ssl.ca.location, librdkafka on its static OpenSSL probes the system's
        // usual CA paths; the broker's host name is checked against its certificate
        // (ssl.endpoint.identification.algorithm defaults to https).
    }
}

/// How long start-up waits for the brokers to answer before it goes on without knowing.
const ACCESS_WAIT: Duration = Duration::from_secs(10);

/// Checks that the brokers take this client's credentials and that their certificates are
/// trusted, before a command starts: librdkafka retries a refused login or a failed TLS
/// handshake forever, and reports it only through the client's error callback, so without
/// this a wrong password would look like a hang. A broker that does not answer within
/// `ACCESS_WAIT` is not an error here (it may be starting, and the clients retry): the
/// command goes on and waits for it as it always did.
pub fn check_access(config: &KafkaConfig) -> Result<(), KafkaError> {
    use rdkafka::producer::BaseProducer;
    let recorder = AccessRecorder::default();
    let producer: BaseProducer<AccessRecorder> =
        client_config(config).create_with_context(recorder)?;
    let deadline = std::time::Instant::now() + ACCESS_WAIT;
    loop {
        // Serves the error callbacks of what happened so far.
        producer.poll(Duration::ZERO);
        if let Some(problem) = producer.context().refusal(config) {
            return Err(KafkaError::Access {
                brokers: config.brokers.clone(),
                problem,
            });
        }
        if producer
            .client()
            .fetch_metadata(None, Duration::from_millis(500))
            .is_ok()
        {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                brokers = %config.brokers,
                "Kafka brokers did not answer within {ACCESS_WAIT:?}; going on, the clients retry"
            );
            return Ok(());
        }
    }
}

/// `check_access` off the async runtime's threads (it blocks for up to `ACCESS_WAIT`).
pub async fn check_access_async(config: &KafkaConfig) -> Result<(), KafkaError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || check_access(&config))
        .await
        .unwrap_or_else(|e| {
            Err(KafkaError::Access {
                brokers: String::new(),
                problem: format!("the access check did not finish: {e}"),
            })
        })
}

/// The errors librdkafka reported to a client, for `check_access`.
#[derive(Default)]
struct AccessRecorder {
    errors: std::sync::Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>,
}

impl rdkafka::ClientContext for AccessRecorder {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "Kafka client error during the access check");
        if let Ok(mut errors) = self.errors.lock() {
            errors.push((error.rdkafka_error_code(), reason.to_string()));
        }
    }

    // librdkafka may hand a failed handshake to the error callback seconds after it logs
    // it (seen: 3 s, and past the check's 10 s under load), so the log lines count too.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" {
            if let Ok(mut errors) = self.errors.lock() {
                errors.push((None, message.to_string()));
            }
        }
        rdkafka::client::DefaultClientContext.log(level, fac, message);
    }
}

impl rdkafka::producer::ProducerContext for AccessRecorder {
    type DeliveryOpaque = ();
    // The check sends nothing.
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

impl AccessRecorder {
    /// A refusal that no retry can cure, explained with the settings to look at.
    fn refusal(&self, config: &KafkaConfig) -> Option<String> {
        let errors = self.errors.lock().ok()?;
        errors.iter().find_map(|(code, reason)| {
            let sasl = matches!(
                code,
                Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
            ) || reason.contains("SASL authentication error")
                || reason.contains("invalid-proof");
            if sasl {
                return Some(format!(
                    "the broker refused the SASL login ({reason}); check kafka.sasl_username \
                     (`{}`), kafka.sasl_mechanism ({}) and the password \
                     (TALLY_KAFKA__SASL_PASSWORD or kafka.sasl_password_file)",
                    config.sasl_username,
                    config.sasl_mechanism.as_str()
                ));
            }
            // A TLS alert from the broker about our certificate (it requires one, or does
            // not trust the one sent) may come as a failed receive, not an SSL error.
            if reason.contains("alert") && reason.contains("certificate") {
                return Some(format!(
                    "the broker refused this client's TLS certificate ({reason}); mutual TLS \
                     needs kafka.ssl_cert_file and kafka.ssl_key_file, signed by a CA it trusts"
                ));
            }
            if reason.contains("certificate verify failed") {
                return Some(format!(
                    "the broker's TLS certificate is not trusted ({reason}); set \
                     kafka.ssl_ca_file to the CA (PEM) that signed it"
                ));
            }
            (*code == Some(RDKafkaErrorCode::SSL)).then(|| {
                format!(
                    "TLS with the broker failed ({reason}); check kafka.security_protocol \
                     (`{}`), kafka.ssl_ca_file, kafka.ssl_cert_file and kafka.ssl_key_file",
                    config.security_protocol.as_str()
                )
            })
        })
    }
}

/// Settings of the `tally run` consumer. Offsets are managed by tally (ClickHouse holds
/// the commit point); Kafka's group offsets are committed after it, for lag monitoring.
pub fn consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = client_config(config);
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Range gives one consumer the same partition number of both topics, so one
        // writer sees all of an account's usage and commands.
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        // tansu answers a fetch at the end of a partition only when this runs out, so it is
        // how late a live record arrives: a hold's answer waits for it (measured: 50 ms
        // here put the median hold 45 ms later; 5 instead of 10 took produce-to-receipt
        // from 19 to 8 ms mean, docs/benchmarks.md, session 9). With records waiting,
        // fetches return at once whatever it is; idle, it costs 200 fetches a second.
        .set("fetch.wait.max.ms", "5");
    if !config.instance_id.is_empty() {
        client.set("group.instance.id", &config.instance_id);
    }
    client
}

/// The largest record tally's producers send (`message.max.bytes`, librdkafka's
/// default, set explicitly so the dead-letter cut below is computed against it).
pub const MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room kept under [`MESSAGE_MAX_BYTES`] for what librdkafka adds to key, value and
/// headers (record and batch framing, varints): far more than it needs.
const FRAMING_BYTES: usize = 4 * 1024;
/// The longest reason a dead letter carries: a reason may echo a field of any size.
pub const REASON_MAX_BYTES: usize = 1024;
/// The longest key a dead letter carries: the key is the producer's, of any size.
pub const DEAD_LETTER_KEY_MAX_BYTES: usize = 1024;

/// Every producer of tally: keyed records go where `kafka.partitioner` says, which is
/// where `tally run` applies them.
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    producer_lingering(config, "5")
}

/// A producer for records a caller waits on, one at a time (`POST /v1/holds`): each is
/// sent at once instead of after `linger.ms`, which would add to every answer.
pub fn producer_at_once(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    producer_lingering(config, "0")
}

fn producer_lingering(config: &KafkaConfig, linger_ms: &str) -> Result<FutureProducer, KafkaError> {
    Ok(client_config(config)
        .set("linger.ms", linger_ms)
        .set("message.timeout.ms", "30000")
        .set("partitioner", config.partitioner.librdkafka_name())
        .set("message.max.bytes", MESSAGE_MAX_BYTES.to_string())
        .create()?)
}

/// Whether a record of this size (key, value and headers' bytes) can be produced again
/// as it is, with room for framing.
pub fn fits_producer(bytes: usize) -> bool {
    bytes <= MESSAGE_MAX_BYTES - FRAMING_BYTES
}

/// A rejected event on its way to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub code: &'static str,
    pub reason: String,
}

/// A record read from a partition that does not own its account, on its way to the one
/// that does (same topic), as it was: key, payload, headers and broker timestamp.
#[derive(Debug, Clone)]
pub struct Forward {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Option<OwnedHeaders>,
    /// The original broker timestamp, in milliseconds, so the owner decides with it.
    pub timestamp: Option<i64>,
}

/// What a flush produces before its outputs and checkpoint: the offsets that cover these
/// records are committed only once every one of them is acknowledged.
#[derive(Debug, Default)]
pub struct Outgoing {
    pub dead_letters: Vec<DeadLetter>,
    pub forwards: Vec<Forward>,
}

impl Outgoing {
    pub fn is_empty(&self) -> bool {
        self.dead_letters.is_empty() && self.forwards.is_empty()
    }

    pub fn append(&mut self, other: &mut Outgoing) {
        self.dead_letters.append(&mut other.dead_letters);
        self.forwards.append(&mut other.forwards);
    }
}

/// Sends the dead letters and the forwards, and waits for every acknowledgement. Returns
/// where each forward landed (topic, partition, offset).
pub async fn send_outgoing(
    producer: &FutureProducer,
    dlq_topic: &str,
    outgoing: &Outgoing,
) -> Result<Vec<(String, i32, i64)>, KafkaError> {
    let (letters, forwards) = futures::join!(
        send_dead_letters(producer, dlq_topic, &outgoing.dead_letters),
        send_forwards(producer, &outgoing.forwards)
    );
    letters.and(forwards)
}

/// Sends each record to its account's partition with its original key, headers and
/// timestamp. At least once: a copy sent twice is charged once by the dedup window.
async fn send_forwards(
    producer: &FutureProducer,
    forwards: &[Forward],
) -> Result<Vec<(String, i32, i64)>, KafkaError> {
    let deliveries = forwards.iter().map(|forward| {
        let mut record = FutureRecord::<[u8], [u8]>::to(&forward.topic)
            .partition(forward.partition)
            .payload(&forward.payload);
        if let Some(key) = &forward.key {
            record = record.key(key);
        }
        if let Some(headers) = &forward.headers {
            record = record.headers(headers.clone());
        }
        if let Some(at) = forward.timestamp {
            record = record.timestamp(at);
        }
        producer.send(record, Duration::from_secs(30))
    });
    let mut landed = Vec::with_capacity(forwards.len());
    for (delivery, forward) in futures::future::join_all(deliveries)
        .await
        .into_iter()
        .zip(forwards)
    {
        let delivery = delivery.map_err(|(e, _)| KafkaError::Delivery {
            topic: forward.topic.clone(),
            problem: e.to_string(),
        })?;
        landed.push((forward.topic.clone(), delivery.partition, delivery.offset));
    }
    Ok(landed)
}

/// A dead letter as it is produced: cut where it must be, so that it always fits the
/// producer's limit (a dead letter that cannot be sent would stop every flush).
#[derive(Debug, PartialEq, Eq)]
struct Shaped<'a> {
    reason: &'a str,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    /// Headers: the position, the reason, and what was cut (original sizes).
    headers: Vec<(&'static str, String)>,
}

fn shape(letter: &DeadLetter) -> Shaped<'_> {
    let reason = cut_utf8(&letter.reason, REASON_MAX_BYTES);
    let key = letter
        .key
        .as_deref()
        .map(|k| &k[..k.len().min(DEAD_LETTER_KEY_MAX_BYTES)]);
    let mut headers = vec![
        ("tally.reason", reason.to_string()),
        ("tally.reason.code", letter.code.to_string()),
        ("tally.source.topic", letter.topic.clone()),
        ("tally.source.partition", letter.partition.to_string()),
        ("tally.source.offset", letter.offset.to_string()),
    ];
    if let Some(original) = letter
        .key
        .as_ref()
        .filter(|k| k.len() > DEAD_LETTER_KEY_MAX_BYTES)
    {
        headers.push(("tally.key.truncated", original.len().to_string()));
    }
    // The header saying the payload was cut is counted before the cut is known: its
    // value is at most 20 digits.
    let fixed: usize = headers
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + key.map_or(0, <[u8]>::len)
        + "tally.payload.truncated".len()
        + 20;
    let room = (MESSAGE_MAX_BYTES - FRAMING_BYTES).saturating_sub(fixed);
    let payload = &letter.payload[..letter.payload.len().min(room)];
    if payload.len() < letter.payload.len() {
        headers.push(("tally.payload.truncated", letter.payload.len().to_string()));
    }
    Shaped {
        reason,
        key,
        payload,
        headers,
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn cut_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Sends `letters` to `dlq_topic` with the reason and the source position in headers,
/// cut to fit (see [`shape`]), and waits for every acknowledgement.
pub async fn send_dead_letters(
    producer: &FutureProducer,
    dlq_topic: &str,
    letters: &[DeadLetter],
) -> Result<(), KafkaError> {
    let mut deliveries = Vec::with_capacity(letters.len());
    for letter in letters {
        let shaped = shape(letter);
        let headers = shaped
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            });
        let mut record = FutureRecord::<[u8], [u8]>::to(dlq_topic)
            .payload(shaped.payload)
            .headers(headers);
        if let Some(key) = shaped.key {
            record = record.key(key);
        }
        deliveries.push(producer.send(record, Duration::from_secs(30)));
    }
    for delivery in futures::future::join_all(deliveries).await {
        delivery.map_err(|(e, _)| KafkaError::Delivery {
            topic: dlq_topic.to_string(),
            problem: e.to_string(),
        })?;
    }
    Ok(())
}

/// Sends one event keyed by its account.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    payload: &[u8],
    timestamp: Option<DateTime<Utc>>,
) -> Result<(i32, i64), KafkaError> {
    let mut record = FutureRecord::<str, [u8]>::to(topic).payload(payload);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(at) = timestamp {
        record = record.timestamp(at.timestamp_millis());
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map(|delivery| (delivery.partition, delivery.offset))
        .map_err(|(e, _)| KafkaError::Delivery {
            topic: topic.to_string(),
            problem: e.to_string(),
        })
}

/// Sends a `tally.tick` stamped `at` (event time and broker timestamp) to `partitions` of
/// the commands topic, or to all of them; returns how many were sent.
pub async fn send_ticks(
    producer: &FutureProducer,
    config: &KafkaConfig,
    partitions: Option<&[i32]>,
    at: DateTime<Utc>,
) -> Result<usize, KafkaError> {
    let topic = config.commands_topic.as_str();
    let partitions: Vec<i32> = match partitions {
        Some(list) => list.to_vec(),
        None => {
            let metadata = producer
                .client()
                .fetch_metadata(Some(topic), Duration::from_secs(10))?;
            metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect()
        }
    };
    let millis = at.timestamp_millis();
    let payloads: Vec<(i32, Vec<u8>)> = partitions
        .iter()
        .map(|partition| (*partition, tick_payload(*partition, at)))
        .collect();
    let deliveries = payloads.iter().map(|(partition, payload)| {
        let record = FutureRecord::<str, [u8]>::to(topic)
            .partition(*partition)
            .timestamp(millis)
            .payload(payload);
        producer.send(record, Duration::from_secs(30))
    });
    for delivery in futures::future::join_all(deliveries).await {
        delivery.map_err(|(e, _)| KafkaError::Delivery {
            topic: topic.to_string(),
            problem: e.to_string(),
        })?;
    }
    Ok(partitions.len())
}

/// Queues a tick for each of `partitions` without waiting for delivery: the run loop must
/// not block on it, and a lost tick is harmless (the next one moves the clock further).
pub fn enqueue_ticks(
    producer: &FutureProducer,
    config: &KafkaConfig,
    partitions: &[i32],
    at: DateTime<Utc>,
) {
    for &partition in partitions {
        let payload = tick_payload(partition, at);
        let record = FutureRecord::<str, [u8]>::to(&config.commands_topic)
            .partition(partition)
            .timestamp(at.timestamp_millis())
            .payload(&payload);
        if let Err((e, _)) = producer.send_result(record) {
            tracing::warn!(partition, error = %e, "cannot queue a clock tick");
        }
    }
}

fn tick_payload(partition: i32, at: DateTime<Utc>) -> Vec<u8> {
    serde_json::json!({
        "specversion": "1.0", "type": tally_core::event::TICK,
        "id": format!("tick-{partition}-{}", at.timestamp_millis()), "source": "tally",
        "time": at.to_rfc3339(),
    })
    .to_string()
    .into_bytes()
}

/// Creates the usage and commands topics with `partitions` each, and the dead-letter
/// topic; topics that exist are left as they are.
pub async fn create_topics(config: &KafkaConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let topics = [
        NewTopic::new(
            &config.usage_topic,
            config.partitions,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(
            &config.commands_topic,
            config.partitions,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(&config.dlq_topic, 1, TopicReplication::Fixed(1)),
    ];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::CreateTopic {
                    topic,
                    problem: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// The topic setting with which a broker refuses records stamped too far ahead (Kafka
/// 3.6+, KIP-937).
const TIMESTAMP_AFTER_MAX: &str = "message.timestamp.after.max.ms";

/// Asks the broker to refuse usage and command records stamped more than `skew` ahead of
/// its clock, keeping the topics' other settings. Best effort: a broker without the
/// setting (tansu, Kafka before 3.6) answers with an error, which is logged; `tally run`
/// refuses such records either way.
pub async fn limit_future_timestamps(config: &KafkaConfig, skew: Duration) {
    let millis = skew.as_millis().to_string();
    for topic in [&config.usage_topic, &config.commands_topic] {
        match set_topic_config(config, topic, TIMESTAMP_AFTER_MAX, &millis).await {
            Ok(()) => {
                tracing::info!(topic = %topic, setting = TIMESTAMP_AFTER_MAX, value = %millis, "topic refuses records stamped too far ahead")
            }
            Err(e) => tracing::info!(
                topic = %topic,
                setting = TIMESTAMP_AFTER_MAX,
                error = %e,
                "the broker did not take the setting; tally run still dead-letters records stamped too far ahead"
            ),
        }
    }
}

/// Sets one topic setting, keeping the others set on the topic (AlterConfigs replaces the
/// whole set: the incremental call is not in the client).
async fn set_topic_config(
    config: &KafkaConfig,
    topic: &str,
    name: &str,
    value: &str,
) -> Result<(), KafkaError> {
    use rdkafka::admin::{AlterConfig, ConfigSource, ResourceSpecifier};
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let resource = ResourceSpecifier::Topic(topic);
    let described = admin.describe_configs([&resource], &options).await?;
    let problem = |problem: String| KafkaError::TopicConfig {
        topic: topic.to_string(),
        problem,
    };
    let current = match described.into_iter().next() {
        Some(Ok(current)) => current,
        Some(Err(code)) => return Err(problem(format!("cannot describe its settings: {code}"))),
        None => return Err(problem("no description of its settings".into())),
    };
    if current.get(name).and_then(|e| e.value.as_deref()) == Some(value) {
        return Ok(());
    }
    let kept: Vec<(&str, &str)> = current
        .entries
        .iter()
        .filter(|e| e.source == ConfigSource::DynamicTopic && e.name != name)
        .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
        .collect();
    let alter = kept
        .into_iter()
        .fold(AlterConfig::new(resource), |alter, (k, v)| alter.set(k, v))
        .set(name, value);
    match admin
        .alter_configs([&alter], &options)
        .await?
        .into_iter()
        .next()
    {
        Some(Ok(_)) => Ok(()),
        Some(Err((_, code))) => Err(problem(format!("cannot set `{name}`: {code}"))),
        None => Err(problem(format!("no answer to setting `{name}`"))),
    }
}

/// The partition's end as of the consumer's last fetch response, read from librdkafka's
/// cache without a request. The fetch responses are what to trust: tansu 0.6 answers a
/// ListOffsets(latest) request with the base offset of the last batch plus one, which
/// falls short whenever the last batch holds several records.
pub fn fetched_high_watermark<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    fetched_high_watermark_of(consumer, &topic, partition)
}

/// [`fetched_high_watermark`] with the topic's name already a C string.
pub fn fetched_high_watermark_of<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &std::ffi::CStr,
    partition: i32,
) -> Option<i64> {
    use rdkafka::consumer::Consumer;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client pointer lives as long as `consumer`; `topic` is a valid C string
    // for the duration of the call; `low` and `high` are valid for writes.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// End offsets of every partition of `topics`, as the brokers' fetch responses state them
/// (see [`fetched_high_watermark`]); `None` for a partition that did not answer in time.
pub fn end_offsets(
    config: &KafkaConfig,
    topics: &[&str],
) -> Result<std::collections::BTreeMap<(String, i32), Option<i64>>, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = client_config(config)
        .set("group.id", format!("{}-status", config.group_id))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in metadata.topics().iter().filter(|t| t.name() == *topic) {
            for p in t.partitions() {
                assignment.add_partition_offset(topic, p.id(), rdkafka::Offset::End)?;
            }
        }
    }
    consumer.assign(&assignment)?;
    let mut ends = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        for element in assignment.elements() {
            let high = fetched_high_watermark(&consumer, element.topic(), element.partition());
            ends.insert((element.topic().to_string(), element.partition()), high);
        }
        if ends.values().all(Option::is_some) || std::time::Instant::now() >= deadline {
            return Ok(ends);
        }
        let _ = consumer.poll(Duration::from_millis(50));
    }
}

/// The consumer group's committed offsets for `topics`.
pub fn group_offsets(
    config: &KafkaConfig,
    partitions: &[(String, i32)],
) -> Result<std::collections::BTreeMap<(String, i32), i64>, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = client_config(config)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = rdkafka::TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(reason: String, key: Option<Vec<u8>>, payload: Vec<u8>) -> DeadLetter {
        DeadLetter {
            topic: "ai.usage".into(),
            partition: 3,
            offset: 17,
            key,
            payload,
            code: "bad_data",
            reason,
        }
    }

    fn size(shaped: &Shaped<'_>) -> usize {
        shaped.payload.len()
            + shaped.key.map_or(0, <[u8]>::len)
            + shaped
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    fn header<'a>(shaped: &'a Shaped<'_>, name: &str) -> Option<&'a str> {
        shaped
            .headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn cut_utf8_stops_on_a_character_boundary() {
        assert_eq!(cut_utf8("abc", 5), "abc");
        assert_eq!(cut_utf8("abc", 2), "ab");
        // `한` is 3 bytes: 4 bytes hold one of them and no half of the next.
        assert_eq!(cut_utf8("한국어", 4), "한");
        assert_eq!(cut_utf8("한국어", 6), "한국");
        assert_eq!(cut_utf8("한", 2), "");
    }

    #[test]
    fn a_small_dead_letter_goes_out_whole() {
        let original = letter(
            "unknown field `x`".into(),
            Some(b"acme".to_vec()),
            b"{}".to_vec(),
        );
        let shaped = shape(&original);
        assert_eq!(shaped.payload, b"{}");
        assert_eq!(shaped.key, Some(&b"acme"[..]));
        assert_eq!(shaped.reason, "unknown field `x`");
        assert_eq!(header(&shaped, "tally.source.topic"), Some("ai.usage"));
        assert_eq!(header(&shaped, "tally.source.partition"), Some("3"));
        assert_eq!(header(&shaped, "tally.source.offset"), Some("17"));
        assert_eq!(header(&shaped, "tally.payload.truncated"), None);
        assert_eq!(header(&shaped, "tally.key.truncated"), None);
    }

    /// The record: a reason echoing a 600 KB field and a payload at the limit.
    #[test]
    fn a_dead_letter_at_the_limit_is_cut_to_fit_and_says_so() {
        let reason = format!("unknown field `{}`", "é".repeat(300_000));
        let payload = vec![b'x'; MESSAGE_MAX_BYTES - 10];
        let key = vec![b'k'; 5_000];
        let original = letter(reason, Some(key), payload);
        let shaped = shape(&original);
        assert!(shaped.reason.len() <= REASON_MAX_BYTES && shaped.reason.len() > 1000);
        assert!(original.reason.starts_with(shaped.reason));
        assert_eq!(shaped.key.map(<[u8]>::len), Some(DEAD_LETTER_KEY_MAX_BYTES));
        assert_eq!(header(&shaped, "tally.key.truncated"), Some("5000"));
        assert_eq!(
            header(&shaped, "tally.payload.truncated"),
            Some((MESSAGE_MAX_BYTES - 10).to_string().as_str())
        );
        assert!(shaped.payload.len() < original.payload.len());
        assert!(fits_producer(size(&shaped)), "{} bytes", size(&shaped));
    }
}
