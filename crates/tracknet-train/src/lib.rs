//! Training, evaluation and prediction for the TrackNet heatmap model: losses, optimizer,
//! schedule, the loop, checkpoints, and the `tracknet` CLI's building blocks.

pub mod amp;
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod log;
pub mod loss;
pub mod optim;
pub mod predict;
pub mod progress;
pub mod quickstart;
pub mod run_folder;
pub mod schedule;
pub mod staged;
pub mod stop;
pub mod trainer;

pub use error::TrainError;
pub use trainer::{TrainOptions, TrainSummary, train};

/// The embedded default, stage 2: QLoRA fine-tuning of the pre-trained small backbone.
pub const QUICKSTART_CONFIG: &str = include_str!("../../../configs/quickstart.yaml");
/// The embedded default, stage 1: a short full pre-training of a small DINOv3-style backbone.
pub const QUICKSTART_PRETRAIN_CONFIG: &str =
    include_str!("../../../configs/quickstart_pretrain.yaml");

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use tracknet_config::RunConfig;
    use tracknet_vit::model::HeatmapModel;

    /// Both embedded stages parse, validate and build (the second one as QLoRA: every
    /// projection 4-bit with an adapter).
    #[test]
    fn embedded_quickstart_configs_build() {
        let device = Default::default();
        for (text, qlora) in [
            (super::QUICKSTART_PRETRAIN_CONFIG, false),
            (super::QUICKSTART_CONFIG, true),
        ] {
            let cfg = RunConfig::from_yaml_str(text).unwrap();
            cfg.validate().unwrap();
            let (model, build) = HeatmapModel::<NdArray>::from_config(&cfg.model, &device).unwrap();
            let mem = model.memory_report();
            assert_eq!(mem.quantized_params() == mem.total_params(), qlora);
            assert_eq!(
                build.lora_targets.len(),
                if qlora { mem.layers.len() } else { 0 }
            );
        }
    }
}
