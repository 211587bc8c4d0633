//! Training through the library: QLoRA end to end (train, evaluate, predict), the freeze schedule, the loop's config keys.

use crate::common::*;

#[test]
fn qlora_trains_saves_evaluates_predicts() {
    let _serial = serial();
    let root = tmp("main");
    let cfg = tiny_config(&root, 3);
    let run = root.join("run");
    let device = Default::default();
    let summary = train::<AD>(&cfg, &opts(run.clone()), &device).unwrap();

    // Learned something: the validation loss went down from the untrained model's.
    let base = summary.baseline.as_ref().unwrap()["val_loss"];
    let last = summary.history.last().unwrap()["val_loss"];
    println!("val loss untrained {base:.5} → trained {last:.5}");
    assert!(last < base, "val loss did not go down: {base} → {last}");
    assert_eq!(summary.history.len(), 3);

    // The run folder holds what the docs promise.
    for f in [
        "config.yaml",
        "metrics.csv",
        "curves.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checkpoints/last.json",
        "checkpoints/best.json",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "header + one row per epoch:\n{csv}");
    assert!(std::fs::read_dir(run.join("previews")).unwrap().count() >= 2);
    let ckpt = checkpoint_dir(&run, "last").unwrap();
    for f in [
        "trainable.safetensors",
        "optimizer.safetensors",
        "state.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(ckpt.join(f).exists(), "checkpoint lacks {f}");
    }
    // Only trainable tensors are saved: LoRA A/B, decoder, head — never the frozen base.
    let (saved, _) = read_safetensors(&ckpt.join("trainable.safetensors")).unwrap();
    assert!(saved.keys().any(|k| k.contains(".lora_a.")));
    assert!(
        saved.keys().all(|k| !k.contains(".base.")),
        "frozen base weights were saved"
    );

    // The adapter reloads as PEFT files.
    let adapter = tracknet_lora::peft::load_adapter(&run.join("adapter")).unwrap();
    assert_eq!(adapter.config.r, 4);
    assert_eq!(adapter.tensors.len(), 6, "q/k/v/o/up/down of one layer");

    // Eval from the run folder reproduces the last epoch's validation loss.
    let cfg2 = run_config(&run, &[]).unwrap();
    // Another seed would rebuild another random frozen base: refused, naming the key.
    let other_seed = run_config(&run, &["training.seed=12".into()]).unwrap();
    let err = match load_run_model::<NdArray>(&other_seed, &ckpt, &device) {
        Ok(_) => panic!("a base built with another seed must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("training.seed"), "{err}");
    let model = load_run_model::<NdArray>(&cfg2, &ckpt, &device).unwrap();
    let splits = tracknet_train::data::scan_splits(&cfg2).unwrap();
    let r = evaluate(&model, splits.val, &cfg2, None, 0, &device).unwrap();
    assert!(
        (r.loss - last).abs() < 1e-4 * last.abs().max(1.0),
        "eval {} vs training's {}",
        r.loss,
        last
    );

    // A checkpoint that lacks a tensor the model trains is refused, naming it (before, the
    // adapter stayed at its zero initialisation and eval ran on the bare base).
    let broken = root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["state.json", "optimizer.safetensors"] {
        std::fs::copy(ckpt.join(f), broken.join(f)).unwrap();
    }
    let mut partial = saved.clone();
    let dropped = partial
        .keys()
        .find(|k| k.contains(".lora_b."))
        .unwrap()
        .clone();
    partial.remove(&dropped);
    let bytes = tracknet_train::checkpoint::to_safetensors(&partial, Default::default()).unwrap();
    std::fs::write(broken.join("trainable.safetensors"), bytes).unwrap();
    let err = match load_run_model::<NdArray>(&cfg2, &broken, &device) {
        Ok(_) => panic!("a checkpoint without {dropped} must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&dropped) && err.contains("missing"), "{err}");
    // Optimizer state of the wrong size is refused on resume, naming the parameter.
    std::fs::copy(
        ckpt.join("trainable.safetensors"),
        broken.join("trainable.safetensors"),
    )
    .unwrap();
    let (mut ot, om) = read_safetensors(&broken.join("optimizer.safetensors")).unwrap();
    let key = ot.keys().find(|k| k.ends_with(".m")).unwrap().clone();
    ot.get_mut(&key).unwrap().1.pop();
    ot.get_mut(&key).unwrap().0 = vec![ot[&key].1.len()];
    let bytes = tracknet_train::checkpoint::to_safetensors(&ot, om).unwrap();
    std::fs::write(broken.join("optimizer.safetensors"), bytes).unwrap();
    B::seed(&device, cfg2.training.seed);
    let fresh = tracknet_vit::model::HeatmapModel::<AD>::from_config(&cfg2.model, &device)
        .unwrap()
        .0;
    let kind = tracknet_train::optim::OptimKind::from_config(&cfg2.training.optimizer);
    let err = match tracknet_train::trainer::load_checkpoint::<AD>(
        &broken, &cfg2, fresh, kind, &device,
    ) {
        Ok(_) => panic!("mis-sized optimizer state must be refused"),
        Err(e) => e.to_string(),
    };
    let param = key.trim_end_matches(".m");
    assert!(
        err.contains(param) && err.contains("optimizer state"),
        "{err}"
    );

    // Predict on a clip folder.
    let clip = root.join("data/game3/Clip1");
    let out = root.join("pred");
    let p = predict(&model, &cfg2, &clip, &out, 0.5, &device, None).unwrap();
    assert_eq!(p.frames, 8);
    let csv = std::fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert!(csv.starts_with("file name,visibility,x-coordinate,y-coordinate,status,confidence"));
    assert_eq!(csv.lines().count(), 9);
    assert!(out.join("overlays/0000.png").exists() && out.join("heatmaps/0000.png").exists());
    // The clip's own labels are the target track: drawn in the target colour over the frame
    // (beyond the legend's dot, which a figure without targets has too).
    let cyan = |img: &image::RgbImage| {
        img.pixels()
            .filter(|p| p.0 == tracknet_data::viz::TARGET_COLOUR)
            .count()
    };
    let traj = image::open(out.join("trajectory.png")).unwrap().to_rgb8();
    let first = image::open(clip.join("0000.jpg")).unwrap().to_rgb8();
    let legend_only = tracknet_data::viz::trajectory_figure(&first, "Clip1", &[], &[]).unwrap();
    assert!(
        cyan(&traj) > cyan(&legend_only) + 20,
        "target track drawn: {} vs {} pixels",
        cyan(&traj),
        cyan(&legend_only)
    );
}

#[test]
fn lora_adapters_train_during_backbone_freeze_epochs() {
    // `backbone_freeze_epochs` holds back the base backbone only: adapters train from step 0.
    let _serial = serial();
    let root = tmp("freeze-lora");
    let cfg = tiny(
        &root,
        1,
        &[
            "training.backbone_freeze_epochs=1",
            "training.steps_per_epoch=2",
        ],
    );
    let run = root.join("run");
    train::<AD>(&cfg, &opts(run.clone()), &Default::default()).unwrap();
    let weights = last_weights(&run);
    let lora_b: Vec<&(String, Vec<f32>)> = weights
        .iter()
        .filter(|(k, _)| k.to_lowercase().contains("lora_b"))
        .collect();
    assert!(!lora_b.is_empty(), "no adapter weights in the checkpoint");
    // B starts at zero (PEFT's init): two steps inside the freeze epoch moved it.
    for (k, v) in lora_b {
        assert!(
            v.iter().any(|&x| x != 0.0),
            "{k} did not train during the freeze epoch"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn loop_keys_steps_val_steps_previews_best_metric_micro_batch_and_clipping() {
    let _serial = serial();
    let root = tmp("loop-keys");
    let cfg = tiny(
        &root,
        2,
        &[
            "training.steps_per_epoch=1",
            "training.val_steps=1",
            "training.preview_frames=1",
            "training.best_metric=l2",
        ],
    );
    let run = root.join("run");
    let device = Default::default();
    let summary = train::<AD>(&cfg, &opts(run.clone()), &device).unwrap();
    // steps_per_epoch: one optimizer step per epoch (the split has 4 batches).
    let last = checkpoint_dir(&run, "last").unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(last.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["global_step"], 2);
    // preview_frames: one overlay per epoch.
    assert_eq!(std::fs::read_dir(run.join("previews")).unwrap().count(), 2);
    // best_metric l2 (lower is better): `best` is the epoch with the smallest L2.
    let best = checkpoint_dir(&run, "best").unwrap();
    let best_state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(best.join("state.json")).unwrap()).unwrap();
    let l2: Vec<f64> = summary.history.iter().map(|r| r["l2"]).collect();
    let want = 1
        + (0..l2.len())
            .min_by(|&a, &b| l2[a].total_cmp(&l2[b]))
            .unwrap();
    assert_eq!(best_state["best_epoch"], want, "l2 per epoch {l2:?}");
    assert_eq!(best_state["best_metric"], "l2");
    // val_steps: validation stops after that many batches (4 frames, not the split's 8).
    let model = load_run_model::<NdArray>(&cfg, &last, &device).unwrap();
    let splits = tracknet_train::data::scan_splits(&cfg).unwrap();
    let capped = evaluate(
        &model,
        splits.val.clone(),
        &cfg,
        cfg.training.val_steps,
        0,
        &device,
    )
    .unwrap();
    let all = evaluate(&model, splits.val, &cfg, None, 0, &device).unwrap();
    assert_eq!((capped.metrics.frames, all.metrics.frames), (4, 8));

    // micro_batch_size: a batch split into micro-batches gives the batch's loss and gradients.
    B::seed(&device, 1);
    let (model, _) =
        tracknet_vit::model::HeatmapModel::<AD>::from_config(&cfg.model, &device).unwrap();
    let loss_fn = tracknet_train::eval::loss_from_config(&cfg);
    let batch = first_batch(&cfg);
    let step = |micro| {
        let plan = tracknet_train::trainer::StepPlan {
            micro,
            recompute: false,
            shards: 1,
            precision: tracknet_train::amp::StepPrecision::f32(),
        };
        tracknet_train::trainer::step_grads(&model, &loss_fn, &batch, plan, &device)
    };
    let (loss4, g4) = step(4);
    let (loss2, g2) = step(2);
    let n4 = tracknet_train::optim::grad_norm::<AD, _>(&model, &g4);
    let n2 = tracknet_train::optim::grad_norm::<AD, _>(&model, &g2);
    assert!(
        (loss4 - loss2).abs() < 1e-6 * loss4.abs().max(1.0),
        "{loss4} vs {loss2}"
    );
    assert!((n4 - n2).abs() < 1e-4 * n4, "{n4} vs {n2}");
    // grad_clip (used when grad_clip_norm is null): the clipped gradients have that norm.
    let clip_cfg = cfg
        .with_overrides(&[
            "training.grad_clip_norm=null".into(),
            "training.grad_clip=0.001".into(),
        ])
        .unwrap();
    let limit = clip_cfg.training.effective_grad_clip_norm();
    assert_eq!(limit, Some(0.001));
    assert!(
        n4 > 0.001,
        "the test needs a gradient above the limit: {n4}"
    );
    let clipped = tracknet_train::optim::clip_grads::<AD, _>(&model, g4, n4, limit);
    let n = tracknet_train::optim::grad_norm::<AD, _>(&model, &clipped);
    assert!((n - 0.001).abs() < 1e-6, "clipped norm {n}");
}

#[test]
fn backbone_freeze_epochs_hold_the_base_back_then_release_it() {
    // Full fine-tuning with `backbone_freeze_epochs: 1`: after epoch 1 the checkpoint holds
    // no backbone tensor (it did not train); after epoch 2 it does, moved from the init.
    let _serial = serial();
    let root = tmp("freeze-epochs");
    let cfg = tiny(
        &root,
        2,
        &[
            "model.lora.enabled=false",
            "model.quantization.enabled=false",
            "model.backbone.freeze=false",
            "training.backbone_freeze_epochs=1",
            "training.steps_per_epoch=1",
            "training.val_steps=1",
        ],
    );
    let run = root.join("run");
    let device = Default::default();
    let mut o = opts(run.clone());
    o.stop_after_epoch = Some(1);
    train::<AD>(&cfg, &o, &device).unwrap();
    let after1 = last_weights(&run);
    assert!(
        after1.iter().all(|(k, _)| !k.starts_with("backbone.")),
        "epoch 1 saved the backbone"
    );
    let mut o = opts(run.clone());
    o.resume = true;
    train::<AD>(&cfg, &o, &device).unwrap();
    let after2 = last_weights(&run);
    let backbone: Vec<_> = after2
        .iter()
        .filter(|(k, _)| k.starts_with("backbone."))
        .collect();
    assert!(!backbone.is_empty(), "epoch 2 trains the backbone");
    B::seed(&device, cfg.training.seed);
    let (fresh, _) =
        tracknet_vit::model::HeatmapModel::<NdArray>::from_config(&cfg.model, &device).unwrap();
    let init = tracknet_lora::params::collect_params::<NdArray, _>(&fresh, |p, _| {
        p.starts_with("backbone.")
    });
    let moved = backbone
        .iter()
        .filter(|(k, v)| init.get(k.as_str()).is_some_and(|(_, i)| i != v))
        .count();
    assert!(moved > 0, "the released backbone moved");
}

/// Every gradient of `model`'s parameters in `grads`, in visiting order.
fn grad_values(
    model: &tracknet_vit::model::HeatmapModel<AD>,
    grads: &burn::optim::GradientsParams,
) -> Vec<Vec<f32>> {
    struct Bits<'a>(&'a burn::optim::GradientsParams, Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor<AD> for Bits<'_> {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<AD, D>>,
        ) {
            if let Some(g) = self.0.get::<B, D>(param.id) {
                self.1
                    .push(g.into_data().convert::<f32>().into_vec::<f32>().unwrap());
            }
        }
    }
    let mut v = Bits(grads, Vec::new());
    burn::module::Module::visit(model, &mut v);
    v.1
}

#[test]
fn parallel_shards_give_the_micro_batches_gradients_repeat_to_the_bit_with_dropout_and_step_aside_for_batch_norm()
 {
    use tracknet_train::trainer::{StepPlan, parallel_shards, step_grads};
    use tracknet_vit::model::HeatmapModel;
    let _serial = serial();
    let root = tmp("parallel-shards");
    let build = |extra: &[&str]| {
        let mut keys = vec!["training.loss.name=focal"];
        keys.extend_from_slice(extra);
        let cfg = tiny(&root, 1, &keys);
        let device = Default::default();
        AD::seed(&device, 1);
        let (model, _) = HeatmapModel::<AD>::from_config(&cfg.model, &device).unwrap();
        (cfg, model)
    };
    // RoPE coordinate augmentation off: the forward draws nothing random.
    let (cfg, model) = build(&["model.backbone.rope_augmentation=false"]);
    tracknet_train::data::ensure_synthetic(&cfg, &mut |_| {}).unwrap();
    let device = Default::default();
    let loss_fn = tracknet_train::eval::loss_from_config(&cfg);
    let batch = first_batch(&cfg);
    let plan = |micro, recompute, shards| StepPlan {
        micro,
        recompute,
        shards,
        precision: tracknet_train::amp::StepPrecision::f32(),
    };
    // The pieces: shards differ by at most one sample; a micro-batched batch is not sharded.
    assert_eq!(
        plan(usize::MAX, false, 3).pieces(4),
        (vec![0..2, 2..3, 3..4], true)
    );
    assert_eq!(plan(2, false, 3).pieces(4), (vec![0..2, 2..4], false));
    let (whole, at_once) = plan(usize::MAX, false, 1).pieces(4);
    assert_eq!(
        (whole.len(), whole.first(), at_once),
        (1, Some(&(0..4)), false)
    );
    assert_eq!(
        plan(usize::MAX, false, 9).pieces(2),
        (vec![0..1, 1..2], true)
    );

    // Two shards on two threads (QLoRA: 4-bit base, adapters, decoder and head train) give the
    // loss and every gradient of the same two micro-batches run one after another, to the bit,
    // with and without recomputation; three shards (2 + 1 + 1) give every gradient too.
    // One step's loss and every gradient, as raw bits.
    let step = |m: &HeatmapModel<AD>, micro, recompute, shards| {
        let (loss, grads) =
            step_grads(m, &loss_fn, &batch, plan(micro, recompute, shards), &device);
        let g: Vec<Vec<u32>> = grad_values(m, &grads)
            .iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect();
        (loss.to_bits(), g)
    };
    for recompute in [false, true] {
        let sharded = step(&model, usize::MAX, recompute, 2);
        let micro = step(&model, 2, recompute, 1);
        assert!(sharded.1.len() > 10, "{} gradients", sharded.1.len());
        assert!(
            sharded == micro,
            "recompute {recompute}: shards differ from micro-batches"
        );
    }
    let three = step(&model, usize::MAX, false, 3);
    assert!(f64::from_bits(three.0).is_finite());
    assert_eq!(three.1.len(), step(&model, 2, false, 1).1.len());

    // With the augmentation on (transformers' default rescale 2.0), each shard draws from its
    // own stream: the same seed gives the same step to the bit, whatever the threads' timing.
    let (_, augmented) = build(&[]);
    let seeded = |m: &HeatmapModel<AD>, seed, recompute| {
        AD::seed(&device, seed);
        step(m, usize::MAX, recompute, 2)
    };
    let runs: Vec<_> = (0..4).map(|_| seeded(&augmented, 9, false)).collect();
    assert!(
        runs.windows(2).all(|w| w[0] == w[1]),
        "sharded steps with the same seed differ"
    );
    assert!(
        seeded(&augmented, 10, false) != runs[0],
        "the augmentation draws do not follow the seed"
    );

    // The trainer reads the key: two shards train to the weights of micro-batches of 2 (no
    // augmentation), and not to those of the whole batch.
    let trained = |keys: &[&str], name: &str| {
        let mut all = vec![
            "training.loss.name=focal",
            "model.backbone.rope_augmentation=false",
            "training.steps_per_epoch=2",
            "training.preview_frames=0",
        ];
        all.extend_from_slice(keys);
        let run = root.join(name);
        train::<AD>(&tiny(&root, 1, &all), &opts(run.clone()), &device).unwrap();
        last_weights(&run)
    };
    let two = trained(&["training.parallel_shards=2"], "run-shards-2");
    let micro = trained(
        &["training.parallel_shards=1", "training.micro_batch_size=2"],
        "run-micro-2",
    );
    let whole = trained(&["training.parallel_shards=1"], "run-whole");
    assert!(
        two == micro,
        "two shards did not train as two micro-batches"
    );
    assert!(
        two != whole,
        "two shards trained as the whole batch: the key was not read"
    );

    // Dropout (LoRA and decoder): each shard draws its masks from its own stream, so the same
    // seed gives the same sharded step to the bit, with and without recomputation (which
    // reseeds the shard's stream per segment, as it reseeds the backend's generator unsharded).
    let (_, dropping) = build(&["model.lora.lora_dropout=0.2", "model.decoder.dropout=0.2"]);
    assert_eq!(parallel_shards(2, &dropping), (2, None));
    let runs: Vec<_> = [false, false, false, true, true]
        .into_iter()
        .map(|recompute| seeded(&dropping, 9, recompute))
        .collect();
    assert!(
        runs[..3].iter().all(|r| *r == runs[0]),
        "sharded dropout steps differ"
    );
    assert!(
        runs[3] == runs[4],
        "sharded recomputed dropout steps differ"
    );
    AD::seed(&device, 9);
    let unsharded = step(&dropping, 2, false, 1);
    assert!(
        unsharded.0 != runs[0].0,
        "the shards drew the backend's masks, not their streams'"
    );

    // Where shards cannot run at once, the trainer does not split, and says why naming the key.
    assert_eq!(parallel_shards(2, &model), (2, None));
    assert_eq!(parallel_shards(2, &augmented), (2, None));
    assert_eq!(parallel_shards(1, &model), (1, None));
    let (_, bn) = build(&["model.decoder.norm=bn"]);
    let (n, note) = parallel_shards(2, &bn);
    let note = note.unwrap_or_default();
    assert_eq!(n, 1);
    assert!(
        note.contains("training.parallel_shards") && note.contains("BatchNorm"),
        "{note}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
