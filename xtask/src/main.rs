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

mod bench;
mod device;
mod peer;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

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

/// A Vulkan driver for the wgpu tests: Mesa's lavapipe (a CPU Vulkan device) when no Vulkan
/// ICD is installed, from Debian's `mesa-vulkan-drivers` + `libvulkan1`.
fn ensure_vulkan() -> Result<(), String> {
    let icd_dirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"];
    let has_icd = icd_dirs.iter().any(|d| {
        std::fs::read_dir(d)
            .map(|mut e| e.next().is_some())
            .unwrap_or(false)
    });
    let has_loader = [
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib/libvulkan.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if has_icd && has_loader {
        return Ok(());
    }
    eprintln!(
        "xtask: no Vulkan driver; installing Mesa's lavapipe (mesa-vulkan-drivers, libvulkan1)"
    );
    apt_install(&["mesa-vulkan-drivers", "libvulkan1"]).map_err(|e| {
        format!(
            "{e}; the wgpu tests need a Vulkan driver: install Debian's mesa-vulkan-drivers and libvulkan1"
        )
    })
}

/// OpenBLAS's runtime library, which `TRACKNET_GEMM=openblas` loads (tracknet-quant `gemm`):
/// the tests check its path and the bench measures it beside the built-in GEMM.
fn ensure_openblas() -> Result<(), String> {
    if bench::openblas_installed() {
        return Ok(());
    }
    eprintln!("xtask: no OpenBLAS; installing Debian's libopenblas0-pthread");
    apt_install(&["libopenblas0-pthread"]).map_err(|e| {
        format!("{e}; the OpenBLAS GEMM's tests need it: install Debian's libopenblas0-pthread")
    })
}

/// `apt-get install` (through `sudo -n` when not root).
fn apt_install(packages: &[&str]) -> Result<(), String> {
    let sudo = std::env::var("USER").map(|u| u != "root").unwrap_or(false)
        && Command::new("sudo")
            .arg("-n")
            .arg("true")
            .status()
            .is_ok_and(|s| s.success());
    let apt = |args: &[&str]| -> Result<(), String> {
        let mut c = if sudo {
            let mut c = Command::new("sudo");
            c.arg("-n").arg("apt-get");
            c
        } else {
            Command::new("apt-get")
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(c, &format!("apt-get {}", args.join(" ")))
    };
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(packages);
    apt(&["update", "-qq"]).and_then(|()| apt(&install))
}

fn cuda_device_present() -> bool {
    Path::new("/dev/nvidia0").exists() || Path::new("/proc/driver/nvidia/version").exists()
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
