//! `tracknet`: train, eval, predict, synth, quantize-report.

use std::process::ExitCode;

use clap::Parser;
use tracknet_train::TrainError;

fn main() -> ExitCode {
    // SAFETY: first line of main, no other thread yet.
    unsafe { tracknet_train::backend::single_threaded_host_gemm() };
    let cli = tracknet_train::cli::Cli::parse();
    let quiet = cli.quiet();
    tracknet_train::log::init(quiet);
    tracknet_train::progress::set_quiet(quiet);
    match tracknet_train::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A stop on a signal is no error: one line, and the status a death by it would give.
        Err(e @ (TrainError::Stopped { signal, .. } | TrainError::Interrupted { signal, .. })) => {
            eprintln!("{e}");
            ExitCode::from(tracknet_train::stop::exit_status(signal))
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
