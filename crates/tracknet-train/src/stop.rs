//! Graceful stops. People and machines end long runs with SIGINT (Ctrl-C) or SIGTERM (`timeout`,
//! a scheduler's preemption, a cloud instance going away): the first such signal only sets a
//! [`StopFlag`], which the training loop reads between optimizer steps and `predict` between
//! frames, so the work stops at a point it can save (a checkpoint) or drop whole (a staged
//! output folder). A second signal ends the process at once; the atomic writes keep the last
//! checkpoint usable then too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// SIGINT, as `kill -l` numbers it.
pub const SIGINT: i32 = 2;
/// SIGTERM.
pub const SIGTERM: i32 = 15;

/// A request to stop: set by [`StopFlag::on_signals`]'s handlers or by the caller
/// ([`StopFlag::request`]), read by the work between its units. Clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicUsize>);

impl StopFlag {
    /// A flag nobody has set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the work to stop as if `signal` had been received.
    pub fn request(&self, signal: i32) {
        self.0.store(signal.max(1) as usize, Ordering::SeqCst);
    }

    /// The signal that asked for a stop, if one did.
    pub fn requested(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }

    /// A flag set by the first SIGINT or SIGTERM this process receives; a second one exits the
    /// process at once with status 128 + its number (130, 143), as a shell reports a death by
    /// that signal. Installs process-wide handlers: for binaries, not libraries.
    pub fn on_signals() -> std::io::Result<Self> {
        let flag = Self::new();
        let armed = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            // Registered first, so it runs before `armed` is set: the first signal passes it.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, armed.clone())?;
            signal_hook::flag::register(sig, armed.clone())?;
            signal_hook::flag::register_usize(sig, flag.0.clone(), sig as usize)?;
        }
        Ok(flag)
    }
}

/// The exit status for a stop on `signal` (128 + its number).
pub fn exit_status(signal: i32) -> u8 {
    (128 + signal).clamp(0, 255) as u8
}

/// The signal's name for messages.
pub fn signal_name(signal: i32) -> String {
    match signal {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        s => format!("signal {s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_seen_by_every_clone() {
        let flag = StopFlag::new();
        let seen = flag.clone();
        assert_eq!(seen.requested(), None);
        flag.request(SIGTERM);
        assert_eq!(seen.requested(), Some(SIGTERM));
        assert_eq!(exit_status(SIGINT), 130);
        assert_eq!(exit_status(SIGTERM), 143);
    }
}
