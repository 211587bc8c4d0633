//! Progress: an indicatif bar with rate and ETA on a terminal; plain `tracing` lines (every
//! `log_every` steps) when stderr is not a terminal; nothing but summaries with `--quiet`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Hides every bar and progress line of this process (`--quiet`); summaries still print.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A bar on stderr when it is a terminal and output is not quiet, else `None`.
fn terminal_bar(total: usize, prefix: String, template: &str) -> Option<ProgressBar> {
    if quiet() || !std::io::stderr().is_terminal() {
        return None;
    }
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(prefix);
    bar.enable_steady_tick(Duration::from_millis(250));
    Some(bar)
}

/// Reports the steps of one training epoch.
pub struct Progress {
    bar: Option<ProgressBar>,
    every: usize,
    start: Instant,
    epoch: usize,
    epochs: usize,
    total: usize,
}

impl Progress {
    /// `every`: log interval (steps) when not on a terminal; nothing when quiet
    /// ([`set_quiet`]).
    pub fn new(epoch: usize, epochs: usize, total: usize, every: usize) -> Self {
        let bar = terminal_bar(
            total,
            format!("epoch {epoch}/{epochs}"),
            "{prefix} [{bar:28.cyan/blue}] {pos}/{len} {msg} {per_sec} ETA {eta}",
        );
        Self {
            bar,
            every: every.max(1),
            start: Instant::now(),
            epoch,
            epochs,
            total,
        }
    }

    /// After step `step` (1-based) with the running mean loss.
    pub fn step(&self, step: usize, loss: f64, lr: f64) {
        if quiet() {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {loss:.5} lr {lr:.2e}"));
            bar.set_position(step as u64);
            if step >= self.total {
                bar.finish();
            }
            return;
        }
        if step.is_multiple_of(self.every) || step == self.total {
            let secs = self.start.elapsed().as_secs_f64();
            let it_s = step as f64 / secs.max(1e-9);
            let eta = (self.total.saturating_sub(step)) as f64 / it_s.max(1e-9);
            tracing::info!(
                "epoch {}/{} step {step}/{} loss {loss:.5} lr {lr:.2e} {it_s:.2} it/s ETA {}",
                self.epoch,
                self.epochs,
                self.total,
                fmt_secs(eta)
            );
        }
    }
}

/// A bar for a job of `total` units (eval batches, synthetic clips, exported files), shown on
/// a terminal only; off a terminal the job's summary line is its report.
pub struct Task(Option<ProgressBar>);

impl Task {
    /// Starts the bar, labelled `what` (e.g. `eval`).
    pub fn new(what: &str, total: usize) -> Self {
        Self(terminal_bar(
            total,
            what.to_string(),
            "{prefix} [{bar:28.green/blue}] {pos}/{len} {per_sec} ETA {eta}",
        ))
    }

    /// `done` units finished.
    pub fn set(&self, done: usize) {
        if let Some(bar) = &self.0 {
            bar.set_position(done as u64);
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// [`tracknet_data::generate`] with a bar over the clips written (on a terminal).
pub fn generate_synthetic(
    out: &std::path::Path,
    opts: &tracknet_data::SynthOptions,
) -> Result<tracknet_data::SynthSummary, tracknet_data::DataError> {
    let bar = Task::new("synthetic clips", opts.games * opts.clips);
    tracknet_data::generate_with_progress(out, opts, &mut |done, _| bar.set(done))
}

/// `1h02m`, `3m05s`, `42s`.
pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
