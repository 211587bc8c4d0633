//! The `tracknet-bench` binary: the report (memory per image, device memory, the roofline and
//! the speed goals), mixed-precision cases, the GEMM rate.

use crate::common::*;

/// `tracknet-bench report` of `doc` written to `file`: its standard output, after asserting
/// that it succeeded.
fn bench_report(file: &Path, doc: &serde_json::Value) -> String {
    std::fs::write(file, doc.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracknet-bench"))
        .arg("report")
        .arg(file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn bench_report_fits_memory_per_image_and_charts_it() {
    let dir = tmp("bench-report");
    // Two cases at three batch sizes with exact lines (100 MB + 50 MB/image and 80 MB +
    // 20 MB/image), one at a single batch (no line), and a failed case.
    let case = |name: &str, batch: u64, peak: f64| {
        serde_json::json!({"kind": "case", "case": name, "backend": "ndarray",
            "sizes": {"batch": batch}, "peak_rss_bytes": peak})
    };
    let mut cases = Vec::new();
    for b in [1u64, 2, 4] {
        cases.push(case("full", b, 100e6 + 50e6 * b as f64));
        cases.push(case("qlora-nf4-dq+ckpt", b, 80e6 + 20e6 * b as f64));
    }
    cases.push(case("lora", 2, 150e6));
    cases.push(
        serde_json::json!({"kind": "case", "case": "lora", "backend": "ndarray",
        "error": "exit status 1"}),
    );
    let doc = serde_json::json!({"machine": {"cpu": "test", "nproc": 2}, "cases": cases});
    let stdout = bench_report(&dir.join("bench.json"), &doc);
    // 16 GiB = 17179.9 MB: (17179.9 - 100) / 50 = 341.6; (17179.9 - 80) / 20 = 854.99.
    // 24 GiB = 25769.8 MB: 513.4 and 1284.5.
    assert!(
        stdout.contains("| full | ndarray | 150.0 | 200.0 | 300.0 | 50.0 | 100.0 | 341 | 513 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "| qlora-nf4-dq+ckpt | ndarray | 100.0 | 120.0 | 160.0 | 20.0 | 80.0 | 854 | 1284 |"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("| lora | ndarray | -"), "{stdout}");
    let png = image::open(dir.join("memory-vs-batch.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(png.dimensions(), (900, 520));
    for colour in [[31u8, 119, 180], [255, 127, 14]] {
        let n = png.pixels().filter(|p| p.0 == colour).count();
        assert!(n > 100, "series {colour:?} drawn: {n} pixels");
    }
    // No sweep in the file: no chart, no table.
    std::fs::remove_file(dir.join("memory-vs-batch.png")).unwrap();
    let stdout = bench_report(
        &dir.join("single.json"),
        &serde_json::json!({"machine": {}, "cases": [case("full", 2, 1e8)]}),
    );
    assert!(!stdout.contains("memory vs batch"));
    assert!(!dir.join("memory-vs-batch.png").exists());
}

/// `tracknet-bench case --amp`: a mixed-precision case names itself, says which dtype its step
/// ran in (none on NdArray, which trains in f32 then, as a run does), and with fp16 the loss
/// scaler finds a scale in the warm-up instead of stepping with overflowed gradients (the
/// timed steps' losses stay finite). The device-memory figures are there on wgpu only.
#[test]
fn bench_case_runs_mixed_precision_as_training_does() {
    let mut backends = vec!["ndarray"];
    if cfg!(feature = "wgpu") {
        backends.push("wgpu");
    }
    for backend in backends {
        let out = Command::new(env!("CARGO_BIN_EXE_tracknet-bench"))
            .args([
                "case",
                "--mode",
                "qlora-nf4-dq",
                "--quick",
                "--backend",
                backend,
            ])
            .args(["--amp", "fp16", "--compute-dtype", "float16"])
            .args(["--steps", "2", "--warmup", "1", "--infer-runs", "1"])
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{backend}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["case"], "qlora-nf4-dq+amp-fp16", "{backend}");
        let timed =
            &v["losses"].as_array().unwrap()[v["warmup_seconds"].as_array().unwrap().len()..];
        assert_eq!(timed.len(), 2, "{backend}: {v}");
        assert!(
            timed.iter().all(|l| l.as_f64().is_some_and(f64::is_finite)),
            "{backend}: timed losses {timed:?}"
        );
        assert_eq!(v["skipped_steps"], 0, "{backend}");
        if backend == "ndarray" {
            assert!(v["amp"].is_null() && v["loss_scale"].is_null(), "{v}");
            assert!(stderr.contains("training.amp (precision fp16)"), "{stderr}");
            assert!(v["device_peak_in_use_bytes"].is_null(), "{v}");
        } else {
            assert_eq!(v["amp"], "f16");
            let scale = v["loss_scale"].as_f64().unwrap();
            assert!(scale < 65536.0, "the scaler never halved: {scale}");
            assert!(v["device_peak_in_use_bytes"].as_u64().unwrap() > 0, "{v}");
        }
    }
}

/// On the CubeCL backends the tensors are in the device allocator: the report's memory goals and
/// its memory-vs-batch lines read the device figures there, the resident set on NdArray.
#[test]
fn bench_report_reads_device_memory_on_the_gpu_backends() {
    let dir = tmp("bench-report-device");
    // 100 MB of f32 weights quantized. On wgpu the device saves 90 MB (goal: 80), the host's
    // resident set nothing; on NdArray the other way round.
    let case = |backend: &str, name: &str, batch: u64, rss: f64, device: f64| {
        serde_json::json!({"kind": "case", "case": name, "backend": backend,
            "sizes": {"batch": batch}, "quantized_f32_bytes": 100e6,
            "peak_rss_bytes": rss, "peak_heap_bytes": rss,
            "device_peak_in_use_bytes": device, "device_peak_reserved_bytes": device + 1e6,
            "step_seconds_median": 1.0})
    };
    let mut cases = vec![
        case("wgpu", "lora", 2, 500e6, 300e6),
        case("wgpu", "qlora-nf4-dq", 2, 500e6, 210e6),
        case("ndarray", "lora", 2, 300e6, f64::NAN),
        case("ndarray", "qlora-nf4-dq", 2, 210e6, f64::NAN),
    ];
    // A wgpu sweep: 10 MB + 5 MB/image reserved on the device, a flat resident set.
    for b in [1u64, 2, 4] {
        cases.push(case("wgpu", "full", b, 900e6, 9e6 + 5e6 * b as f64));
    }
    let doc = serde_json::json!({"machine": {"cpu": "test", "nproc": 2}, "cases": cases});
    let stdout = bench_report(&dir.join("bench.json"), &doc);
    for line in [
        "[PASS] wgpu: qlora-nf4-dq device peak in use 210.0 MB vs lora 300.0 MB: saves 90.0 MB",
        "[PASS] wgpu: qlora-nf4-dq device peak reserved 211.0 MB vs lora 301.0 MB: saves 90.0 MB",
        "[PASS] ndarray: qlora-nf4-dq peak RSS 210.0 MB vs lora 300.0 MB: saves 90.0 MB",
        "| full | wgpu | 15.0 | 20.0 | 30.0 | 5.0 | 10.0 |",
    ] {
        assert!(stdout.contains(line), "missing `{line}`:\n{stdout}");
    }
    assert!(!stdout.contains("wgpu: qlora-nf4-dq peak RSS"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_report_prints_the_roofline_and_the_speed_goals() {
    let dir = tmp("bench-report-roofline");
    // 40 GFLOP a frame, 100 GFLOP a step; our best GEMM 100 GFLOP/s (so a 0.4 s frame floor,
    // 1 s step floor), the peer's 125 (0.32 s, 0.8 s).
    let ours = |name: &str, step: f64, infer: f64| {
        serde_json::json!({"kind": "case", "case": name, "backend": "ndarray",
            "sizes": {"batch": 2}, "step_seconds_median": step,
            "inference_seconds_median": infer, "inference_batch": 1,
            "forward_flops_per_frame": 40e9, "step_flops": 100e9})
    };
    let torch = |mode: &str, s: f64| {
        serde_json::json!({"kind": "torch", "mode": mode, "pair": mode,
            "anchor": {"step_s_median": s, "batch": 2}})
    };
    let gemm = |who: &str, one: f64, two: f64| {
        serde_json::json!({"kind": "gemm", "impl": who,
            "best_gflops_by_threads": {"1": one, "2": two}})
    };
    let doc = serde_json::json!({
        "machine": {"cpu": "test", "cpu_id": "vendor_id Test", "simd": ["avx2", "fma"], "nproc": 2},
        "cases": [
            ours("full", 1.5, 0.6), ours("lora", 1.2, 0.6),
            torch("infer", 1.0), torch("full", 2.0), torch("lora", 1.4),
            gemm("ours (test)", 60.0, 100.0), gemm("torch (test)", 70.0, 125.0),
            gemm("alternative (test)", 65.0, 110.0),
        ]
    });
    let stdout = bench_report(&dir.join("bench.json"), &doc);
    for line in [
        "machine: test (vendor_id Test; SIMD avx2 fma; 2 threads)",
        "ours 100.0 GFLOP/s, PyTorch 125.0 GFLOP/s",
        // The alternative is reported, not taken as our rate.
        "GEMM alternative measured in this run: OpenBLAS 110.0 GFLOP/s against ours 100.0",
        // 0.6 s a frame: 1.50x our 0.4 s floor; the peer's 0.5 s: 1.56x its 0.32 s floor.
        "| inference, per frame | 40.0 | 0.400 | 0.600 | 1.50x | 0.500 | 1.56x |",
        "| full step | 100.0 | 1.000 | 1.500 | 1.50x | 2.000 | 2.50x |",
        "[MISS] ndarray: inference, per frame 0.600s vs PyTorch 0.500s = 1.20x (goal <= 0.7x)",
        "[PASS] ndarray: full step 1.500s vs PyTorch 2.000s = 0.75x (goal <= 0.8x)",
        "[MISS] ndarray: LoRA step 1.200s vs PyTorch 1.400s = 0.86x (goal <= 0.8x)",
        "[PASS] ndarray: inference, per frame 0.600s = 1.50x its roofline 0.400s (goal <= 1.6x)",
    ] {
        assert!(stdout.contains(line), "missing `{line}`:\n{stdout}");
    }
    // No QLoRA case: no QLoRA row.
    assert!(!stdout.contains("QLoRA NF4+dq step"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_gemm_measures_the_dense_linear_on_the_models_shapes() {
    let out = Command::new(env!("CARGO_BIN_EXE_tracknet-bench"))
        .args(["gemm", "--threads", "1,2", "--runs", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["kind"], "gemm");
    // The process's GEMM, named (TRACKNET_GEMM unset: the built-in one).
    assert_eq!(
        v["impl"],
        "ours (NdArray dense linear: gemm crate (built in), rows over rayon)"
    );
    let rates = v["rates"].as_array().unwrap();
    // Six shapes at each thread count, every rate a positive number.
    assert_eq!(rates.len(), 12, "{v}");
    assert!(
        rates
            .iter()
            .all(|r| r["gflops_median"].as_f64().unwrap() > 0.0)
    );
    for t in ["1", "2"] {
        assert!(
            v["best_gflops_by_threads"][t].as_f64().unwrap() > 0.0,
            "{v}"
        );
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_tracknet-bench"))
        .args(["gemm", "--threads", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--threads"));
    // `--alternative` measures OpenBLAS, and refuses to run without it.
    let alternative = |gemm: &str| {
        Command::new(env!("CARGO_BIN_EXE_tracknet-bench"))
            .args(["gemm", "--threads", "1", "--runs", "1", "--alternative"])
            .env("TRACKNET_GEMM", gemm)
            .output()
            .unwrap()
    };
    let refused = alternative("builtin");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--alternative"));
    if std::env::var("TRACKNET_TEST_OPENBLAS").as_deref() == Ok("1") {
        let out = alternative("openblas");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        let name = v["impl"].as_str().unwrap();
        assert!(
            name.starts_with("alternative (NdArray dense linear: OpenBLAS"),
            "{name}"
        );
    }
}
