//! `cargo xtask <task>`: the project's entry points.
//!
//! - `train | eval | predict | synth | quantize-report [ARGS]`: run the `tracknet` CLI (no
//!   arguments to `train`: the embedded synthetic QLoRA default).
//! - `test`: fmt check, clippy -D warnings (with the `wgpu` and `cuda` features, so both
//!   backends' code is compiled), the whole test suite with the backend-generic tests on
//!   NdArray **and** wgpu (Mesa's lavapipe, installed when absent), plus the tests on CUDA
//!   when a CUDA device is present.
//! - `bench [--quick] [--quality] [--vs-torch] [--out FILE] [FLAGS]`: every mode in its own
//!   process, one JSON file (`bench-results/bench.json`) + a table and the goal checks (see
//!   `bench.rs`); `--vs-torch` adds the PyTorch peer mode by mode (`peer.rs`).
//! - `device-bundle [--backend cuda|wgpu]`: the bench and the backend suites' test binaries,
//!   built here for a lent GPU machine, which runs them with `.ci/device-check.sh`
//!   (`device.rs`).
//! - `ci`: what CI runs (`test`).

#![forbid(unsafe_code)]

mod bench;
mod device;
mod peer;
mod sys;

use std::process::ExitCode;

use sys::{cargo, cuda_device_present, ensure_openblas, ensure_vulkan, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        eprintln!(
            "usage: cargo xtask <train|eval|predict|synth|quantize-report|bench|device-bundle|test|ci> [ARGS]"
        );
        return ExitCode::from(2);
    };
    let result = match task.as_str() {
        "train" | "eval" | "predict" | "synth" | "quantize-report" | "export" => {
            tracknet(task, rest)
        }
        "bench" => bench::run(rest),
        "device-bundle" => device::bundle(rest),
        "test" | "ci" => test(),
        other => Err(format!(
            "unknown task `{other}`; expected train|eval|predict|synth|quantize-report|bench|device-bundle|test|ci"
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

/// Run the `tracknet` binary (built in the dev profile, whose dependencies are optimised, so
/// tests and training share one build). Cargo's own progress is shown: a cold build takes
/// minutes, and a silent one looks hung.
fn tracknet(task: &str, rest: &[String]) -> Result<(), String> {
    let mut c = cargo();
    c.args(["run", "-p", "tracknet-train", "--bin", "tracknet"]);
    if device_requested(rest, "cuda") {
        c.args(["--features", "cuda"]);
    }
    if device_requested(rest, "wgpu") {
        c.args(["--features", "wgpu"]);
    }
    c.arg("--").arg(task).args(rest);
    run(c, &format!("tracknet {task}"))
}

/// `--device cuda[:N]` / `--device=cuda[:N]` asks for the CUDA build, `--device wgpu` for the
/// wgpu one.
fn device_requested(rest: &[String], backend: &str) -> bool {
    rest.iter()
        .any(|a| a.starts_with(&format!("--device={backend}")))
        || rest
            .windows(2)
            .any(|w| w[0] == "--device" && w[1].starts_with(backend))
}

/// `PKG/feature` for every crate that has the backend feature.
fn backend_features(backends: &[&str]) -> String {
    let mut list = Vec::new();
    for b in backends {
        for pkg in [
            "tracknet-quant",
            "tracknet-lora",
            "tracknet-vit",
            "tracknet-train",
        ] {
            list.push(format!("{pkg}/{b}"));
        }
    }
    list.join(",")
}

fn test() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run(fmt, "cargo fmt --check")?;
    // One check of every target with both GPU backends compiled in (burn-cuda builds without a
    // CUDA toolkit and loads the driver at run time).
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        &backend_features(&["wgpu", "cuda"]),
        "--",
        "-D",
        "warnings",
    ]);
    run(
        clippy,
        "cargo clippy --workspace --all-targets --features wgpu,cuda -D warnings",
    )?;
    ensure_vulkan()?;
    ensure_openblas()?;
    let mut t = cargo();
    // The GEMM tests then check OpenBLAS's path too (they fail if it does not load).
    t.env("TRACKNET_TEST_OPENBLAS", "1");
    t.args([
        "test",
        "--workspace",
        "--features",
        &backend_features(&["wgpu"]),
    ]);
    // The Vulkan loader asks for a runtime folder (for window surfaces, which the tests never
    // make) and prints an error per device when it has none, as in a CI container.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        t.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    run(
        t,
        "cargo test --workspace --features wgpu (backend-generic tests on ndarray and wgpu)",
    )?;
    if cuda_device_present() {
        let mut t = cargo();
        t.args([
            "test",
            "--workspace",
            "--features",
            &backend_features(&["wgpu", "cuda"]),
        ]);
        run(
            t,
            "cargo test --features wgpu,cuda (a CUDA device is present)",
        )?;
    } else {
        eprintln!(
            "xtask: no CUDA device present; CUDA tests not run (the cuda feature was compiled)"
        );
    }
    Ok(())
}
