//! `tracknet-bench`: the measurements behind `cargo xtask bench` ([`tracknet_train::bench`]).
//! This binary only installs the counting allocator that the memory probe reads and prints
//! the one JSON object a command returns.

use clap::Parser;
use serde_json::Value;
use tracknet_train::bench::memory::Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    // SAFETY: first line of main, no other thread yet.
    unsafe { tracknet_train::backend::single_threaded_host_gemm() };
    let cli = tracknet_train::bench::Cli::parse();
    tracknet_train::log::init(false);
    match tracknet_train::bench::run(cli) {
        Ok(Value::Null) => {}
        Ok(v) => println!("{v}"),
        Err(e) => {
            tracing::error!("tracknet-bench: {e}");
            std::process::exit(1);
        }
    }
}
