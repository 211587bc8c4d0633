//! Write a (dense) backbone as a Hugging Face snapshot — `config.json` + `model.safetensors`
//! with transformers 5 key names — so it loads back through [`crate::backbone::Backbone::from_snapshot`]
//! (and into transformers). Used to hand a pre-trained backbone to a QLoRA run.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use safetensors::{Dtype, tensor::TensorView};
use tracknet_lora::params::PathStack;

use crate::backbone::Backbone;
use crate::error::VitError;

/// HF key and PyTorch-layout values of every backbone parameter. LoRA adapters are left out;
/// a 4-bit base cannot be exported (its projection has no dense weight parameter).
pub fn backbone_state_dict<B: Backend>(
    backbone: &Backbone<B>,
) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    struct V<B> {
        stack: PathStack,
        out: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: Backend> ModuleVisitor<B> for V<B> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let path = self.stack.path();
            if path.contains(".lora_a.") || path.contains(".lora_b.") {
                return;
            }
            let t = param.val();
            let (key, t): (String, Tensor<B, D>) =
                if let Some(p) = path.strip_suffix(".base.weight") {
                    // Burn `[in, out]` → PyTorch `[out, in]`.
                    (format!("{p}.weight"), t.transpose())
                } else if let Some(p) = path.strip_suffix(".base.bias") {
                    (format!("{p}.bias"), t)
                } else if let Some(p) = path.strip_suffix(".gamma") {
                    (format!("{p}.weight"), t)
                } else if let Some(p) = path.strip_suffix(".beta") {
                    (format!("{p}.bias"), t)
                } else {
                    (path, t)
                };
            let shape = t.dims().to_vec();
            let values = t
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default();
            self.out.insert(key, (shape, values));
        }
    }
    let mut v = V {
        stack: PathStack::default(),
        out: BTreeMap::new(),
        _b: std::marker::PhantomData::<B>,
    };
    backbone.visit(&mut v);
    v.out
}

/// Write `dir/config.json` (`config` as given, a transformers config) and `dir/model.safetensors`.
pub fn save_snapshot<B: Backend>(
    backbone: &Backbone<B>,
    config: &serde_json::Value,
    dir: &Path,
) -> Result<(), VitError> {
    let io = |source| VitError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tensors = backbone_state_dict(backbone);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, (s, v))| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(k, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (k.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| VitError::Safetensors {
            path: dir.join("model.safetensors"),
            message: e.to_string(),
        })?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let st = safetensors::serialize(views, &Some(meta)).map_err(|e| VitError::Safetensors {
        path: dir.join("model.safetensors"),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join("model.safetensors"), &st)?;
    let json = serde_json::to_vec_pretty(config).map_err(|e| VitError::Json {
        path: dir.join("config.json"),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join("config.json"), &json)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VitError> {
    let io = |source| VitError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
