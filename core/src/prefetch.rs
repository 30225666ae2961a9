//! Asking the CPU to start loading memory that a call will read soon, so that the loads
//! of one account's state (its fields, its lots) wait on memory together, while other
//! work runs, instead of one after another as the call reaches each of them.

/// Bytes the CPU loads at a time.
const LINE: usize = 64;

/// Most lines asked for one value: a hint for the few lines a call reads, not a copy.
const MAX_LINES: usize = 16;

/// Starts loading the memory of `value`.
#[inline]
pub fn value<T>(value: &T) {
    lines_of::<T>(std::ptr::from_ref(value) as usize);
}

/// Starts loading the lines of a `T` at `address`, which may be stale or no address at
/// all: a prefetch never faults (see [`line_at`]).
#[inline]
pub fn lines_of<T>(address: usize) {
    // A count known when compiling, whatever the value's alignment: the loop unrolls to
    // one instruction a line (the line past the end covers a value that straddles one).
    let lines = (std::mem::size_of::<T>().div_ceil(LINE) + 1).min(MAX_LINES);
    for line in 0..lines {
        line_at((address as *const u8).wrapping_add(line * LINE));
    }
}

/// Starts loading the line where `text` starts: for short texts (names and ids), one
/// instruction where a value spends a loop.
#[inline]
pub fn start(text: &str) {
    line_at(text.as_ptr());
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
#[inline]
fn line_at(at: *const u8) {
    // SAFETY: `sse_prefetch` only needs SSE, and this is compiled only for targets that
    // enable it (all of x86-64). A prefetch never faults and changes no memory, whatever
    // the address.
    unsafe { sse_prefetch(at) }
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
#[target_feature(enable = "sse")]
#[inline]
fn sse_prefetch(at: *const u8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    _mm_prefetch::<_MM_HINT_T0>(at.cast());
}

/// Elsewhere a hint is only a hint: nothing.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
#[inline]
fn line_at(_: *const u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hints change nothing, at any alignment and size, also past the most lines asked.
    #[test]
    fn hints_leave_the_values_as_they_were() {
        let values: Vec<u64> = (0..1000).collect();
        for start in 0..9 {
            lines_of::<[u64; 1000]>(values[start..].as_ptr() as usize);
            value(&values[start]);
        }
        value(&());
        // No address at all, and one past any mapping: still only a hint.
        lines_of::<[u8; 256]>(0);
        lines_of::<[u8; 256]>(usize::MAX - 64);
        assert_eq!(values, (0..1000).collect::<Vec<u64>>());
    }
}
