//! What a running `tally run` reports about itself, and the owner's answers to `tally
//! serve`, over its HTTP endpoint on `status.listen`: the status model (`model`), the
//! endpoint and its routes (`server`), the owner's internal API for checks and holds
//! (`internal`), the client `tally status` asks with (`client`) and the connections that
//! time out, which `tally serve` shares (`timed`).

pub mod client;
pub mod internal;
pub mod model;
pub mod server;
pub mod timed;

pub use client::fetch;
pub use model::{PartitionStatus, ProcessState, ProcessStatus, Shared};
pub use server::{bind, serve, Endpoint, Exposition, StatusError};
