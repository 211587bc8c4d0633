//! A QLoRA run on a DINOv2 snapshot from the CLI, with the original project's
//! `target_modules: [query, key, value, dense]` (the hub's names), trained and exported; a
//! resize the snapshot's 14-pixel patches do not tile is refused with the nearest valid sizes.

use crate::common::*;

#[test]
fn a_qlora_run_on_a_dinov2_snapshot_with_the_original_target_modules_trains_and_exports() {
    let _serial = serial();
    let root = tmp("dinov2");
    let snapshot = tracknet_testkit::fixtures().join("dinov2_registers");
    let config: serde_json::Value = serde_json::from_slice(&tracknet_testkit::read(
        tracknet_testkit::need(&snapshot.join("config.json")),
    ))
    .unwrap();
    let hidden = config["hidden_size"].as_u64().unwrap();
    let patch = config["patch_size"].as_u64().unwrap() as usize;
    // A 9×5 patch grid, the decoder's ×4 gives the heatmap.
    let [w, h] = [9 * patch, 5 * patch];
    let weights = format!("model.backbone.weights={}", snapshot.display());
    let channels = format!("model.decoder.channels=[{hidden},16,8]");
    let resize = format!("data.preprocess.resize=[{w},{h}]");
    let heatmap = "model.heatmap.size=[36,20]";
    let overrides = [
        weights.as_str(),
        "model.backbone.pretrained=true",
        &format!("model.backbone.patch_size={patch}"),
        &channels,
        &resize,
        heatmap,
        "model.lora.target_modules=[query,key,value,dense]",
    ];
    let cfg = on_disk(&root, &tiny(&root, 1, &overrides));
    let run = root.join("run");
    let out = train_command(&cfg, &run).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let tracknet = || Command::new(env!("CARGO_BIN_EXE_tracknet"));
    let exp = root.join("export");
    let out = tracknet()
        .args(["export", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(&exp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The adapter is in the names PEFT on transformers 5 finds: the attention projections
    // of every layer, `target_modules` as ours.
    let adapter = tracknet_lora::peft::load_adapter(&exp.join("adapter")).unwrap();
    let layers = config["num_hidden_layers"].as_u64().unwrap() as usize;
    assert_eq!(adapter.tensors.len(), 4 * layers);
    let mut targets: Vec<String> =
        serde_json::from_value(adapter.config.target_modules.clone()).unwrap();
    targets.sort();
    assert_eq!(targets, ["k_proj", "o_proj", "q_proj", "v_proj"]);
    // The exports load back: 4-bit base (as stored), merged, and the whole model.
    let device = Default::default();
    let base =
        tracknet_vit::backbone::Backbone::<B>::load_snapshot(&exp.join("backbone-4bit"), &device)
            .unwrap();
    assert!(base.bnb.is_some());
    assert!(matches!(
        base.backbone,
        tracknet_vit::backbone::Backbone::Dinov2(_)
    ));
    tracknet_vit::export::load_exported_model::<B>(&exp, &device).unwrap();

    // 128×64 is not a multiple of 14: refused before training, naming the key and the
    // nearest sizes the patches tile.
    let bad_overrides = [&overrides[..4], &["data.preprocess.resize=[128,64]"]].concat();
    let bad = on_disk(&root, &tiny(&root, 1, &bad_overrides));
    let out = train_command(&bad, &root.join("bad-run")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("data.preprocess.resize") && err.contains("[126, 56] and [140, 70]"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
