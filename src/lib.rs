//! tally's shell around the pure core (`tally-core`): config, Kafka, ClickHouse, the run
//! loop, low-credit emails and the command line. Decisions live in the core; this crate
//! moves data.

pub mod cli;
pub mod config;
pub mod holds;
pub mod kafka;
pub mod notify;
pub mod partitioner;
pub mod progress;
pub mod report;
pub mod run;
pub mod serve;
pub mod status;
pub mod store;
pub mod tls;
