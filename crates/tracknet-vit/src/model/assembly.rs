//! Model assembly: the `model:` section of a config into a [`HeatmapModel`] — where the
//! backbone comes from (snapshot, hub cache, random), the stored 4-bit format checked against
//! the config, the decoder, head, quantization and LoRA settings the config describes.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use tracknet_config::{
    Activation, BackboneFamily, ComputeDtype as CfgDtype, DecoderNorm, LoraBias, ModelConfig,
    QuantKind, TargetModules,
};
use tracknet_lora::{BiasMode, LoraInit, LoraLinear, LoraSettings, TargetSpec};
use tracknet_quant::{ComputeDtype, QuantSpec, QuantType};

use crate::backbone::{Backbone, BackboneArch, LoadedSnapshot};
use crate::decoder::{DecoderActivation, DecoderNormKind, HeatmapDecoderConfig};
use crate::error::VitError;
use crate::head::HeatmapHeadConfig;
use crate::hf;

use super::{BuildReport, HeatmapModel, Materialize, ModelError};

impl<B: crate::ModelBackend> HeatmapModel<B> {
    /// Build the whole model from the `model:` section, for single-frame input.
    pub fn from_config(
        cfg: &ModelConfig,
        device: &B::Device,
    ) -> Result<(Self, BuildReport), ModelError> {
        Self::from_config_frames(cfg, 1, device)
    }

    /// Build the whole model for `frames` stacked input frames (`data.sequence.frames()`):
    /// input `[batch, 3·frames, H, W]`. A 3-channel backbone's patch embedding is inflated (see
    /// [`Backbone::with_input_frames`]) and, with more than one frame, trains even where the
    /// rest of the backbone is frozen.
    pub fn from_config_frames(
        cfg: &ModelConfig,
        frames: usize,
        device: &B::Device,
    ) -> Result<(Self, BuildReport), ModelError> {
        let mut report = BuildReport::default();
        let (effective, notes) = with_adapter_config(cfg)?;
        let cfg = &effective;
        report.warnings.extend(notes);
        let (loaded, source) = load_backbone::<B>(cfg, device)?;
        check_stored_quantization(cfg, &loaded)?;
        let backbone =
            match loaded.backbone {
                Backbone::Dinov3(m) if !cfg.backbone.rope_augmentation => {
                    Backbone::Dinov3(m.without_rope_augmentation())
                }
                other @ (Backbone::Vit(_) | Backbone::Dinov2(_)) => {
                    if !cfg.backbone.rope_augmentation {
                        report.warnings.push(format!(
                        "model.backbone.rope_augmentation: false has no effect on a {} backbone \
                         (it has learned position embeddings, no RoPE)",
                        if matches!(other, Backbone::Vit(_)) { "ViT" } else { "DINOv2" }
                    ));
                    }
                    other
                }
                other => other,
            };
        report.backbone_source = source;
        let channels_before = backbone.num_channels();
        let backbone = backbone.with_input_frames(frames)?;
        if frames > 1 {
            let dims = match &backbone {
                Backbone::Dinov3(m) => m.embeddings.patch_embeddings.weight.dims(),
                Backbone::Vit(m) => m.embeddings.patch_embeddings.projection.weight.dims(),
                Backbone::Dinov2(m) => m.embeddings.patch_embeddings.projection.weight.dims(),
            };
            report.input_note = Some(format!(
                "input: {frames} frames stacked on the channel axis ({} channels); patch \
                 embedding backbone.{}.weight {dims:?} ({}), trainable",
                3 * frames,
                backbone.patch_embedding_path(),
                if channels_before == 3 {
                    "inflated from the 3-channel kernel, divided by the frame count".to_string()
                } else {
                    format!("as stored: {channels_before} channels")
                }
            ));
        }
        if backbone.patch_size() != cfg.backbone.patch_size {
            report.warnings.push(format!(
                "model.backbone.patch_size is {} but the backbone uses {}; the backbone's value is used",
                cfg.backbone.patch_size,
                backbone.patch_size()
            ));
        }
        let decoder_cfg = decoder_config(cfg, backbone.hidden_size())?;
        let decoder = decoder_cfg.init(device)?;
        let head = HeatmapHeadConfig::new(*decoder_cfg.channels.last().unwrap_or(&1)).init(device);
        let mut model = Self {
            backbone,
            decoder,
            head,
            code_books: loaded.code_books,
        };

        // The backbone trains only when not frozen and not adapted (LoRA trains adapters instead).
        let backbone_trains = !cfg.backbone.freeze && !cfg.lora.enabled;
        model = model.set_backbone_base_trainable(backbone_trains);

        if cfg.quantization.enabled {
            let (m, plan) = model.quantize_backbone(
                &quant_spec(cfg),
                &cfg.quantization.skip_modules,
                device,
            )?;
            model = m;
            report.warnings.extend(plan.warnings());
            report.quant_plan = Some(plan);
        }
        if cfg.lora.enabled {
            let settings = lora_settings(cfg);
            let (m, targets) = model.add_lora(&settings, device)?;
            model = m;
            report.lora_targets = targets;
            if let Some(dir) = &cfg.lora.adapter_path {
                model = model.load_peft_weights(dir, device)?;
            }
        }
        Ok((model.map(&mut Materialize), report))
    }
}

fn load_backbone<B: crate::ModelBackend>(
    cfg: &ModelConfig,
    device: &B::Device,
) -> Result<(LoadedSnapshot<B>, String), ModelError> {
    let described = |loaded: &LoadedSnapshot<B>, what: String| match &loaded.bnb {
        Some(q) => format!(
            "{what} (bitsandbytes 4-bit {}{}: {} layers read as stored)",
            q.quant_type,
            if q.double_quant { ", double quant" } else { "" },
            quantized_paths(&loaded.backbone).len()
        ),
        None => what,
    };
    if let Some(dir) = snapshot_dir(cfg)? {
        let loaded = Backbone::load_snapshot(&dir, device)?;
        let what = match (&cfg.backbone.weights, &cfg.pretrained_model_name) {
            (None, Some(name)) => format!("{name} ({})", dir.display()),
            _ => format!("snapshot {}", dir.display()),
        };
        let source = described(&loaded, what);
        return Ok((loaded, source));
    }
    let arch = arch_from_config(cfg)?;
    Ok((
        LoadedSnapshot {
            backbone: Backbone::random(&arch, device)?,
            bnb: None,
            code_books: None,
        },
        "random init (model.backbone architecture fields)".into(),
    ))
}

/// `cfg` with `model.lora` taken from the adapter at `model.lora.adapter_path` (rank, alpha,
/// rsLoRA, dropout, targets, bias, `modules_to_save`: the adapter's weights only fit its own
/// settings), and one note per value that differs from what the config said. Unchanged when no
/// adapter is given. An adapter using PEFT features that change the math is refused by key.
pub fn with_adapter_config(cfg: &ModelConfig) -> Result<(ModelConfig, Vec<String>), ModelError> {
    let mut out = cfg.clone();
    let Some(dir) = &cfg.lora.adapter_path else {
        return Ok((out, Vec::new()));
    };
    let s = tracknet_lora::peft::read_adapter_config(dir)?.to_settings(dir)?;
    let l = &mut out.lora;
    let mut notes = Vec::new();
    let mut note = |key: &str, was: String, now: String| {
        if was != now {
            notes.push(format!(
                "model.lora.{key}: {now} from the adapter {} (the config said {was})",
                dir.display()
            ));
        }
    };
    note("r", l.r.to_string(), s.r.to_string());
    note("lora_alpha", l.lora_alpha.to_string(), s.alpha.to_string());
    note(
        "lora_dropout",
        l.lora_dropout.to_string(),
        s.dropout.to_string(),
    );
    note(
        "use_rslora",
        l.use_rslora.to_string(),
        s.use_rslora.to_string(),
    );
    let targets = match &s.targets {
        TargetSpec::List(v) => TargetModules::List(v.clone()),
        TargetSpec::Regex(r) => TargetModules::Regex(r.clone()),
        TargetSpec::Auto => TargetModules::Auto,
    };
    note(
        "target_modules",
        format!("{:?}", l.target_modules),
        format!("{targets:?}"),
    );
    let bias = match s.bias {
        BiasMode::None => LoraBias::None,
        BiasMode::All => LoraBias::All,
        BiasMode::LoraOnly => LoraBias::LoraOnly,
    };
    note("bias", l.bias.as_str().into(), bias.as_str().into());
    note(
        "modules_to_save",
        format!("{:?}", l.modules_to_save),
        format!("{:?}", s.modules_to_save),
    );
    l.r = s.r;
    l.lora_alpha = s.alpha;
    l.lora_dropout = s.dropout;
    l.use_rslora = s.use_rslora;
    l.target_modules = targets;
    l.bias = bias;
    l.modules_to_save = s.modules_to_save;
    if s.task_type.is_some() {
        l.task_type = s.task_type;
    }
    Ok((out, notes))
}

/// The snapshot folder the backbone is read from: `model.backbone.weights`, else (with
/// `pretrained`) `pretrained_model_name` from the local hub cache; `None` for a random init.
pub fn snapshot_dir(cfg: &ModelConfig) -> Result<Option<PathBuf>, ModelError> {
    if let Some(dir) = &cfg.backbone.weights {
        return Ok(Some(hf::resolve_snapshot(&dir.to_string_lossy(), true)?));
    }
    if cfg.backbone.pretrained
        && let Some(name) = &cfg.pretrained_model_name
    {
        return Ok(Some(hf::resolve_snapshot(
            name,
            cfg.backbone.local_files_only,
        )?));
    }
    Ok(None)
}

/// The transformers `config.json` of the backbone: the snapshot's own (every key it had), else
/// the one `model.backbone` describes ([`arch_json`]).
pub fn backbone_hf_config(cfg: &ModelConfig) -> Result<serde_json::Value, ModelError> {
    let Some(dir) = snapshot_dir(cfg)? else {
        return Ok(arch_json(cfg));
    };
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| VitError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(serde_json::from_str(&text).map_err(|e| VitError::Json {
        path,
        message: e.to_string(),
    })?)
}

/// Paths of the projections whose base is 4-bit.
fn quantized_paths<B: crate::ModelBackend>(backbone: &Backbone<B>) -> Vec<(String, QuantSpec)> {
    let mut out = Vec::new();
    let _ = backbone.clone().map_projections(&mut |path: &str,
                                                   p: LoraLinear<B>|
     -> Result<_, ()> {
        if let tracknet_lora::BaseLinear::Quant(q) = &p.base {
            out.push((path.to_string(), q.spec));
        }
        Ok(p)
    });
    out
}

/// A snapshot stored in 4 bits fixes the format of its layers: the `model.quantization`
/// section must say the same (enabled, code book, block size, double quantization) and must
/// not ask to keep one of them in full precision. An error names the key that disagrees.
fn check_stored_quantization<B: crate::ModelBackend>(
    cfg: &ModelConfig,
    loaded: &LoadedSnapshot<B>,
) -> Result<(), ModelError> {
    let stored = quantized_paths(&loaded.backbone);
    let Some((_, spec)) = stored.first() else {
        return Ok(());
    };
    let q = &cfg.quantization;
    let err = |key: &str, message: String| ModelError::StoredQuantization {
        key: format!("model.quantization.{key}"),
        message,
    };
    let fmt = format!(
        "the backbone snapshot stores {} layers in 4 bits ({}, blocksize {}, double quant {})",
        stored.len(),
        spec.quant_type,
        spec.blocksize,
        spec.double_quant
    );
    if !q.enabled {
        return Err(err(
            "enabled",
            format!("{fmt}; set enabled: true (the codes are used as stored, LoRA trains on them)"),
        ));
    }
    let want_type = quant_spec(cfg).quant_type;
    for (path, s) in &stored {
        if s.quant_type != want_type {
            return Err(err(
                "quant_type",
                format!(
                    "{fmt}; `{path}` is {}, the config says {want_type}",
                    s.quant_type
                ),
            ));
        }
        if s.blocksize != q.blocksize {
            return Err(err(
                "blocksize",
                format!(
                    "{fmt}; `{path}` uses {}, the config says {}",
                    s.blocksize, q.blocksize
                ),
            ));
        }
        if s.double_quant != q.double_quant() {
            return Err(err(
                "use_double_quant",
                format!(
                    "{fmt}; `{path}` has double quant {}, the config says {}",
                    s.double_quant,
                    q.double_quant()
                ),
            ));
        }
        if let Some(name) = q
            .skip_modules
            .iter()
            .find(|n| tracknet_quant::segment_match(path, n))
        {
            return Err(err(
                "skip_modules",
                format!(
                    "`{name}` names `{path}`, which the snapshot stores in 4 bits (its full-precision weights are not in the snapshot)"
                ),
            ));
        }
    }
    Ok(())
}

/// The architecture the config describes, for a randomly initialised backbone.
pub fn arch_from_config(cfg: &ModelConfig) -> Result<BackboneArch, ModelError> {
    let json = arch_json(cfg);
    Ok(BackboneArch::from_config_str(
        &json.to_string(),
        Path::new("model.backbone"),
    )?)
}

/// The transformers `config.json` of the architecture `model.backbone` describes.
pub fn arch_json(cfg: &ModelConfig) -> serde_json::Value {
    let b = &cfg.backbone;
    match b.family {
        BackboneFamily::Dinov3 => serde_json::json!({
            "model_type": "dinov3_vit",
            "hidden_size": b.hidden_size,
            "num_hidden_layers": b.num_hidden_layers,
            "num_attention_heads": b.num_attention_heads,
            "intermediate_size": b.intermediate_size,
            "num_register_tokens": b.num_register_tokens,
            "use_gated_mlp": b.use_gated_mlp,
            "layerscale_value": b.layerscale_value,
            "rope_theta": b.rope_theta,
            "layer_norm_eps": b.layer_norm_eps,
            "patch_size": b.patch_size,
        }),
        BackboneFamily::Dinov2 => serde_json::json!({
            "model_type": if b.num_register_tokens > 0 { "dinov2_with_registers" } else { "dinov2" },
            "hidden_size": b.hidden_size,
            "num_hidden_layers": b.num_hidden_layers,
            "num_attention_heads": b.num_attention_heads,
            "mlp_ratio": b.intermediate_size / b.hidden_size.max(1),
            "num_register_tokens": b.num_register_tokens,
            "use_swiglu_ffn": b.use_gated_mlp,
            "layerscale_value": b.layerscale_value,
            "layer_norm_eps": b.layer_norm_eps,
            "patch_size": b.patch_size,
            "image_size": 16 * b.patch_size,
        }),
        BackboneFamily::Vit => serde_json::json!({
            "model_type": "vit",
            "hidden_size": b.hidden_size,
            "num_hidden_layers": b.num_hidden_layers,
            "num_attention_heads": b.num_attention_heads,
            "intermediate_size": b.intermediate_size,
            "layer_norm_eps": b.layer_norm_eps,
            "patch_size": b.patch_size,
            "image_size": 224,
        }),
    }
}

/// The decoder's config from `model.decoder` + `model.heatmap`; the first channel count must
/// equal the backbone's hidden size.
pub fn decoder_config(
    cfg: &ModelConfig,
    hidden: usize,
) -> Result<HeatmapDecoderConfig, ModelError> {
    let d = &cfg.decoder;
    if d.channels.first() != Some(&hidden) {
        return Err(ModelError::DecoderWidth {
            hidden,
            first: d.channels.first().copied(),
        });
    }
    Ok(
        HeatmapDecoderConfig::new(d.channels.clone(), d.upsample.clone(), cfg.heatmap.size)
            .with_blocks_per_stage(d.blocks_per_stage)
            .with_norm(match d.norm {
                DecoderNorm::Gn => DecoderNormKind::Group,
                DecoderNorm::Bn => DecoderNormKind::Batch,
            })
            .with_activation(match d.activation {
                Activation::Gelu => DecoderActivation::Gelu,
                Activation::Relu => DecoderActivation::Relu,
            })
            .with_use_depthwise(d.use_depthwise)
            .with_use_se(d.use_se)
            .with_se_reduction(d.se_reduction)
            .with_dropout(d.dropout),
    )
}

/// `model.quantization` as a layer spec.
pub fn quant_spec(cfg: &ModelConfig) -> QuantSpec {
    let q = &cfg.quantization;
    QuantSpec {
        quant_type: match q.quant_type {
            QuantKind::Nf4 => QuantType::Nf4,
            QuantKind::Fp4 => QuantType::Fp4,
        },
        blocksize: q.blocksize,
        double_quant: q.double_quant(),
        compute: match q.compute_dtype {
            CfgDtype::Bfloat16 => ComputeDtype::BF16,
            CfgDtype::Float16 => ComputeDtype::F16,
            CfgDtype::Float32 => ComputeDtype::F32,
        },
    }
}

/// `model.lora` as LoRA settings.
pub fn lora_settings(cfg: &ModelConfig) -> LoraSettings {
    let l = &cfg.lora;
    LoraSettings {
        r: l.r,
        alpha: l.lora_alpha,
        dropout: l.lora_dropout,
        use_rslora: l.use_rslora,
        bias: match l.bias {
            LoraBias::None => BiasMode::None,
            LoraBias::All => BiasMode::All,
            LoraBias::LoraOnly => BiasMode::LoraOnly,
        },
        targets: match &l.target_modules {
            TargetModules::List(v) => TargetSpec::List(v.clone()),
            TargetModules::Regex(r) => TargetSpec::Regex(r.clone()),
            TargetModules::Auto => TargetSpec::Auto,
        },
        modules_to_save: l.modules_to_save.clone(),
        init: if l.init_lora_weights {
            LoraInit::PeftDefault
        } else {
            LoraInit::RandomB
        },
        task_type: l.task_type.clone(),
    }
}
