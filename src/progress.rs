//! Progress of long work (`tally send` of a file, `tally run --drain` over a backlog): a
//! bar on a terminal, a log line every `pipeline.progress_interval` otherwise. Both go to
//! stderr, never stdout (JSON output there is read by scripts).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Reports counts kept elsewhere: callers pass their totals in, so the hot loop only
/// adds to its counters and this formats at most once per draw or interval.
pub struct Progress {
    /// What is being done, for the log line (`send`, `drain`).
    what: &'static str,
    /// The unit of `left` (`records`, `bytes`), for the log line.
    left_unit: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    interval: Duration,
    last_log: Instant,
}

impl Progress {
    /// A bar when stderr is a terminal, else a log line at most every `interval`.
    pub fn new(what: &'static str, left_unit: &'static str, interval: Duration) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(what);
            bar
        });
        let now = Instant::now();
        Progress {
            what,
            left_unit,
            bar,
            started: now,
            interval,
            last_log: now,
        }
    }

    /// `done` events so far; `left` what is known to be left (in `left_unit`) and `total`
    /// the whole (same unit), when known. Cheap when nothing is due.
    pub fn update(&mut self, done: u64, left: Option<u64>, total: Option<u64>) {
        match &self.bar {
            Some(bar) => {
                // indicatif draws at most 20 times a second whatever the update rate.
                if let Some(total) = total {
                    bar.set_length(total);
                    bar.set_position(total.saturating_sub(left.unwrap_or(total)));
                }
                bar.set_message(format!("{done} events, {:.0}/s", self.rate(done)));
            }
            None => {
                let now = Instant::now();
                if now.duration_since(self.last_log) >= self.interval {
                    self.last_log = now;
                    self.log(done, left, total, false);
                }
            }
        }
    }

    /// The last line (or clears the bar), whatever the interval.
    pub fn finish(&mut self, done: u64, left: Option<u64>, total: Option<u64>) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.log(done, left, total, true);
    }

    fn rate(&self, done: u64) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            done as f64 / secs
        } else {
            0.0
        }
    }

    fn log(&self, done: u64, left: Option<u64>, total: Option<u64>, finished: bool) {
        tracing::info!(
            what = self.what,
            done,
            rate_per_second = self.rate(done).round() as u64,
            // Absent while unknown (before partitions are assigned; stdin's size).
            left,
            total,
            unit = self.left_unit,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            finished,
            "progress"
        );
    }
}
