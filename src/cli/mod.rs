//! The command line: one module per command family, and the table printer they share.

pub mod commands;
pub mod table;
