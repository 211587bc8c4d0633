//! `cargo xtask bench [--quick] [--quality] [--out FILE] [FLAGS]`: builds `tracknet-bench` once,
//! runs every case in its own process (so each peak memory is its own), collects the JSON
//! objects with machine info into one file (default `bench-results/bench.json`, written
//! atomically), then prints the table and the goal checks (`tracknet-bench report`).
//!
//! `--quality` adds the short training runs per mode (slow; `--quality-epochs N`, default 3).
//! `--batches 1,2,4,8` adds the memory-vs-batch sweep: full, LoRA, QLoRA NF4+dq and QLoRA
//! NF4+dq with checkpointing at each batch size; the report prints the per-image slope and
//! writes `memory-vs-batch.png` beside the JSON.
//! `--vs-torch` runs the peer stack's model (`peer.rs`) before our case of the same mode, each in
//! its own process, and the report prints the ratios (`--torch-python PY`, `--torch-anchor FILE`).
//! `q4-matmul` runs on each backend: the 4-bit matmul as dispatched (the fused CubeCL kernel for
//! few rows) against dequantize + matmul. `--wgpu` builds with the wgpu backend and adds its
//! `q4-matmul` row (Mesa's lavapipe on a machine without a GPU: the CubeCL path on the CPU).
//! `gemm` measures the dense GEMM rate on the model's shapes (and the peer's `a @ b` with
//! `--vs-torch`): the report's roofline divides each mode's FLOPs by the best rate. The JSON's
//! `machine` names the CPU (model, vendor/family/model/stepping) and its SIMD features.
//! Unrecognised flags (`--steps 3`, `--batch 1`, `--hidden 192`, …) go to every `case`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::peer::{PAIRS, Peer};
use crate::sys::{
    capture, cargo, cuda_device_present, openblas_installed, quote, root, run as run_cmd,
};

/// One process the bench runs: a `tracknet-bench` subcommand, or the peer's anchor in `mode`
/// (compared with our case `pair`).
enum Job {
    Ours(Vec<String>),
    Torch {
        mode: &'static str,
        pair: &'static str,
    },
    /// The peer's GEMM rate on the model's shapes (the roofline's other denominator).
    TorchGemm,
}

/// Cases on one backend: the five modes, then LoRA and QLoRA NF4+dq with checkpointing.
fn cases(backend: &str) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = ["full", "lora", "qlora-nf4", "qlora-nf4-dq", "qlora-fp4"]
        .iter()
        .map(|m| vec!["--mode".into(), m.to_string()])
        .collect();
    for m in ["lora", "qlora-nf4-dq"] {
        v.push(vec!["--mode".into(), m.into(), "--grad-ckpt".into()]);
    }
    for c in &mut v {
        c.extend(["--backend".into(), backend.into()]);
    }
    v
}

pub fn run(rest: &[String]) -> Result<(), String> {
    let mut quick = false;
    let mut quality = false;
    let mut quality_epochs: Option<String> = None;
    let mut batches: Vec<String> = Vec::new();
    let mut out = root().join("bench-results").join("bench.json");
    let mut vs_torch = false;
    let mut wgpu = false;
    let mut torch_python: Option<PathBuf> = None;
    let mut torch_anchor: Option<PathBuf> = None;
    let mut pass = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--quality" => quality = true,
            "--vs-torch" => vs_torch = true,
            "--wgpu" => wgpu = true,
            "--torch-python" => {
                vs_torch = true;
                torch_python = Some(it.next().ok_or("--torch-python needs a file")?.into());
            }
            "--torch-anchor" => {
                vs_torch = true;
                torch_anchor = Some(it.next().ok_or("--torch-anchor needs a file")?.into());
            }
            "--quality-epochs" => {
                quality = true;
                quality_epochs = Some(it.next().ok_or("--quality-epochs needs a number")?.clone());
            }
            "--batches" => {
                let list = it.next().ok_or("--batches needs a list such as 1,2,4,8")?;
                for b in list.split(',').map(str::trim) {
                    match b.parse::<usize>() {
                        Ok(n) if n > 0 => batches.push(n.to_string()),
                        _ => {
                            return Err(format!(
                                "--batches: `{b}` is not a batch size (expected positive integers such as 1,2,4,8)"
                            ));
                        }
                    }
                }
            }
            "--out" => {
                out = PathBuf::from(it.next().ok_or("--out needs a file")?);
            }
            s if s.starts_with("--out=") => out = PathBuf::from(&s[6..]),
            _ => pass.push(a.clone()),
        }
    }
    let cuda = cuda_device_present();
    let peer = if vs_torch {
        if quick {
            return Err(
                "--vs-torch compares the seed's size; it cannot be combined with --quick".into(),
            );
        }
        Some(Peer::prepare(torch_python, torch_anchor)?)
    } else {
        None
    };
    // The peer runs at our cases' batch and step count.
    let flag_value = |name: &str, default: usize| -> Result<usize, String> {
        let eq = format!("{name}=");
        let v = pass
            .windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1].clone())
            .or_else(|| {
                pass.iter()
                    .find_map(|p| p.strip_prefix(&eq).map(str::to_string))
            });
        match v {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{name}: `{v}` is not a positive integer")),
        }
    };
    let peer_batch = flag_value("--batch", 2)?;
    let peer_steps = flag_value("--steps", 5)?;

    let mut build = cargo();
    build.args(["build", "-p", "tracknet-train", "--bin", "tracknet-bench"]);
    let features: Vec<&str> = [("cuda", cuda), ("wgpu", wgpu)]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect();
    if !features.is_empty() {
        build.args(["--features", &features.join(",")]);
    }
    if wgpu {
        crate::sys::ensure_vulkan()?;
    }
    if let Err(e) = crate::sys::ensure_openblas() {
        eprintln!("xtask: {e}; the bench leaves out the OpenBLAS GEMM row");
    }
    run_cmd(build, "cargo build --bin tracknet-bench")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("debug").join("tracknet-bench");

    let quick_flag: Vec<String> = if quick {
        vec!["--quick".into()]
    } else {
        Vec::new()
    };
    let mut jobs: Vec<(String, Job)> = Vec::new();
    for b in backends_run(cuda) {
        for c in cases(b) {
            // The peer's run of this mode goes right before ours (CPU cases only, no checkpointing).
            if peer.is_some() && b == "ndarray" && c.len() == 4 {
                for (mode, pair) in PAIRS.iter().filter(|(_, pair)| *pair == c[1]) {
                    jobs.push((format!("torch_anchor.py {mode}"), Job::Torch { mode, pair }));
                }
            }
            let mut args = vec!["case".to_string()];
            args.extend(c);
            args.extend(quick_flag.iter().cloned());
            args.extend(pass.iter().cloned());
            jobs.push((args[1..].join(" "), Job::Ours(args)));
        }
    }
    if !batches.is_empty()
        && pass
            .iter()
            .any(|p| p == "--batch" || p.starts_with("--batch="))
    {
        return Err("--batches and --batch cannot be combined".into());
    }
    for b in backends_run(cuda) {
        // The main cases above already measured these four modes at the bench's default batch.
        for n in batches.iter().filter(|n| n.as_str() != BENCH_DEFAULT_BATCH) {
            for (mode, ckpt) in [
                ("full", false),
                ("lora", false),
                ("qlora-nf4-dq", false),
                ("qlora-nf4-dq", true),
            ] {
                let mut args: Vec<String> = ["case", "--mode", mode, "--backend", b, "--batch", n]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                if ckpt {
                    args.push("--grad-ckpt".into());
                }
                args.extend(quick_flag.iter().cloned());
                args.extend(pass.iter().cloned());
                jobs.push((args[1..].join(" "), Job::Ours(args)));
            }
        }
    }
    let mut q4_backends: Vec<&str> = backends_run(cuda)
        .into_iter()
        .map(|b| if b == "ndarray" { "cpu" } else { b })
        .collect();
    if wgpu {
        q4_backends.push("wgpu");
    }
    for b in q4_backends {
        let mut args = vec!["q4-matmul".to_string(), "--backend".into(), b.into()];
        if quick {
            args.extend(["--runs".into(), "3".into()]);
        }
        jobs.push((format!("q4-matmul --backend {b}"), Job::Ours(args)));
    }
    // The GEMM rates on the model's shapes: the report's roofline divides by the best.
    let mut g = vec!["gemm".to_string()];
    if quick {
        g.extend(["--runs".into(), "3".into()]);
    }
    jobs.push(("gemm".into(), Job::Ours(g.clone())));
    // OpenBLAS beside it, where installed (`TRACKNET_GEMM=openblas` runs it instead).
    if openblas_installed() && std::env::var("TRACKNET_GEMM").is_err() {
        g.push("--alternative".into());
        jobs.push(("gemm (OpenBLAS)".into(), Job::Ours(g)));
    }
    if peer.is_some() {
        jobs.push(("torch gemm".into(), Job::TorchGemm));
    }
    let mut d = vec!["data".to_string()];
    d.extend(quick_flag.iter().cloned());
    jobs.push(("data".into(), Job::Ours(d)));
    if quality {
        let mut q = vec!["quality".to_string()];
        q.extend(quick_flag.iter().cloned());
        if let Some(e) = &quality_epochs {
            q.extend(["--epochs".to_string(), e.clone()]);
        }
        jobs.push(("quality".into(), Job::Ours(q)));
    }

    let mut objects = Vec::new();
    for (i, (label, job)) in jobs.iter().enumerate() {
        eprintln!("xtask: bench [{}/{}] {label}", i + 1, jobs.len());
        let args = match job {
            Job::Ours(args) => args,
            Job::Torch { mode, pair } => {
                if let Some(p) = &peer {
                    objects.push(p.run(mode, pair, peer_batch, peer_steps));
                }
                continue;
            }
            Job::TorchGemm => {
                if let Some(p) = &peer {
                    objects.push(p.gemm());
                }
                continue;
            }
        };
        let mut cmd = Command::new(&bin);
        if args.iter().any(|a| a == "--alternative") {
            cmd.env("TRACKNET_GEMM", "openblas");
        }
        let output = cmd
            .args(args)
            .current_dir(root())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .map(str::trim);
        match (output.status.success(), json) {
            (true, Some(j)) => objects.push(j.to_string()),
            _ => {
                eprintln!("xtask: bench {label}: failed ({})", output.status);
                let (kind, backend) = if args[0] == "case" {
                    let b = args
                        .windows(2)
                        .find(|w| w[0] == "--backend")
                        .map_or("ndarray", |w| w[1].as_str());
                    ("case", b)
                } else {
                    (args[0].as_str(), "")
                };
                let case = args
                    .windows(2)
                    .find(|w| w[0] == "--mode")
                    .map(|w| {
                        let ckpt = if args.iter().any(|a| a == "--grad-ckpt") {
                            "+ckpt"
                        } else {
                            ""
                        };
                        format!("{}{ckpt}", w[1])
                    })
                    .unwrap_or_else(|| kind.to_string());
                objects.push(format!(
                    "{{\"kind\":{},\"case\":{},\"backend\":{},\"error\":{}}}",
                    quote(kind),
                    quote(&case),
                    quote(backend),
                    quote(&format!("exit status {}", output.status))
                ));
            }
        }
    }

    let machine = format!(
        "{{\"nproc\":{},\"cpu\":{},\"cpu_id\":{},\"simd\":[{}],\"gemm\":{},\"date\":{},\"commit\":{},\"cuda_device\":{},\"quick\":{},\"vs_torch\":{},\"flags\":[{}]}}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        quote(&cpu_model()),
        quote(&cpu_field_line(&[
            "vendor_id",
            "cpu family",
            "model\t",
            "stepping"
        ])),
        cpu_simd()
            .iter()
            .map(|f| quote(f))
            .collect::<Vec<_>>()
            .join(","),
        quote(&std::env::var("TRACKNET_GEMM").unwrap_or_else(|_| "builtin".into())),
        quote(&capture("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        quote(&capture("git", &["rev-parse", "--short", "HEAD"])),
        cuda,
        quick,
        vs_torch,
        pass.iter().map(|p| quote(p)).collect::<Vec<_>>().join(",")
    );
    let doc = format!(
        "{{\n\"machine\": {machine},\n\"cases\": [\n{}\n]\n}}\n",
        objects.join(",\n")
    );
    write_atomic(&out, doc.as_bytes())?;
    eprintln!("xtask: wrote {}", out.display());

    let mut report = Command::new(&bin);
    report.arg("report").arg(&out).current_dir(root());
    run_cmd(report, "tracknet-bench report")
}

/// `tracknet-bench case`'s default `--batch` (`bench::config::Sizes::resolve`), at which the
/// main cases run.
const BENCH_DEFAULT_BATCH: &str = "2";

/// The backends the bench measures: NdArray, and CUDA when a device is present.
fn backends_run(cuda: bool) -> Vec<&'static str> {
    if cuda {
        vec!["ndarray", "cuda"]
    } else {
        vec!["ndarray"]
    }
}

/// The SIMD features of `/proc/cpuinfo`'s first processor that decide which kernels run
/// (the `gemm` crate's AVX-512 / AVX2+FMA paths, the BF16 / AMX units PyTorch may use).
fn cpu_simd() -> Vec<String> {
    const FEATURES: [&str; 12] = [
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_bf16",
        "amx_tile",
    ];
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map_or(Vec::new(), |(_, v)| v.split_whitespace().collect());
    FEATURES
        .iter()
        .filter(|f| flags.contains(f))
        .map(|f| f.to_string())
        .collect()
}

/// `vendor_id GenuineIntel, cpu family 6, model 143, stepping 8`: which CPU, where the model
/// name is generic ("AMD EPYC" under some hypervisors).
fn cpu_field_line(keys: &[&str]) -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    keys.iter()
        .filter_map(|k| {
            info.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_once(':'))
                .map(|(name, v)| format!("{} {}", name.trim(), v.trim()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("bench"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
