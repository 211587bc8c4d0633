//! Local Hugging Face snapshots: resolution (directory or cached model id, never the network),
//! safetensors reading (f32 / f16 / bf16 / f64 → f32) and checkpoint-name mapping.
//!
//! Checkpoint keys are mapped to one canonical scheme — the names transformers 5 saves (the
//! module paths of [`crate::dinov3::Dinov3Model`] and [`crate::vit::VitModel`]) — by
//! [`canonical_key`], the single place that knows older / published names.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use tracknet_quant::bnb::{self, BnbConfig, BnbLayer, StoredTensor};
use tracknet_quant::{CodeBooks, Quantized4};

use crate::arch::BackboneArch;
use crate::error::VitError;
use crate::layers::params::{Init, ParamSource};

mod mapped;
mod names;
pub use mapped::{MappedSafetensors, TensorEntry};
pub use names::{
    KeyMapping, canonical_key, family_key, hub_module_path, peft_paths_in_our_spelling, split_rows,
    target_names_in_our_spelling,
};

/// Name of the single-file weights in a snapshot.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the index of a sharded checkpoint.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// A tensor read from disk, converted to f32. Row-major, PyTorch layout.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Upload to `device` as a rank-`D` tensor; `None` if the rank differs.
    pub fn to_tensor<B: Backend, const D: usize>(
        &self,
        device: &B::Device,
    ) -> Option<Tensor<B, D>> {
        (self.shape.len() == D).then(|| {
            Tensor::from_data(
                TensorData::new(self.data.clone(), self.shape.clone()),
                device,
            )
        })
    }
}

/// The Hugging Face hub cache root the Python libraries use: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. `None` when none can be formed.
pub fn hf_cache_root() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

/// Resolve `name_or_path` to a snapshot directory holding `config.json` and the weights:
/// an existing directory is used as is; otherwise an `org/name` model id is looked up in the
/// local hub cache ([`hf_cache_root`]). Nothing is ever downloaded: `local_files_only = false`
/// only adds a download hint to the error.
pub fn resolve_snapshot(name_or_path: &str, local_files_only: bool) -> Result<PathBuf, VitError> {
    let roots: Vec<PathBuf> = hf_cache_root().into_iter().collect();
    resolve_snapshot_in(name_or_path, &roots, local_files_only)
}

/// [`resolve_snapshot`] with explicit cache roots (tests, custom caches). In each root the
/// model `org/name` lives in `models--org--name/snapshots/<rev>/`, `<rev>` taken from
/// `refs/main` when present, else the only (or most recently modified) snapshot.
pub fn resolve_snapshot_in(
    name_or_path: &str,
    cache_roots: &[PathBuf],
    local_files_only: bool,
) -> Result<PathBuf, VitError> {
    let mut searched = Vec::new();
    let direct = PathBuf::from(name_or_path);
    if direct.is_dir() && is_snapshot(&direct) {
        return Ok(direct);
    }
    searched.push(direct);
    if let Some(repo_dir) = repo_dir_name(name_or_path) {
        for root in cache_roots {
            let repo = root.join(&repo_dir);
            match cached_snapshot(&repo) {
                Some(dir) if is_snapshot(&dir) => return Ok(dir),
                Some(dir) => searched.push(dir),
                None => searched.push(repo.join("snapshots")),
            }
        }
    }
    let hint = if local_files_only {
        String::new()
    } else {
        format!("; fetch it with `huggingface-cli download {name_or_path}`")
    };
    Err(VitError::SnapshotNotFound {
        name: name_or_path.to_string(),
        searched,
        hint,
    })
}

/// `org/name` → `models--org--name`; `None` for anything that is not a two-part model id.
fn repo_dir_name(id: &str) -> Option<String> {
    let mut parts = id.split('/');
    let (org, name) = (parts.next()?, parts.next()?);
    let valid = |s: &str| !s.is_empty() && s != "." && s != "..";
    (parts.next().is_none() && valid(org) && valid(name)).then(|| format!("models--{org}--{name}"))
}

/// The snapshot directory `refs/main` points at, else the only / newest one.
fn cached_snapshot(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let rev = rev.trim();
        if !rev.is_empty() {
            return Some(snapshots.join(rev));
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

fn is_snapshot(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        && (dir.join(WEIGHTS_FILE).is_file() || dir.join(WEIGHTS_INDEX_FILE).is_file())
}

/// The safetensors files of a snapshot: `model.safetensors`, else every shard named by
/// `model.safetensors.index.json` (sorted, without duplicates).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, VitError> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if !index.is_file() {
        return Err(VitError::Io {
            path: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} in the snapshot"),
            ),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|source| VitError::Io {
        path: index.clone(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| VitError::Json {
        path: index.clone(),
        message: e.to_string(),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| VitError::Json {
            path: index.clone(),
            message: "no `weight_map` object".into(),
        })?;
    let mut files = BTreeSet::new();
    for (key, file) in map {
        let file = file.as_str().ok_or_else(|| VitError::Json {
            path: index.clone(),
            message: format!("weight_map entry `{key}` is not a file name"),
        })?;
        files.insert(dir.join(file));
    }
    Ok(files.into_iter().collect())
}

/// The Hugging Face name of a parameter path (`….base.weight` → `….weight`, LayerNorm's
/// `gamma`/`beta` → `weight`/`bias`) and whether its values are stored transposed there
/// (Burn's `Linear` is `[in, out]`, PyTorch's `[out, in]`).
pub fn hf_name(path: &str) -> (String, bool) {
    if let Some(p) = path.strip_suffix(".base.weight") {
        (format!("{p}.weight"), true)
    } else if let Some(p) = path.strip_suffix(".base.bias") {
        (format!("{p}.bias"), false)
    } else if let Some(p) = path.strip_suffix(".gamma") {
        (format!("{p}.weight"), false)
    } else if let Some(p) = path.strip_suffix(".beta") {
        (format!("{p}.bias"), false)
    } else {
        (path.to_string(), false)
    }
}

/// `[d0, d1]` row-major → `[d1, d0]` row-major.
pub fn transpose2(shape: &[usize], values: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (d0, d1) = (shape[0], shape[1]);
    let t = (0..d0 * d1)
        .map(|k| values[(k % d0) * d1 + k / d0])
        .collect();
    (vec![d1, d0], t)
}

/// Read every tensor of one safetensors file as stored (dtype, shape, bytes), through a
/// memory map: each tensor is copied once, the file itself is never read into a buffer.
pub fn read_stored(path: &Path) -> Result<BTreeMap<String, StoredTensor>, VitError> {
    let file = MappedSafetensors::open(path)?;
    Ok(file
        .entries()
        .keys()
        .filter_map(|key| Some((key.clone(), file.stored(key)?)))
        .collect())
}

/// Read every tensor of one safetensors file, converted to f32.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, HostTensor>, VitError> {
    read_stored(path)?
        .into_iter()
        .map(|(key, t)| Ok((key.clone(), to_host(path, &key, t)?)))
        .collect()
}

/// A stored float tensor as f32 (F32, F16, BF16, F64), else a dtype error naming `key`.
fn to_host(path: &Path, key: &str, t: StoredTensor) -> Result<HostTensor, VitError> {
    let data = t.to_f32().ok_or_else(|| VitError::Dtype {
        path: path.to_path_buf(),
        key: key.to_string(),
        dtype: format!("{:?}", t.dtype),
    })?;
    Ok(HostTensor {
        shape: t.shape,
        data,
    })
}

/// The tensors of a snapshot under canonical names, handed to the model builder one by one.
/// Problems are collected (missing, mis-shaped) and reported together by [`Self::finish`],
/// which also reports every tensor that was never asked for.
pub(crate) struct WeightStore<B: Backend> {
    snapshot: PathBuf,
    /// The mapped weight files; full-precision tensors are copied out when asked for.
    files: Vec<MappedSafetensors>,
    /// canonical name → (checkpoint name, where it is)
    tensors: BTreeMap<String, (String, Stored)>,
    /// canonical weight name → (checkpoint name, 4-bit layer as stored)
    quantized: BTreeMap<String, (String, BnbLayer)>,
    /// The snapshot's `quantization_config`, if any.
    pub(crate) bnb: Option<BnbConfig>,
    /// Shared code books of the 4-bit layers (present when the snapshot has any).
    pub(crate) books: Option<CodeBooks<B>>,
    missing: Vec<String>,
    mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    problems: Vec<VitError>,
    device: B::Device,
    _backend: PhantomData<B>,
}

/// Where a full-precision tensor of a [`WeightStore`] is.
enum Stored {
    /// Still in mapped file `files[i]` under its checkpoint name.
    Mapped(usize),
    /// Copied out already (a piece left over by a 4-bit layer).
    Owned(PathBuf, StoredTensor),
}

impl<B: Backend> WeightStore<B> {
    /// Read all weight files of the snapshot `dir`, mapping names for `arch`. bitsandbytes
    /// 4-bit layers (a `….weight.quant_state.bitsandbytes__*` entry) are kept as their codes.
    pub(crate) fn open(
        dir: &Path,
        arch: &BackboneArch,
        device: &B::Device,
    ) -> Result<Self, VitError> {
        let config_path = dir.join("config.json");
        let bnb = match std::fs::read_to_string(&config_path) {
            Ok(text) => {
                let json: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| VitError::Json {
                        path: config_path.clone(),
                        message: e.to_string(),
                    })?;
                BnbConfig::from_model_config(&json).map_err(|source| VitError::Bnb {
                    path: config_path.clone(),
                    source,
                })?
            }
            Err(_) => None,
        };
        let mut tensors: BTreeMap<String, (String, Stored)> = BTreeMap::new();
        let mut quantized: BTreeMap<String, (String, BnbLayer)> = BTreeMap::new();
        let duplicate = |file: &Path, canonical: String, first: &str, second: String| {
            VitError::DuplicateTensor {
                path: file.to_path_buf(),
                key: canonical,
                first: first.to_string(),
                second,
            }
        };
        let mut files = Vec::new();
        for (i, path) in weight_files(dir)?.into_iter().enumerate() {
            let file = MappedSafetensors::open(&path)?;
            // 4-bit layers first: they own several entries each (`.absmax`, `.quant_map`, …),
            // copied out of the map together (they are small: half a byte per weight).
            let weights: Vec<&String> = file
                .entries()
                .keys()
                .filter(|k| k.ends_with(".weight"))
                .filter(|k| {
                    let state = format!("{k}.quant_state.");
                    file.entries()
                        .range(state.clone()..)
                        .next()
                        .is_some_and(|(n, _)| n.starts_with(&state))
                })
                .collect();
            let mut taken = BTreeSet::new();
            let mut pieces: BTreeMap<String, StoredTensor> = BTreeMap::new();
            for key in &weights {
                // The layer's entries sort right after its `weight` key: `weight`, then
                // `weight.absmax`, `weight.quant_map`, … (all `weight.` + suffix).
                let prefix = format!("{key}.");
                for name in file
                    .entries()
                    .range((*key).clone()..)
                    .map(|(n, _)| n)
                    .take_while(|n| *n == *key || n.starts_with(&prefix))
                {
                    if let Some(t) = file.stored(name) {
                        pieces.insert(name.clone(), t);
                        taken.insert(name.clone());
                    }
                }
            }
            for key in weights {
                if bnb::quant_state_key(&pieces, key).is_none() {
                    continue;
                }
                let layer = bnb::take_layer(&mut pieces, key)
                    .map_err(|source| VitError::Bnb {
                        path: path.clone(),
                        source,
                    })?
                    .ok_or_else(|| VitError::Safetensors {
                        path: path.clone(),
                        message: format!("`{key}`: quant state vanished while reading"),
                    })?;
                let canonical = match canonical_key(arch, key) {
                    KeyMapping::Canonical(c) => c,
                    KeyMapping::Ignored => continue,
                    KeyMapping::Split(..) => {
                        return Err(VitError::Config {
                            path: path.clone(),
                            message: format!(
                                "`{key}` is a fused SwiGLU projection stored in 4 bits: \
                                 transformers + bitsandbytes write it as one quant state for \
                                 two layers, which they cannot load back either; quantize the \
                                 f32 snapshot instead (quantization.enabled: true)"
                            ),
                        });
                    }
                };
                if let Some((first, _)) = quantized.get(&canonical) {
                    return Err(duplicate(&path, canonical, first, key.clone()));
                }
                quantized.insert(canonical, (key.clone(), layer));
            }
            let rest = file
                .entries()
                .keys()
                .filter(|k| !taken.contains(*k))
                .map(|k| (k.clone(), Stored::Mapped(i)));
            let leftover = pieces
                .into_iter()
                .map(|(k, t)| (k, Stored::Owned(path.clone(), t)));
            for (key, stored) in rest.chain(leftover) {
                let parts = match canonical_key(arch, &key) {
                    KeyMapping::Ignored => continue,
                    KeyMapping::Canonical(c) => vec![(c, key, stored)],
                    KeyMapping::Split(first, second) => {
                        let t = match stored {
                            Stored::Mapped(_) => file.stored(&key),
                            Stored::Owned(_, t) => Some(t),
                        };
                        let (a, b) = t.as_ref().and_then(split_rows).ok_or_else(|| {
                            VitError::Safetensors {
                                path: path.clone(),
                                message: format!(
                                    "`{key}` should hold two halves along its first axis \
                                     ({first}, {second}), shape {:?}",
                                    t.as_ref().map(|t| t.shape.clone()).unwrap_or_default()
                                ),
                            }
                        })?;
                        vec![
                            (
                                first,
                                format!("{key}[first half]"),
                                Stored::Owned(path.clone(), a),
                            ),
                            (
                                second,
                                format!("{key}[second half]"),
                                Stored::Owned(path.clone(), b),
                            ),
                        ]
                    }
                };
                for (canonical, key, stored) in parts {
                    if let Some((first, _)) = tensors.get(&canonical) {
                        return Err(duplicate(&path, canonical, first, key));
                    }
                    tensors.insert(canonical, (key, stored));
                }
            }
            files.push(file);
        }
        let books = (!quantized.is_empty()).then(|| CodeBooks::new(device));
        Ok(Self {
            snapshot: dir.to_path_buf(),
            files,
            tensors,
            quantized,
            bnb,
            books,
            missing: Vec::new(),
            mismatched: Vec::new(),
            problems: Vec::new(),
            device: device.clone(),
            _backend: PhantomData,
        })
    }

    /// Ok when every requested tensor was present with the right shape and none is left over.
    pub(crate) fn finish(mut self) -> Result<(), VitError> {
        if !self.problems.is_empty() {
            return Err(self.problems.remove(0));
        }
        let unexpected: Vec<String> = self
            .tensors
            .into_values()
            .map(|(name, _)| name)
            .chain(self.quantized.into_values().map(|(name, _)| name))
            .collect();
        if self.missing.is_empty() && self.mismatched.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        Err(VitError::Weights {
            snapshot: self.snapshot,
            missing: self.missing,
            unexpected,
            mismatched: self.mismatched,
        })
    }
}

impl<B: Backend> ParamSource<B> for WeightStore<B> {
    fn device(&self) -> B::Device {
        self.device.clone()
    }

    /// The checkpoint tensor `key`; on a problem it is recorded and zeros stand in, so that the
    /// build goes on and every problem is reported at once.
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        _init: Init,
    ) -> Tensor<B, D> {
        let Some((name, stored)) = self.tensors.remove(key) else {
            return self.absent(key, shape);
        };
        // The header's shape is checked before anything is copied.
        let (file, stored_shape) = match &stored {
            Stored::Mapped(i) => {
                let f = &self.files[*i];
                let shape = f.entries().get(&name).map(|e| e.shape.clone());
                (f.path().to_path_buf(), shape.unwrap_or_default())
            }
            Stored::Owned(path, t) => (path.clone(), t.shape.clone()),
        };
        if stored_shape != shape {
            self.mismatched.push((name, shape.to_vec(), stored_shape));
            return Tensor::zeros(shape, &self.device);
        }
        let t = match stored {
            Stored::Mapped(i) => self.files[i].stored(&name),
            Stored::Owned(_, t) => Some(t),
        };
        let converted = t
            .ok_or_else(|| VitError::Safetensors {
                path: file.clone(),
                message: format!(
                    "`{name}` is listed in the header but its bytes are not in the file"
                ),
            })
            .and_then(|t| to_host(&file, &name, t));
        match converted {
            Ok(t) => Tensor::from_data(TensorData::new(t.data, shape), &self.device),
            Err(e) => {
                self.problems.push(e);
                Tensor::zeros(shape, &self.device)
            }
        }
    }

    fn quantized(&mut self, key: &str, shape: [usize; 2]) -> Option<(Quantized4, CodeBooks<B>)> {
        let (name, layer) = self.quantized.remove(key)?;
        if layer.shape != shape {
            self.mismatched.push((name, shape.to_vec(), layer.shape));
            return None;
        }
        Some((layer.quantized, self.books.clone()?))
    }
}

impl<B: Backend> WeightStore<B> {
    /// A tensor the model needs that the snapshot lacks in full precision: recorded, zeros.
    fn absent<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Tensor<B, D> {
        if let Some((name, _)) = self.quantized.get(key) {
            self.problems.push(VitError::Config {
                path: self.snapshot.clone(),
                message: format!(
                    "`{name}` is stored in 4 bits but this model needs it in full precision"
                ),
            });
        } else {
            self.missing.push(key.to_string());
        }
        Tensor::zeros(shape, &self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_two_part_ids_name_cache_repos() {
        assert_eq!(
            repo_dir_name("facebook/dinov3-vits16").as_deref(),
            Some("models--facebook--dinov3-vits16")
        );
        assert_eq!(repo_dir_name("dinov3"), None);
        assert_eq!(repo_dir_name("/abs/path/x"), None);
        assert_eq!(repo_dir_name("../x"), None);
    }
}
