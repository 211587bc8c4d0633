//! `device-bundle [--backend cuda|wgpu]`: the binaries a lent GPU machine runs, built here.
//!
//! The `device` tool's machine has the driver and no Rust toolchain or registry, and takes at
//! most 64 MiB of working tree, carried paths included. So the bench and the test binaries of
//! the backend suites are built here, stripped and xz-compressed into `target/device-bundle/`
//! (about 10 MB each), and `.ci/device-check.sh` unpacks and runs them there: the backend
//! suites filtered to the backend's test modules, then the bench's cases on it. `--backend
//! wgpu` makes the same bundle for a dry run on this machine's lavapipe
//! (`DEVICE_CHECK_QUICK=1 OUT=/tmp/out bash .ci/device-check.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sys::{cargo, root, run};

/// The crates whose `it` test binary holds backend suites (`backend_tests!`), in the order
/// they go into the bundle and run: bitsandbytes parity first, then transformers and PEFT
/// parity with the whole model, the end-to-end training, and LoRA's layer math (partly
/// covered by the model suite's PEFT parity) where room is left.
const SUITES: [&str; 4] = [
    "tracknet-quant",
    "tracknet-vit",
    "tracknet-train",
    "tracknet-lora",
];

/// The tree and the carried paths may take this much together on the device machine.
const CARRY_LIMIT: u64 = 64 << 20;

/// Room kept for the bundle's small files and for files the tree gains before the call.
const MARGIN: u64 = 1 << 20;

pub fn bundle(args: &[String]) -> Result<(), String> {
    let backend = match args {
        [] => "cuda",
        [flag, b] if flag == "--backend" && (b == "cuda" || b == "wgpu") => b.as_str(),
        _ => return Err("usage: cargo xtask device-bundle [--backend cuda|wgpu]".into()),
    };
    for tool in ["strip", "xz"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            return Err(format!("device-bundle needs `{tool}` (binutils, xz-utils)"));
        }
    }
    let features = |pkgs: &[&str]| {
        pkgs.iter()
            .map(|p| format!("{p}/{backend}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut c = cargo();
    c.args(["build", "-p", "tracknet-train", "--bin", "tracknet-bench"])
        .args(["--features", &features(&["tracknet-train"])]);
    run(c, &format!("build tracknet-bench --features {backend}"))?;

    let mut c = cargo();
    c.args(["test", "--no-run", "--test", "it", "--message-format=json"]);
    for p in SUITES {
        c.args(["-p", p]);
    }
    c.args(["--features", &features(&SUITES)]);
    eprintln!("xtask: build the backend suites' test binaries --features {backend}");
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo test --no-run: could not start: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo test --no-run: failed ({})", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut binaries = vec![(
        "tracknet-bench".to_string(),
        root().join("target/debug/tracknet-bench"),
    )];
    for p in SUITES {
        let exe = test_executable(&stdout, p)
            .ok_or_else(|| format!("cargo's output names no `it` test binary of {p}"))?;
        binaries.push((format!("it-{p}"), exe));
    }

    let dir = root().join("target/device-bundle");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The bench always; then the suites in order while the tree and the bundle fit (about
    // 10 MB each against a tree of 32 MB: the last suite may have to stay behind).
    let tree = tracked_bytes()?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let (mut total, mut suites, mut left_out) = (0, Vec::new(), Vec::new());
    for (name, exe) in &binaries {
        let dest = dir.join(name);
        std::fs::copy(exe, &dest).map_err(|e| format!("{}: {e}", exe.display()))?;
        let mut strip = Command::new("strip");
        strip.arg(&dest);
        run(strip, &format!("strip {name}"))?;
        let mut xz = Command::new("xz");
        xz.args(["-9", "-T0", "-f"]).arg(&dest);
        run(xz, &format!("xz {name}"))?;
        let packed = dir.join(format!("{name}.xz"));
        let size = file_size(&packed);
        if tree + total + size + MARGIN > CARRY_LIMIT {
            std::fs::remove_file(&packed).map_err(|e| format!("{}: {e}", packed.display()))?;
            left_out.push(name.clone());
            continue;
        }
        total += size;
        if let Some(pkg) = name.strip_prefix("it-") {
            suites.push(pkg.to_string());
        }
    }
    if left_out.iter().any(|n| n == "tracknet-bench") {
        return Err(format!(
            "the tree ({:.1} MiB) leaves no room for the bench binary in the device tool's 64 MiB",
            mib(tree)
        ));
    }
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write("backend", format!("{backend}\n"))?;
    write("commit", format!("{}\n", commit()))?;
    write("suites", suites.join("\n") + "\n")?;
    // The test binaries look for configs and fixtures under the path they were built in.
    write("built-at", format!("{}\n", root().display()))?;
    eprintln!(
        "xtask: target/device-bundle: {:.1} MiB of binaries + {:.1} MiB of tracked files = {:.1} of the device tool's 64 MiB",
        mib(total),
        mib(tree),
        mib(total + tree)
    );
    if !left_out.is_empty() {
        eprintln!(
            "xtask: left out to fit: {} (run its {backend} tests in a second call)",
            left_out.join(", ")
        );
    }
    eprintln!(
        "xtask: on a lent machine: run(command: \"bash .ci/device-check.sh\", carry: [\"target/device-bundle\"], timeout_s: 600)"
    );
    Ok(())
}

/// The `it` test executable of package `pkg` in `cargo test --message-format=json` output.
fn test_executable(json_lines: &str, pkg: &str) -> Option<PathBuf> {
    // A path package's id: `path+file:///…/crates/{pkg}#0.1.0`, or `…#{pkg}@0.1.0` where the
    // folder is named otherwise.
    let (by_folder, by_name) = (format!("/{pkg}#"), format!("#{pkg}@"));
    json_lines
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter(|l| l.contains(&by_folder) || l.contains(&by_name))
        .filter(|l| l.contains("\"name\":\"it\""))
        .find_map(|l| {
            let key = "\"executable\":\"";
            let start = l.find(key)? + key.len();
            let end = start + l[start..].find('"')?;
            Some(PathBuf::from(&l[start..end]))
        })
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Bytes of the files git tracks: what travels to the device machine besides carried paths.
fn tracked_bytes() -> Result<u64, String> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("git ls-files: {e}"))?;
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| file_size(&root().join(String::from_utf8_lossy(p).as_ref())))
        .sum())
}

/// The short commit the binaries were built from (`-dirty` with uncommitted changes).
fn commit() -> String {
    let head = crate::sys::capture("git", &["rev-parse", "--short", "HEAD"]);
    let changes = crate::sys::capture("git", &["status", "--porcelain", "--untracked-files=no"]);
    if changes.is_empty() {
        head
    } else {
        format!("{head}-dirty")
    }
}
