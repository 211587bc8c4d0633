//! Checkpoints: resume equality, a kill half-way through a checkpoint, a non-finite loss, BatchNorm statistics.

use crate::common::*;

#[test]
fn interrupted_and_resumed_run_ends_with_the_same_weights() {
    let _serial = serial();
    let root = tmp("resume");
    let device = Default::default();
    let cfg = tiny_config(&root, 2);
    let straight = root.join("straight");
    train::<AD>(&cfg, &opts(straight.clone()), &device).unwrap();

    let parted = root.join("parted");
    let mut o = opts(parted.clone());
    o.stop_after_epoch = Some(1);
    train::<AD>(&cfg, &o, &device).unwrap();
    let o = TrainOptions {
        resume: true,
        stop_after_epoch: None,
        ..opts(parted.clone())
    };
    let cfg_saved = run_config(&parted, &[]).unwrap();
    let s = train::<AD>(&cfg_saved, &o, &device).unwrap();
    assert_eq!(s.history.len(), 2);

    let (a, b) = (last_weights(&straight), last_weights(&parted));
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    // To the bit: the data order, every random draw and every reduction are the same.
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(
            same,
            "{name}: the resumed run differs from the uninterrupted one"
        );
    }
}

/// Set for the child process of the kill test: the root folder it trains in.
const KILL_CHILD: &str = "TRACKNET_E2E_KILL_CHILD";

/// The kill test's child process, not a test of its own (so ignored, and run by the kill test
/// with `--ignored`): trains with a checkpoint hook that aborts the process half-way through
/// the 3rd checkpoint write.
#[test]
#[ignore = "the child process of a_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable"]
fn child_killed_while_writing_its_third_checkpoint() {
    let root = PathBuf::from(std::env::var_os(KILL_CHILD).expect("run by the kill test"));
    let cfg = RunConfig::load_combined(&root.join("cfg.yaml"), &[]).unwrap();
    let hook = tracknet_train::trainer::CheckpointHook(std::sync::Arc::new(|n| {
        if n == 3 {
            std::process::abort();
        }
    }));
    let o = TrainOptions {
        mid_checkpoint: Some(hook),
        ..opts(root.join("run"))
    };
    let _ = train::<AD>(&cfg, &o, &Default::default());
}

#[test]
fn a_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable() {
    let _serial = serial();
    let root = tmp("kill");
    let cfg = tiny_config(&root, 2);
    let cfg_path = root.join("cfg.yaml");
    cfg.save(&cfg_path).unwrap();
    let run = root.join("run");
    // Checkpoints: epoch 1 writes `best` (1) and `last` (2); the 3rd write is epoch 2's and is
    // killed half-way (after the weights, before the optimizer state and state.json) by the
    // hook the child test injects.
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "checkpoints::child_killed_while_writing_its_third_checkpoint",
            "--ignored",
            "--test-threads=1",
        ])
        .env(KILL_CHILD, &root)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the process should have been killed");

    let ckpt_root = run.join("checkpoints");
    let dir = read_pointer(&ckpt_root, "last").expect("the previous `last` survives");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["epoch"], 1);
    // The half-written folder was never named as a checkpoint.
    let leftovers: Vec<_> = std::fs::read_dir(&ckpt_root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        leftovers.iter().any(|n| n.starts_with(".tmp-")),
        "{leftovers:?}"
    );

    // And the run continues from it.
    let status = Command::new(env!("CARGO_BIN_EXE_tracknet"))
        .args(["train", "--quiet", "--resume"])
        .arg(&run)
        .status()
        .unwrap();
    assert!(status.success());
    let dir = read_pointer(&ckpt_root, "last").unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["epoch"], 2);
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let _serial = serial();
    let root = tmp("nonfinite");
    let cfg = tiny_config(&root, 2);
    let run = root.join("run");
    let device = Default::default();
    let mut o = opts(run.clone());
    o.stop_after_epoch = Some(1);
    train::<AD>(&cfg, &o, &device).unwrap();
    let good = read_pointer(&run.join("checkpoints"), "last").unwrap();
    let good_weights = last_weights(&run);

    // Resume with a learning rate that blows the weights up within a step or two.
    let mut bad = cfg.clone();
    bad.training.optimizer.lr = 1e37;
    let mut o = opts(run.clone());
    o.resume = true;
    let err = train::<AD>(&bad, &o, &device).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("non-finite") && msg.contains("at epoch 2, step "),
        "{msg}"
    );
    assert!(msg.contains("was kept"), "{msg}");
    assert!(msg.contains(&good.display().to_string()), "{msg}");
    // The poisoned weights did not replace the last good checkpoint.
    assert_eq!(
        read_pointer(&run.join("checkpoints"), "last").unwrap(),
        good
    );
    assert_eq!(last_weights(&run), good_weights);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn batchnorm_running_stats_are_saved_and_eval_reproduces_the_run() {
    // `decoder.norm: bn`: the running statistics are learned from the data, so a checkpoint
    // without them evaluates another model.
    let _serial = serial();
    let root = tmp("bn");
    let cfg = tiny(
        &root,
        1,
        &["model.decoder.norm=bn", "training.steps_per_epoch=3"],
    );
    let run = root.join("run");
    let device = Default::default();
    let summary = train::<AD>(&cfg, &opts(run.clone()), &device).unwrap();
    let last = summary.history.last().unwrap()["val_loss"];
    let weights = last_weights(&run);
    let stats: Vec<&(String, Vec<f32>)> = weights
        .iter()
        .filter(|(k, _)| k.ends_with("running_mean") || k.ends_with("running_var"))
        .collect();
    assert!(!stats.is_empty(), "no running statistics in the checkpoint");
    assert!(
        stats
            .iter()
            .any(|(_, v)| v.iter().any(|&x| x != 0.0 && x != 1.0)),
        "the running statistics never moved from their initial values"
    );
    let cfg2 = run_config(&run, &[]).unwrap();
    let ckpt = checkpoint_dir(&run, "last").unwrap();
    let model = load_run_model::<NdArray>(&cfg2, &ckpt, &device).unwrap();
    let splits = tracknet_train::data::scan_splits(&cfg2).unwrap();
    let r = evaluate(&model, splits.val, &cfg2, None, 0, &device).unwrap();
    assert_eq!(
        r.loss, last,
        "eval of the last checkpoint vs the run's own validation"
    );
    let _ = std::fs::remove_dir_all(&root);
}
