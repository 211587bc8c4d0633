//! The `tracknet` binary: multi-frame runs, run folders and log lines, export, runs repeated
//! to the bit across processes.

use crate::common::*;

#[test]
fn a_three_frame_run_trains_evaluates_and_predicts_from_the_cli() {
    // `data.sequence`: 3 frames stacked → a 9-channel (inflated, trainable) patch embedding.
    let _serial = serial();
    let root = tmp("sequence");
    let cfg = tiny(
        &root,
        1,
        &["data.sequence.enabled=true", "data.sequence.length=3"],
    );
    let cfg_path = on_disk(&root, &cfg);
    let run = root.join("run");
    let tracknet = || Command::new(env!("CARGO_BIN_EXE_tracknet"));
    // A corrupt training frame (non-strict): its samples are skipped and each epoch says so,
    // naming the file, instead of skipping silently.
    let corrupt = root.join("data/game1/Clip1/0003.jpg");
    std::fs::write(&corrupt, b"\xff\xd8 not a jpeg").unwrap();
    let out = tracknet()
        .args(["train", "--config"])
        .arg(&cfg_path)
        .arg("--run-dir")
        .arg(&run)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("input: 3 frames stacked on the channel axis (9 channels)")
            && log.contains("backbone.embeddings.patch_embeddings.weight [32, 9, 16, 16]"),
        "the parameter report shows the 9-channel patch embedding:\n{log}"
    );
    assert!(
        log.contains("epoch 1 training: skipped") && log.contains("game1/Clip1/0003.jpg"),
        "the epoch reports the undecodable frame:\n{log}"
    );
    // The embedding trained and was saved with the run.
    let (saved, _) = read_safetensors(
        &checkpoint_dir(&run, "last")
            .unwrap()
            .join("trainable.safetensors"),
    )
    .unwrap();
    let (shape, _) = &saved["backbone.embeddings.patch_embeddings.weight"];
    assert_eq!(shape, &vec![32, 9, 16, 16]);
    // A 4-bit backbone has no dense projection weights to export: refused by name, rather
    // than a snapshot that lacks them.
    let err = tracknet_train::predict::export_backbone(
        &cfg,
        &checkpoint_dir(&run, "last").unwrap(),
        &root.join("exported"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("model.quantization.enabled"), "{err}");
    assert!(!root.join("exported/model.safetensors").exists());

    let out = tracknet()
        .args(["eval", "--checkpoint", "last", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("eval.json")).unwrap()).unwrap();
    // The run's own last validation loss, reproduced by the 3-frame model rebuilt from disk.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "val_loss").unwrap();
    let want: f64 = last[col].parse().unwrap();
    let got = eval["val_loss"].as_f64().unwrap();
    // The TrackNet protocol's counts cover every validation frame.
    let p = &eval["tracknet_protocol"];
    let count = |k: &str| p[k].as_u64().unwrap();
    assert_eq!(
        count("tp") + count("tn") + count("fp1") + count("fp2") + count("fn"),
        eval["frames"].as_u64().unwrap(),
        "{p}"
    );
    assert_eq!(p["tolerance_px"].as_f64(), Some(5.0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("TrackNet protocol at 5 px"));
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
        "{got} vs {want}"
    );

    let pred = root.join("pred");
    let out = tracknet()
        .args(["predict", "--checkpoint", "last", "--run"])
        .arg(&run)
        .arg("--input")
        .arg(root.join("data/game3/Clip1"))
        .arg("--out")
        .arg(&pred)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(pred.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9, "one row per frame:\n{csv}");
    // A run with single frames refuses the 3-frame checkpoint by name instead of mis-loading.
    let out = tracknet()
        .args(["eval", "--checkpoint", "last", "--run"])
        .arg(&run)
        .arg("data.sequence.enabled=false")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("patch_embeddings"), "{err}");
}

#[test]
fn cli_run_folder_follows_output_dir_and_model_name_and_says_gradient_checkpointing_and_logs_every_n()
 {
    let _serial = serial();
    let root = tmp("cli-keys");
    let out_dir = format!("training.output_dir={}", root.join("out").display());
    let cfg = tiny(
        &root,
        1,
        &[
            out_dir.as_str(),
            "training.gradient_checkpointing=true",
            "training.log_every=2",
            "training.val_steps=1",
        ],
    );
    let cfg_path = root.join("cfg.yaml");
    cfg.save(&cfg_path).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracknet"))
        .args(["train", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    // No --run-dir: <output_dir>/<model_name>-NNN.
    assert!(root.join("out/tiny-001/metrics.csv").exists(), "{log}");
    assert!(log.contains("training.gradient_checkpointing: on"), "{log}");
    // log_every 2 of 4 steps (not a terminal): steps 2 and 4 are logged, 1 and 3 not.
    let steps: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("epoch 1/1 step "))
        .collect();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        steps[0].starts_with("epoch 1/1 step 2/4") && steps[1].starts_with("epoch 1/1 step 4/4")
    );

    // compute_dtype bfloat16 on a CPU build: one note that the 4-bit matmuls run in f32.
    let out = Command::new(env!("CARGO_BIN_EXE_tracknet"))
        .args(["quantize-report", "--config"])
        .arg(&cfg_path)
        .arg("model.quantization.compute_dtype=bfloat16")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        log.matches(
            "warning: quantization.compute_dtype bfloat16: the ndarray backend has no bfloat16 \
             arithmetic, so the 4-bit matmuls run in f32"
        )
        .count(),
        1,
        "{log}"
    );
    // training.device=cuda in a build without the CUDA backend: a clear error, nothing trained.
    if !cfg!(feature = "cuda") {
        let out = Command::new(env!("CARGO_BIN_EXE_tracknet"))
            .args(["train", "--config"])
            .arg(&cfg_path)
            .arg("--run-dir")
            .arg(root.join("cuda-run"))
            .arg("training.device=cuda:0")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(log.contains("--features cuda"), "{log}");
        assert!(!root.join("cuda-run/metrics.csv").exists());
    }
    // training.device=wgpu: trains and evaluates there in a build with the backend (CI's, on
    // lavapipe); a clear error naming the feature in one without.
    let out = Command::new(env!("CARGO_BIN_EXE_tracknet"))
        .args(["train", "--config"])
        .arg(&cfg_path)
        .arg("--run-dir")
        .arg(root.join("wgpu-run"))
        .arg("training.device=wgpu")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "wgpu") {
        assert!(out.status.success(), "{log}");
        assert!(root.join("wgpu-run/metrics.csv").exists(), "{log}");
        let out = Command::new(env!("CARGO_BIN_EXE_tracknet"))
            .args(["eval", "--device", "wgpu", "--checkpoint", "last", "--run"])
            .arg(root.join("wgpu-run"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("F1"), "{text}");
    } else {
        assert!(!out.status.success());
        assert!(log.contains("--features wgpu"), "{log}");
        assert!(!root.join("wgpu-run/metrics.csv").exists());
    }
}

#[test]
fn a_qlora_run_exports_from_the_cli_and_the_export_rebuilds_the_model_and_feeds_predict() {
    use burn::prelude::*;
    let _serial = serial();
    let root = tmp("export");
    let cfg = tiny(&root, 1, &["model.lora.bias=all"]);
    let run = root.join("run");
    let device = Default::default();
    train::<AD>(&cfg, &opts(run.clone()), &device).unwrap();
    let tracknet = || Command::new(env!("CARGO_BIN_EXE_tracknet"));
    let exp = root.join("export");
    let out = tracknet()
        .args(["export", "--checkpoint", "last", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(&exp)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("backbone-4bit, backbone-merged, adapter, heads.safetensors, heads.json"),
        "{said}"
    );
    for f in [
        "backbone-4bit/config.json",
        "backbone-4bit/model.safetensors",
        "backbone-merged/model.safetensors",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "heads.safetensors",
        "heads.json",
    ] {
        assert!(exp.join(f).is_file(), "{f}");
    }
    // A second export into the (now non-empty) folder is refused and changes nothing.
    let before = std::fs::read(exp.join("heads.safetensors")).unwrap();
    let again = tracknet()
        .args(["export", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(&exp)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read(exp.join("heads.safetensors")).unwrap(),
        before
    );

    // The 4-bit base holds the run's codes; base + adapter, merged, and the rebuilt whole model
    // all give the run's heatmap.
    let cfg = run_config(&run, &[]).unwrap();
    let ckpt = checkpoint_dir(&run, "last").unwrap();
    let model = load_run_model::<B>(&cfg, &ckpt, &device).unwrap();
    let stored =
        tracknet_vit::backbone::Backbone::<B>::load_snapshot(&exp.join("backbone-4bit"), &device)
            .unwrap();
    assert!(stored.bnb.is_some());
    let (rebuilt, heads) = tracknet_vit::export::load_exported_model::<B>(&exp, &device).unwrap();
    assert_eq!(heads.resize, [128, 64]);
    let x = Tensor::<B, 4>::random(
        [1, 3, 64, 128],
        burn::tensor::Distribution::Default,
        &device,
    );
    let want = model.forward(x.clone());
    let err: f32 = (rebuilt.forward(x.clone()) - want.clone())
        .abs()
        .max()
        .into_scalar();
    let scale: f32 = want.clone().abs().max().into_scalar();
    assert!(
        err <= 1e-4 * scale.max(1.0),
        "rebuilt from the export: {err} (scale {scale})"
    );
    let peft_way = tracknet_vit::model::HeatmapModel {
        backbone: stored.backbone,
        decoder: model.decoder.clone(),
        head: model.head.clone(),
        code_books: stored.code_books,
    };
    let settings = tracknet_vit::model::lora_settings(&cfg.model);
    let (peft_way, _) = peft_way.add_lora(&settings, &device).unwrap();
    let peft_way = peft_way
        .load_peft_weights(&exp.join("adapter"), &device)
        .unwrap();
    let d: f32 = (peft_way.forward(x) - want).abs().max().into_scalar();
    assert_eq!(d, 0.0, "4-bit base + adapter is the run's model");

    // `predict --adapter`: the run's own adapter gives the run's predictions; a changed one
    // changes them.
    let clip = root.join("data/game3/Clip1");
    let predict_with = |adapter: Option<&Path>, out: &Path| {
        let mut c = tracknet();
        c.args(["predict", "--checkpoint", "last", "--run"])
            .arg(&run)
            .arg("--input")
            .arg(&clip)
            .arg("--out")
            .arg(out);
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out.join("predictions.csv")).unwrap()
    };
    let plain = predict_with(None, &root.join("p0"));
    assert_eq!(
        predict_with(Some(&exp.join("adapter")), &root.join("p1")),
        plain
    );
    let mut loaded = tracknet_lora::peft::load_adapter(&exp.join("adapter")).unwrap();
    for t in loaded.tensors.values_mut() {
        t.b.iter_mut().for_each(|v| *v = *v * 3.0 + 0.05);
    }
    let changed = root.join("changed-adapter");
    let tensors: Vec<_> = loaded.tensors.values().cloned().collect();
    tracknet_lora::peft::save_adapter(&changed, &loaded.config, &tensors, &loaded.extra).unwrap();
    assert_ne!(predict_with(Some(&changed), &root.join("p2")), plain);

    // Training from the exported adapter (`model.lora.adapter_path`): the adapter's rank wins
    // over the config's, the log says so, and the run's config.yaml records it.
    let cfg_path = root.join("from-adapter.yaml");
    tiny(&root, 1, &[]).save(&cfg_path).unwrap();
    let run2 = root.join("run-from-adapter");
    let out = tracknet()
        .args(["train", "--config"])
        .arg(&cfg_path)
        .arg("--run-dir")
        .arg(&run2)
        .arg(format!(
            "model.lora.adapter_path={}",
            exp.join("adapter").display()
        ))
        .arg("model.lora.r=8")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("warning: model.lora.r: 4 from the adapter"),
        "the log names the value the adapter set:\n{log}"
    );
    assert_eq!(run_config(&run2, &[]).unwrap().model.lora.r, 4);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_same_seed_gives_the_same_run_in_two_processes_and_through_a_sigkill_and_resume() {
    let _serial = serial();
    let reference = reference();
    let train = |run: &Path| {
        let mut c = train_command(&reference.cfg, run);
        c.arg("--quiet")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let (b, killed) = (reference.root.join("b"), reference.root.join("killed"));
    assert!(train(&b).status().unwrap().success());
    assert_same_as_reference(&b, "of a second process");

    // SIGKILL as soon as the first checkpoint exists (in epoch 2, or writing its checkpoint),
    // then `--resume`: the same metrics and the same bytes as the uninterrupted runs.
    let mut child = train(&killed).spawn().unwrap();
    let started = std::time::Instant::now();
    while read_pointer(&killed.join("checkpoints"), "last").is_none() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before the first checkpoint");
        }
        assert!(
            started.elapsed().as_secs() < 600,
            "no checkpoint after 10 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "killed by SIGKILL, not ended: {status}"
        );
    }
    let resumed = Command::new(env!("CARGO_BIN_EXE_tracknet"))
        .args(["train", "--quiet", "--resume"])
        .arg(&killed)
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_same_as_reference(&killed, "after SIGKILL + --resume");
}
