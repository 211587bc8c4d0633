//! Progress output: a live line on a terminal, plain log lines otherwise.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Reports steps of an epoch.
pub struct Progress {
    tty: bool,
    quiet: bool,
    every: usize,
    start: Instant,
    epoch: usize,
    epochs: usize,
    total: usize,
}

impl Progress {
    /// `every`: log interval (steps) when not on a terminal.
    pub fn new(epoch: usize, epochs: usize, total: usize, every: usize, quiet: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            quiet,
            every: every.max(1),
            start: Instant::now(),
            epoch,
            epochs,
            total,
        }
    }

    /// After step `step` (1-based) with the running mean loss.
    pub fn step(&self, step: usize, loss: f64, lr: f64) {
        if self.quiet {
            return;
        }
        let secs = self.start.elapsed().as_secs_f64();
        let it_s = step as f64 / secs.max(1e-9);
        let eta = (self.total.saturating_sub(step)) as f64 / it_s.max(1e-9);
        let line = format!(
            "epoch {}/{} step {step}/{} loss {loss:.5} lr {lr:.2e} {it_s:.2} it/s ETA {}",
            self.epoch,
            self.epochs,
            self.total,
            fmt_secs(eta)
        );
        if self.tty {
            let bar = bar(step, self.total, 24);
            eprint!("\r\x1b[2K{bar} {line}");
            let _ = std::io::stderr().flush();
            if step == self.total {
                eprintln!();
            }
        } else if step.is_multiple_of(self.every) || step == self.total {
            eprintln!("{line}");
        }
    }
}

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
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
