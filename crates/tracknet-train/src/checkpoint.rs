//! Checkpoints: trainable weights, PEFT adapter, optimizer state and run state, written so that
//! killing the process at any moment leaves the previous checkpoint usable.
//!
//! Layout of `RUN/checkpoints/`:
//! - `<name>-<step>/` one complete checkpoint folder (written as `.tmp-…` and renamed when
//!   complete): `trainable.safetensors`, `optimizer.safetensors`, `state.json`, `adapter/`.
//! - `last.json`, `best.json`: pointers `{"dir": "<name>-<step>"}` replaced atomically after the
//!   folder is complete; the folder a pointer no longer names is deleted afterwards.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optim::{OptimKind, Optimizer, ParamState};

pub use tracknet_lora::params::{NamedTensors, collect_params};

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    /// Last completed epoch (1-based).
    pub epoch: usize,
    /// Optimizer steps taken.
    pub global_step: usize,
    /// Best validation score so far and its epoch.
    pub best_score: Option<f64>,
    /// Epoch of the best score.
    pub best_epoch: Option<usize>,
    /// The metric `best` is chosen by.
    pub best_metric: String,
    /// One row per finished epoch (the rows of metrics.csv).
    pub history: Vec<BTreeMap<String, f64>>,
    /// The full run configuration (YAML), so a checkpoint explains itself.
    pub config_yaml: String,
    /// Quantization settings needed to rebuild the frozen base from the same snapshot.
    pub quantization: Option<QuantRecord>,
    /// fp16 loss scaling's state (`training.amp` with `precision: fp16` on a backend that runs
    /// it); absent in checkpoints of f32 runs and of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<crate::amp::LossScaler>,
    /// The untrained model's validation metrics (as [`crate::trainer::TrainSummary`]'s
    /// `baseline`), kept so that a resumed run still reports them.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nan_as_null")]
    pub baseline: Option<BTreeMap<String, f64>>,
    /// Set in a checkpoint written part-way through an epoch (a graceful stop on a signal):
    /// where that epoch continues. Absent at epoch ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_epoch: Option<PartialEpoch>,
}

/// A metrics row whose values may be NaN (the baseline's `train_loss`): JSON has no NaN, so
/// it is written as `null` and read back as NaN.
mod nan_as_null {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Row = BTreeMap<String, f64>;

    pub fn serialize<S: Serializer>(row: &Option<Row>, s: S) -> Result<S::Ok, S::Error> {
        row.as_ref()
            .map(|r| {
                r.iter()
                    .map(|(k, v)| (k.clone(), v.is_finite().then_some(*v)))
                    .collect::<BTreeMap<_, _>>()
            })
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Row>, D::Error> {
        let row: Option<BTreeMap<String, Option<f64>>> = Deserialize::deserialize(d)?;
        Ok(row.map(|r| {
            r.into_iter()
                .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
                .collect()
        }))
    }
}

impl RunState {
    /// The epoch whose parameters the checkpoint holds: the one in progress when it was
    /// written part-way, else the last completed one.
    pub fn weights_epoch(&self) -> usize {
        self.partial_epoch.as_ref().map_or(self.epoch, |p| p.epoch)
    }
}

/// How far an epoch had got when its run stopped part-way: enough to continue it exactly as
/// the uninterrupted run goes on (the loader's position in the epoch's fixed batch order, and
/// the running sums its metrics row is made of).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartialEpoch {
    /// The epoch (1-based).
    pub epoch: usize,
    /// Batches of the epoch's order already consumed ([`tracknet_data::BatchLoader::position`]).
    pub batches: usize,
    /// Batches trained on (the step counter of the epoch's progress).
    pub steps: usize,
    /// Sum of the losses of the updates taken.
    pub loss_sum: f64,
    /// Updates taken (fp16 overflow skips excluded).
    pub updates: usize,
    /// fp16 steps skipped for overflowing gradients.
    pub fp16_skipped: usize,
    /// Wall time spent in the epoch so far, seconds.
    pub seconds: f64,
}

/// How the frozen base was quantized.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuantRecord {
    /// `nf4` | `fp4`.
    pub quant_type: String,
    /// Block size.
    pub blocksize: usize,
    /// Double quantization.
    pub double_quant: bool,
    /// Compute dtype.
    pub compute_dtype: String,
    /// Layers kept in full precision.
    pub skip_modules: Vec<String>,
    /// Where the base weights came from (snapshot or random init with the run's seed).
    pub base: String,
    /// The seed the base was built with (random init is a function of it).
    pub seed: u64,
}

/// Replace parameters by path from `tensors` ([`tracknet_lora::params::load_params`]): every
/// tensor must land on a parameter of the same shape, and every parameter `required(path)`
/// selects must be in `tensors`, else one error lists what is unexpected, mis-shaped or missing.
pub fn load_params<B: Backend, M: Module<B>>(
    module: M,
    tensors: &NamedTensors,
    required: &dyn Fn(&str) -> bool,
    file: &Path,
) -> Result<M, TrainError> {
    tracknet_lora::params::load_params(module, tensors, required).map_err(|m| {
        TrainError::CheckpointMismatch {
            path: file.to_path_buf(),
            what: "weights",
            problems: m.lines(),
        }
    })
}

/// Initialise a model from another run's checkpoint: every parameter whose path `keep`
/// selects is copied from `tensors` (it must be there, with the same shape); the others are
/// left as they are. Used to start a fine-tuning stage from a pre-training stage.
pub fn init_params_from<B: Backend, M: Module<B>>(
    module: M,
    tensors: &NamedTensors,
    keep: impl Fn(&str) -> bool,
    file: &Path,
) -> Result<(M, usize), TrainError> {
    let selected: NamedTensors = tensors
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let n = selected.len();
    Ok((load_params(module, &selected, &keep, file)?, n))
}

/// Which parameters a checkpoint of a run trained with `cfg` must hold, by path: the decoder
/// and head (with BatchNorm's running statistics), every LoRA factor, the multi-frame patch
/// embedding, and the whole backbone of a full fine-tuning once `epoch` is past
/// `training.backbone_freeze_epochs`. (LoRA biases and `modules_to_save` are loaded when
/// present.) Without this, a checkpoint of another configuration would load "successfully"
/// and leave, say, the adapters at their zero initialisation.
pub fn required_tensors(
    cfg: &tracknet_config::RunConfig,
    epoch: usize,
    patch_embedding: Option<String>,
) -> impl Fn(&str) -> bool {
    let m = &cfg.model;
    let t = &cfg.training;
    let full_backbone = !m.lora.enabled
        && !m.quantization.enabled
        && !m.backbone.freeze
        && epoch > t.backbone_freeze_epochs;
    move |path: &str| {
        path.starts_with("decoder.")
            || path.starts_with("head.")
            || path.contains(".lora_a.")
            || path.contains(".lora_b.")
            || patch_embedding
                .as_deref()
                .is_some_and(|p| path.starts_with(p))
            || (full_backbone && path.starts_with("backbone."))
    }
}

/// Refuses optimizer state that does not fit the model: every `<path>.m` / `<path>.v` must
/// belong to a parameter of the model with as many values.
pub fn check_optimizer_fits<B: Backend, M: Module<B>, O: Backend>(
    model: &M,
    opt: &Optimizer<O>,
    file: &Path,
) -> Result<(), TrainError> {
    let mut numel = BTreeMap::new();
    model.visit(&mut tracknet_lora::PathVisitor::new(
        |p: &str, n: usize, _: bool| {
            numel.insert(p.to_string(), n);
        },
    ));
    let mut bad = Vec::new();
    for (path, s) in &opt.state {
        let Some(&n) = numel.get(path) else {
            bad.push(format!(
                "{path}: optimizer state for no parameter of the model"
            ));
            continue;
        };
        for (which, t) in [("m", &s.m), ("v", &s.v)] {
            if let Some(t) = t
                && t.dims()[0] != n
            {
                bad.push(format!(
                    "{path}.{which}: expected {n} values (the parameter's), found {}",
                    t.dims()[0]
                ));
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(TrainError::CheckpointMismatch {
            path: file.to_path_buf(),
            what: "optimizer state",
            problems: bad,
        })
    }
}

/// Serialise named f32 tensors as safetensors bytes.
pub fn to_safetensors(
    tensors: &NamedTensors,
    meta: HashMap<String, String>,
) -> Result<Vec<u8>, TrainError> {
    tracknet_lora::params::safetensors_bytes(tensors, meta).map_err(|e| TrainError::TensorFile {
        path: PathBuf::from("<tensors being written>"),
        problem: format!("cannot be serialized: {e}"),
    })
}

/// Read named f32 tensors and the metadata from a safetensors file.
pub fn read_safetensors(
    path: &Path,
) -> Result<(NamedTensors, HashMap<String, String>), TrainError> {
    let raw = fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |problem: String| TrainError::TensorFile {
        path: path.to_path_buf(),
        problem,
    };
    let (_, meta) = SafeTensors::read_metadata(&raw)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(&raw)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (k, v) in st.tensors() {
        if v.dtype() != Dtype::F32 {
            return Err(bad(format!("{k}: expected F32, found {:?}", v.dtype())));
        }
        let vals = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(k, (v.shape().to_vec(), vals));
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Optimizer state as named tensors (`<path>.m`, `<path>.v`) + metadata.
pub fn optimizer_tensors<B: Backend>(
    opt: &Optimizer<B>,
) -> (NamedTensors, HashMap<String, String>) {
    let host = |t: &Tensor<B, 1>| {
        (
            t.dims().to_vec(),
            t.clone()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default(),
        )
    };
    let mut out = BTreeMap::new();
    for (path, s) in &opt.state {
        if let Some(m) = &s.m {
            out.insert(format!("{path}.m"), host(m));
        }
        if let Some(v) = &s.v {
            out.insert(format!("{path}.v"), host(v));
        }
    }
    let mut meta = HashMap::new();
    meta.insert("step".into(), opt.step.to_string());
    for (path, s) in &opt.state {
        meta.insert(format!("steps.{path}"), s.steps.to_string());
    }
    meta.insert("kind".into(), format!("{:?}", opt.kind));
    (out, meta)
}

/// Rebuild an optimizer from [`optimizer_tensors`] output.
pub fn optimizer_from_tensors<B: Backend>(
    kind: OptimKind,
    tensors: NamedTensors,
    meta: &HashMap<String, String>,
    device: &B::Device,
) -> Optimizer<B> {
    let mut opt = Optimizer::new(kind);
    opt.step = meta.get("step").and_then(|s| s.parse().ok()).unwrap_or(0);
    for (key, (_, values)) in tensors {
        let (path, which) = match key.rsplit_once('.') {
            Some((p, w)) => (p.to_string(), w.to_string()),
            None => continue,
        };
        let t = Tensor::<B, 1>::from_floats(values.as_slice(), device);
        // Checkpoints from before per-parameter step counts: every parameter took every step.
        let steps = meta
            .get(&format!("steps.{path}"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(opt.step);
        let e = opt.state.entry(path).or_insert(ParamState {
            steps,
            ..ParamState::default()
        });
        if which == "m" {
            e.m = Some(t);
        } else {
            e.v = Some(t);
        }
    }
    opt
}

/// Write a checkpoint folder completely, then point `pointer` (`last` / `best`) at it.
pub fn commit_checkpoint(
    ckpt_root: &Path,
    pointer: &str,
    step: usize,
    write_contents: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    fs::create_dir_all(ckpt_root).map_err(io(ckpt_root))?;
    let name = format!("{pointer}-{step:08}");
    let tmp = ckpt_root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    write_contents(&tmp)?;
    // A folder of the same name may be the one a pointer names now (a second checkpoint at
    // the same step: a stop right after an epoch's end): it is never removed before the
    // pointer moves, so the new folder takes the next free name.
    let base = name;
    let (mut name, mut k) = (base.clone(), 1);
    while ckpt_root.join(&name).exists() {
        k += 1;
        name = format!("{base}.{k}");
    }
    let dir = ckpt_root.join(&name);
    fs::rename(&tmp, &dir).map_err(io(&dir))?;
    let previous = read_pointer(ckpt_root, pointer);
    let json = serde_json::to_vec(&serde_json::json!({ "dir": name })).unwrap_or_default();
    tracknet_data::write_atomic(&ckpt_root.join(format!("{pointer}.json")), &json)?;
    if let Some(prev) = previous
        && prev != dir
    {
        let _ = fs::remove_dir_all(prev);
    }
    Ok(dir)
}

/// The folder `pointer` (`last` / `best`) names, if it exists and is complete.
pub fn read_pointer(ckpt_root: &Path, pointer: &str) -> Option<PathBuf> {
    let raw = fs::read(ckpt_root.join(format!("{pointer}.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    let dir = ckpt_root.join(v.get("dir")?.as_str()?);
    dir.join("state.json").exists().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second checkpoint at the same step (a stop right at an epoch's start) takes a new
    /// folder: the one the pointer named is removed only after the pointer moved.
    #[test]
    fn a_second_checkpoint_at_the_same_step_takes_a_new_folder() {
        let root = std::env::temp_dir().join(format!("tracknet-ckpt-same-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let write = |text: &'static str| {
            move |dir: &Path| {
                fs::write(dir.join("state.json"), text).map_err(crate::error::io_err(dir))
            }
        };
        let first = commit_checkpoint(&root, "last", 7, write("first")).unwrap();
        let second = commit_checkpoint(&root, "last", 7, write("second")).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            read_pointer(&root, "last").as_deref(),
            Some(second.as_path())
        );
        assert_eq!(
            fs::read_to_string(second.join("state.json")).unwrap(),
            "second"
        );
        assert!(!first.exists(), "the folder no pointer names is removed");
        let _ = fs::remove_dir_all(&root);
    }
}
