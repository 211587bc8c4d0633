//! `tracknet export`: a run's model as files the Python stack loads, in one folder.
//!
//! - `backbone-4bit/` (QLoRA runs): the quantized backbone in bitsandbytes' serialization,
//!   loadable by `AutoModel.from_pretrained` with bitsandbytes installed;
//!   `backbone-base/` (LoRA runs on a dense base): the base as an f32 snapshot;
//! - `backbone-merged/`: an f32 snapshot with LoRA merged into the (dequantized) base;
//! - `adapter/`: the PEFT adapter, its `base_model_name_or_path` naming the base folder;
//! - `heads.safetensors` + `heads.json`: decoder and head
//!   ([`tracknet_vit::export::load_exported_model`] rebuilds the whole model).
//!
//! Everything is written into a temporary sibling folder that is renamed into place at the
//! end, so an interrupted export leaves no half folder and never touches an existing one.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use tracknet_quant::BnbConfig;
use tracknet_vit::export::{
    HeadsConfig, merged, passthrough, save_4bit_snapshot, save_heads, save_snapshot,
};
use tracknet_vit::head::HeatmapHeadConfig;
use tracknet_vit::model::{
    ModelError, backbone_hf_config, decoder_config, lora_settings, quant_spec,
};

use crate::error::TrainError;
use crate::predict::{checkpoint_dir, load_run_model, run_config};
use crate::staged::Staged;
use crate::stop::StopFlag;

/// What `export` wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The export folder.
    pub dir: PathBuf,
    /// Its entries, in the order written.
    pub entries: Vec<String>,
}

/// Export checkpoint `which` (`best` | `last`) of the run in `run_dir` to `out` (which must
/// not exist, or be empty); once `stop` is set it stops between its parts, leaving nothing at
/// `out`.
pub fn export_run(
    run_dir: &Path,
    which: &str,
    out: &Path,
    stop: Option<&StopFlag>,
) -> Result<ExportSummary, TrainError> {
    let staged = Staged::new(out)?;
    let tmp = staged.dir().to_path_buf();
    let result = (|| -> Result<Vec<String>, TrainError> {
        let cfg = run_config(run_dir, &[])?;
        let ckpt = checkpoint_dir(run_dir, which)?;
        let device = Default::default();
        let model = load_run_model::<NdArray>(&cfg, &ckpt, &device)?;
        let check = || staged.check(stop, "export");
        let vit = |e: tracknet_vit::error::VitError| TrainError::from(ModelError::from(e));
        let snapshot = tracknet_vit::model::snapshot_dir(&cfg.model)?;
        let extra = passthrough(snapshot.as_deref(), &model.backbone).map_err(vit)?;
        let hf_config = backbone_hf_config(&cfg.model)?;
        let mut entries = Vec::new();

        let quantized = model.quantized_weights() > 0;
        let lora = cfg.model.lora.enabled;
        // Base, merged, adapter, decoder + head.
        let bar = crate::progress::Task::new("export", 4);
        let base_name = if quantized {
            let q = &cfg.model.quantization;
            let spec = quant_spec(&cfg.model);
            let bnb = BnbConfig {
                quant_type: spec.quant_type,
                double_quant: spec.double_quant,
                compute_dtype: q.compute_dtype.as_str().to_string(),
                skip_modules: q.skip_modules.clone(),
            };
            save_4bit_snapshot(
                &model.backbone,
                &hf_config,
                &bnb,
                &extra,
                &tmp.join("backbone-4bit"),
            )
            .map_err(vit)?;
            Some("backbone-4bit")
        } else if lora {
            // The frozen dense base as it is (adapters are left out of the state dict).
            save_snapshot(
                &model.backbone,
                &hf_config,
                &extra,
                &tmp.join("backbone-base"),
            )
            .map_err(vit)?;
            Some("backbone-base")
        } else {
            None
        };
        entries.extend(base_name.map(String::from));
        bar.set(1);
        check()?;

        let merged_backbone = merged(model.backbone.clone());
        save_snapshot(
            &merged_backbone,
            &hf_config,
            &extra,
            &tmp.join("backbone-merged"),
        )
        .map_err(vit)?;
        entries.push("backbone-merged".into());
        bar.set(2);
        check()?;

        if lora {
            model.save_peft_adapter(
                &tmp.join("adapter"),
                &lora_settings(&cfg.model),
                base_name.map(String::from),
            )?;
            entries.push("adapter".into());
        }
        bar.set(3);
        check()?;

        let decoder = decoder_config(&cfg.model, model.backbone.hidden_size())?;
        let head = HeatmapHeadConfig::new(*decoder.channels.last().unwrap_or(&1));
        let heads = HeadsConfig {
            format: "tracknet-heads".into(),
            decoder,
            head,
            input_frames: cfg.data.sequence.frames(),
            resize: cfg.data.preprocess.resize,
            normalize: cfg.data.preprocess.normalize,
            backbone: "backbone-merged".into(),
        };
        save_heads(&model, &heads, &tmp).map_err(vit)?;
        entries.push(tracknet_vit::export::HEADS_FILE.into());
        entries.push(tracknet_vit::export::HEADS_CONFIG.into());
        bar.set(4);
        Ok(entries)
    })();
    let entries = staged.finish(result)?;
    Ok(ExportSummary {
        dir: out.to_path_buf(),
        entries,
    })
}
