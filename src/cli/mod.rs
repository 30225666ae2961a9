//! The command line, one module per command family: operating (`migrate`, `run`,
//! `status`, `test-email`), sending events (`grant`, `send`, `tick`), reports, and the
//! HTTP server (`serve`).

pub mod events;
pub mod ops;
pub mod reports;

/// An id or name argument (account, lot, pool, ...), by the rules of the core's parser: at
/// most 256 bytes, no control characters, not blank.
pub fn parse_id(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    tally_core::event::check_name(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}

/// A free-text argument (comment, reference): at most 2 KB.
pub fn parse_text(text: &str) -> Result<String, String> {
    tally_core::event::check_text(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}
