//! Kafka at the edge: client settings, the producer for commands and dead letters, and
//! topic creation.

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
        // here put the median hold 45 ms later). With records waiting, fetches return at
        // once whatever it is.
        .set("fetch.wait.max.ms", "10");
    if !config.instance_id.is_empty() {
        client.set("group.instance.id", &config.instance_id);
    }
    client
}

pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    Ok(client_config(config)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()?)
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

/// Sends `letters` to `dlq_topic` with the reason in headers, and waits for every
/// acknowledgement.
pub async fn send_dead_letters(
    producer: &FutureProducer,
    dlq_topic: &str,
    letters: &[DeadLetter],
) -> Result<(), KafkaError> {
    let mut deliveries = Vec::with_capacity(letters.len());
    for letter in letters {
        let offset = letter.offset.to_string();
        let partition = letter.partition.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "tally.reason",
                value: Some(&letter.reason),
            })
            .insert(Header {
                key: "tally.reason.code",
                value: Some(letter.code),
            })
            .insert(Header {
                key: "tally.source.topic",
                value: Some(&letter.topic),
            })
            .insert(Header {
                key: "tally.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "tally.source.offset",
                value: Some(&offset),
            });
        let mut record = FutureRecord::<[u8], [u8]>::to(dlq_topic)
            .payload(&letter.payload)
            .headers(headers);
        if let Some(key) = &letter.key {
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

/// The partition's end as of the consumer's last fetch response, read from librdkafka's
/// cache without a request. The fetch responses are what to trust: tansu 0.6 answers a
/// ListOffsets(latest) request with the base offset of the last batch plus one, which
/// falls short whenever the last batch holds several records.
pub fn fetched_high_watermark<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    use rdkafka::consumer::Consumer;
    let topic = std::ffi::CString::new(topic).ok()?;
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
