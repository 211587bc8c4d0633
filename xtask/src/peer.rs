//! `cargo xtask bench --vs-torch`: the peer stack (PyTorch + transformers + PEFT + bitsandbytes)
//! timed in the same run as our cases, mode by mode and alternately, so the ratios compare two
//! programs on the same machine at the same moment (this machine is shared and noisy; absolute
//! times from another run say little).
//!
//! The peer is `../shared/bench/torch_anchor.py` (or `--torch-anchor FILE`), the original
//! project's model in PyTorch. It runs in a venv: `--torch-python PY` (or
//! `TRACKNET_TORCH_PYTHON`) names an interpreter that has the packages; otherwise one is made
//! under `target/torch-venv` with `pip install torch transformers peft bitsandbytes` from PyPI
//! (about 4 GB with torch's CUDA libraries, which the CPU run loads but does not use). None of
//! those packages' code is part of this repository.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sys::root;

/// The anchor's modes, each paired with the `tracknet-bench case --mode` it is compared with.
/// `infer` is compared with the inference figures of our `full` case (the same dense model).
pub const PAIRS: [(&str, &str); 4] = [
    ("infer", "full"),
    ("full", "full"),
    ("lora", "lora"),
    ("qlora", "qlora-nf4-dq"),
];

/// Where the peer runs: the interpreter and the anchor script.
pub struct Peer {
    pub python: PathBuf,
    pub anchor: PathBuf,
}

impl Peer {
    /// Resolves the anchor script and an interpreter with the packages, making the venv if
    /// neither `--torch-python` nor `TRACKNET_TORCH_PYTHON` names one.
    pub fn prepare(python: Option<PathBuf>, anchor: Option<PathBuf>) -> Result<Self, String> {
        let anchor = anchor.unwrap_or_else(|| {
            root()
                .parent()
                .map(|p| p.join("shared").join("bench").join("torch_anchor.py"))
                .unwrap_or_else(|| PathBuf::from("torch_anchor.py"))
        });
        if !anchor.is_file() {
            return Err(format!(
                "--vs-torch: the peer script {} does not exist (expected the shared \
                 `bench/torch_anchor.py`; pass --torch-anchor FILE)",
                anchor.display()
            ));
        }
        let python =
            match python.or_else(|| std::env::var_os("TRACKNET_TORCH_PYTHON").map(PathBuf::from)) {
                Some(p) => {
                    check_packages(&p)?;
                    p
                }
                // Checked there: a reused venv before use, a new one after pip.
                None => make_venv()?,
            };
        Ok(Self { python, anchor })
    }

    /// One anchor run: `MODE batch steps`, its JSON line wrapped as a bench object
    /// `{"kind":"torch","mode":…,"pair":…,"anchor":{…}}`, or an error object.
    pub fn run(&self, mode: &str, pair: &str, batch: usize, steps: usize) -> String {
        let out = Command::new(&self.python)
            .arg(&self.anchor)
            .args([mode, &batch.to_string(), &steps.to_string()])
            .current_dir(root())
            .stderr(Stdio::inherit())
            .output();
        let fields = format!(
            "\"kind\":\"torch\",\"mode\":{},\"pair\":{}",
            crate::sys::quote(mode),
            crate::sys::quote(pair)
        );
        match out {
            Ok(o) if o.status.success() => {
                let stdout = String::from_utf8_lossy(&o.stdout);
                match stdout
                    .lines()
                    .rev()
                    .find(|l| l.trim_start().starts_with('{'))
                {
                    Some(j) => format!("{{{fields},\"anchor\":{}}}", j.trim()),
                    None => format!("{{{fields},\"error\":\"the anchor printed no JSON line\"}}"),
                }
            }
            Ok(o) => format!(
                "{{{fields},\"error\":{}}}",
                crate::sys::quote(&format!("exit status {}", o.status))
            ),
            Err(e) => format!(
                "{{{fields},\"error\":{}}}",
                crate::sys::quote(&format!("{}: {e}", self.python.display()))
            ),
        }
    }
}

/// The peer's GEMM on the model's shapes (`a @ b` in f32, 1 and 2 threads, median of 15 after
/// 3 untimed), as `tracknet-bench gemm` measures ours: `[m, k, n]` of ViT-S/16's linears at
/// 512×288, batch 2 and 1 (581 tokens a frame).
const GEMM_SCRIPT: &str = r#"
import json, time, torch
shapes = [(1162, 384, 384), (1162, 384, 1536), (1162, 1536, 384),
          (581, 384, 384), (581, 384, 1536), (581, 1536, 384)]
rates, best = [], {}
for threads in (1, 2):
    torch.set_num_threads(threads)
    top = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(15):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        times.sort()
        flops = 2.0 * m * k * n
        median = flops / times[len(times) // 2] / 1e9
        top = max(top, median)
        rates.append({"m": m, "k": k, "n": n, "threads": threads,
                      "gflops_median": median, "gflops_best": flops / times[0] / 1e9})
    best[str(threads)] = top
print(json.dumps({"kind": "gemm", "impl": "torch (a @ b, f32)", "runs": 15,
                  "rates": rates, "best_gflops_by_threads": best}))
"#;

impl Peer {
    /// [`GEMM_SCRIPT`]'s JSON line, or an error object.
    pub fn gemm(&self) -> String {
        let out = Command::new(&self.python)
            .args(["-c", GEMM_SCRIPT])
            .current_dir(root())
            .stderr(Stdio::inherit())
            .output();
        let line = out
            .as_ref()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .rev()
                    .find(|l| l.trim_start().starts_with('{'))
                    .map(|l| l.trim().to_string())
            });
        line.unwrap_or_else(|| {
            let why = match &out {
                Ok(o) => format!("exit status {}", o.status),
                Err(e) => format!("{}: {e}", self.python.display()),
            };
            format!(
                "{{\"kind\":\"gemm\",\"impl\":\"torch\",\"error\":{}}}",
                crate::sys::quote(&why)
            )
        })
    }
}

fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// `target/torch-venv` with the peer's packages (made once, reused).
fn make_venv() -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let venv = target.join("torch-venv");
    let python = venv_python(&venv);
    if python.is_file() && check_packages(&python).is_ok() {
        return Ok(python);
    }
    let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut mk = Command::new(&base);
    mk.args(["-m", "venv"]).arg(&venv);
    crate::sys::run(mk, &format!("{base} -m venv {}", venv.display()))?;
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
    ]);
    crate::sys::run(
        pip,
        "pip install torch transformers peft bitsandbytes (PyPI, ~4 GB)",
    )?;
    check_packages(&python)?;
    Ok(python)
}

/// The interpreter imports the four packages (and prints their versions to the log).
fn check_packages(python: &Path) -> Result<(), String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import torch, transformers, peft, bitsandbytes as b; \
             print('peer: torch', torch.__version__, 'transformers', transformers.__version__, \
             'peft', peft.__version__, 'bitsandbytes', b.__version__, 'threads', torch.get_num_threads())",
        ])
        .output()
        .map_err(|e| format!("--vs-torch: {}: {e}", python.display()))?;
    if out.status.success() {
        eprint!("xtask: {}", String::from_utf8_lossy(&out.stdout));
        Ok(())
    } else {
        Err(format!(
            "--vs-torch: {} cannot import torch, transformers, peft and bitsandbytes:\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
