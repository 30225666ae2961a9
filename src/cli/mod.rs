//! The command line, one module per command family: operating (`migrate`, `run`,
//! `status`, `test-email`), sending events (`grant`, `send`, `tick`), reports, and the
//! HTTP server (`serve`).

pub mod events;
pub mod ops;
pub mod reports;
