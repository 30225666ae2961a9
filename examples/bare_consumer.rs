//! Benchmark baseline: a bare rdkafka consumer reading every partition of a topic to its
//! end, doing nothing with the messages. `tally run`'s throughput is compared with this.
//! `cargo run --release --example bare_consumer -- BROKERS TOPIC EXPECTED_MESSAGES`

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, topic) = (&args[1], &args[2]);
    let expected: u64 = args[3].parse()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tally-bench-bare")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let (mut n, mut bytes) = (0u64, 0usize);
    while n < expected {
        if let Some(Ok(message)) = consumer.poll(Duration::from_secs(5)) {
            n += 1;
            bytes += message.payload().map_or(0, <[u8]>::len);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bare consumer: {n} messages ({} MB) in {secs:.2} s: {:.0} messages/s",
        bytes / 1_000_000,
        n as f64 / secs
    );
    Ok(())
}
