//! What every task shares with the system: the workspace root, cargo and other commands run
//! and captured, JSON string quoting, and the system packages a task installs when absent
//! (lavapipe for wgpu, OpenBLAS), plus whether a CUDA device is present.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

pub(crate) fn run(mut cmd: Command, what: &str) -> Result<(), String> {
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

/// A Vulkan driver for the wgpu tests: Mesa's lavapipe (a CPU Vulkan device) when no Vulkan
/// ICD is installed, from Debian's `mesa-vulkan-drivers` + `libvulkan1`.
pub(crate) fn ensure_vulkan() -> Result<(), String> {
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
pub(crate) fn ensure_openblas() -> Result<(), String> {
    if openblas_installed() {
        return Ok(());
    }
    eprintln!("xtask: no OpenBLAS; installing Debian's libopenblas0-pthread");
    apt_install(&["libopenblas0-pthread"]).map_err(|e| {
        format!("{e}; the OpenBLAS GEMM's tests need it: install Debian's libopenblas0-pthread")
    })
}

/// `apt-get install` (through `sudo -n` when not root).
pub(crate) fn apt_install(packages: &[&str]) -> Result<(), String> {
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

pub(crate) fn cuda_device_present() -> bool {
    Path::new("/dev/nvidia0").exists() || Path::new("/proc/driver/nvidia/version").exists()
}

pub(crate) fn capture(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// A JSON string literal.
pub(crate) fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Whether OpenBLAS's runtime library is on the loader's path (`ldconfig -p`).
pub(crate) fn openblas_installed() -> bool {
    capture("ldconfig", &["-p"]).contains("libopenblas.so.0")
}
