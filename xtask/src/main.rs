//! `cargo xtask <task>`: the project's entry points.
//!
//! - `train | eval | predict | synth | quantize-report [ARGS]`: run the `tracknet` CLI (no
//!   arguments to `train`: the embedded synthetic QLoRA default).
//! - `test`: fmt check, clippy -D warnings, the whole test suite on NdArray, and the `cuda`
//!   feature compile; plus the tests on CUDA when a CUDA device is present.
//! - `bench [--quick] [--quality] [--out FILE] [FLAGS]`: every mode in its own process, one
//!   JSON file (`bench-results/bench.json`) + a table and the goal checks (see `bench.rs`).
//! - `ci`: what CI runs (`test`).

mod bench;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!(
            "usage: cargo xtask <train|eval|predict|synth|quantize-report|bench|test|ci> [ARGS]"
        );
        return ExitCode::from(2);
    };
    let result = match task.as_str() {
        "train" | "eval" | "predict" | "synth" | "quantize-report" | "export" => {
            tracknet(task, rest)
        }
        "bench" => bench::run(rest),
        "test" | "ci" => test(),
        other => Err(format!(
            "unknown task `{other}`; expected train|eval|predict|synth|quantize-report|bench|test|ci"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: could not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what}: failed ({status})"))
    }
}

/// Run the `tracknet` binary (built in the dev profile, whose dependencies are optimised, so
/// tests and training share one build). Cargo's own progress is shown: a cold build takes
/// minutes, and a silent one looks hung.
fn tracknet(task: &str, rest: &[String]) -> Result<(), String> {
    let mut c = cargo();
    c.args(["run", "-p", "tracknet-train", "--bin", "tracknet"]);
    if cuda_requested(rest) {
        c.args(["--features", "cuda"]);
    }
    c.arg("--").arg(task).args(rest);
    run(c, &format!("tracknet {task}"))
}

/// `--device cuda[:N]` or `--device=cuda[:N]` asks for the CUDA build.
fn cuda_requested(rest: &[String]) -> bool {
    rest.iter().any(|a| a.starts_with("--device=cuda"))
        || rest
            .windows(2)
            .any(|w| w[0] == "--device" && w[1].starts_with("cuda"))
}

fn cuda_device_present() -> bool {
    Path::new("/dev/nvidia0").exists() || Path::new("/proc/driver/nvidia/version").exists()
}

fn test() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run(fmt, "cargo fmt --check")?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy, "cargo clippy --workspace --all-targets -D warnings")?;
    let mut t = cargo();
    t.args(["test", "--workspace"]);
    run(t, "cargo test --workspace (ndarray)")?;
    let mut check = cargo();
    check.args(["check", "--workspace", "--features", "tracknet-train/cuda"]);
    run(
        check,
        "cargo check --features cuda (backend swap compile; needs no CUDA toolkit)",
    )?;
    if cuda_device_present() {
        let mut t = cargo();
        t.args(["test", "--workspace", "--features", "tracknet-train/cuda"]);
        run(t, "cargo test --features cuda (a CUDA device is present)")?;
    } else {
        eprintln!(
            "xtask: no CUDA device present; CUDA tests not run (the cuda feature was compiled)"
        );
    }
    Ok(())
}
