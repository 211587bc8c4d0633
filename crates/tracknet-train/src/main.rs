//! `tracknet`: train, eval, predict, synth, quantize-report.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // SAFETY: first line of main, no other thread yet.
    unsafe { tracknet_train::backend::single_threaded_host_gemm() };
    let cli = tracknet_train::cli::Cli::parse();
    let quiet = cli.quiet();
    tracknet_train::log::init(quiet);
    tracknet_train::progress::set_quiet(quiet);
    match tracknet_train::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
