//! Checkpoint and PEFT module names: each family's older spellings mapped to the names
//! transformers 5 uses in memory (ours), and back.

use tracknet_quant::bnb::StoredTensor;

use crate::arch::{BackboneArch, Family};

/// What a checkpoint key means for this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMapping {
    /// The canonical (transformers 5) name of the tensor.
    Canonical(String),
    /// A fused tensor that is two of ours: its first half along the first axis is the first
    /// name, the second half the second (DINOv2's SwiGLU `mlp.weights_in` →
    /// `mlp.gate_proj`, `mlp.up_proj`, as transformers 5 splits it on load).
    Split(String, String),
    /// A tensor known to be unused by the backbone and skipped: `embeddings.mask_token`
    /// (masked-image pre-training only), the ViT `pooler.*` and the non-persistent RoPE
    /// `inv_freq` buffer, if a checkpoint carries it.
    Ignored,
}

/// Map a checkpoint key to its canonical name. Accepted:
/// - DINOv3: transformers 5 (`model.layer.N.…`) and published checkpoints (`layer.N.…`, an
///   optional `dinov3_vit.` prefix).
/// - ViT: transformers 5 (`layers.N.attention.q_proj`, `layers.N.mlp.fc1`) and the older
///   names (optional `vit.` prefix, `encoder.layer.N.attention.attention.query|key|value`,
///   `…attention.output.dense`, `…intermediate.dense`, `…output.dense`).
/// - DINOv2 (with or without registers): transformers 5 (`encoder.layer.N.attention.q_proj`,
///   `…mlp.fc1` or `…mlp.gate_proj|up_proj|down_proj`) and the hub's names (optional `dinov2.`
///   prefix, `…attention.attention.query|key|value`, `…attention.output.dense`, the SwiGLU's
///   fused `…mlp.weights_in` and `…mlp.weights_out`).
pub fn canonical_key(arch: &BackboneArch, key: &str) -> KeyMapping {
    family_key(arch.family(), key)
}

/// [`canonical_key`] by family: the mapping depends on nothing else.
pub fn family_key(family: Family, key: &str) -> KeyMapping {
    const VIT: [(&str, &str); 6] = [
        ("attention.attention.query.", "attention.q_proj."),
        ("attention.attention.key.", "attention.k_proj."),
        ("attention.attention.value.", "attention.v_proj."),
        ("attention.output.dense.", "attention.o_proj."),
        ("intermediate.dense.", "mlp.fc1."),
        ("output.dense.", "mlp.fc2."),
    ];
    const DINOV2: [(&str, &str); 5] = [
        ("attention.attention.query.", "attention.q_proj."),
        ("attention.attention.key.", "attention.k_proj."),
        ("attention.attention.value.", "attention.v_proj."),
        ("attention.output.dense.", "attention.o_proj."),
        ("mlp.weights_out.", "mlp.down_proj."),
    ];
    match family {
        Family::Dinov3 => {
            let key = key.strip_prefix("dinov3_vit.").unwrap_or(key);
            if key == "embeddings.mask_token" || key.ends_with("inv_freq") {
                KeyMapping::Ignored
            } else if key.starts_with("layer.") {
                KeyMapping::Canonical(format!("model.{key}"))
            } else {
                KeyMapping::Canonical(key.to_string())
            }
        }
        Family::Vit => {
            let key = key.strip_prefix("vit.").unwrap_or(key);
            if key == "embeddings.mask_token" || key.starts_with("pooler.") {
                return KeyMapping::Ignored;
            }
            match key
                .strip_prefix("encoder.layer.")
                .and_then(|r| r.split_once('.'))
            {
                Some((index, tail)) => {
                    KeyMapping::Canonical(format!("layers.{index}.{}", renamed(tail, &VIT)))
                }
                None => KeyMapping::Canonical(key.to_string()),
            }
        }
        Family::Dinov2 => {
            let key = ["dinov2.", "dinov2_with_registers."]
                .iter()
                .find_map(|p| key.strip_prefix(p))
                .unwrap_or(key);
            if key == "embeddings.mask_token" {
                return KeyMapping::Ignored;
            }
            let Some((index, tail)) = key
                .strip_prefix("encoder.layer.")
                .and_then(|r| r.split_once('.'))
            else {
                return KeyMapping::Canonical(key.to_string());
            };
            let layer = format!("encoder.layer.{index}");
            match tail.strip_prefix("mlp.weights_in.") {
                Some(t) => KeyMapping::Split(
                    format!("{layer}.mlp.gate_proj.{t}"),
                    format!("{layer}.mlp.up_proj.{t}"),
                ),
                None => KeyMapping::Canonical(format!("{layer}.{}", renamed(tail, &DINOV2))),
            }
        }
    }
}

/// `tail` with the first matching old prefix replaced by its new one.
fn renamed(tail: &str, renames: &[(&str, &str)]) -> String {
    renames
        .iter()
        .find_map(|(old, new)| tail.strip_prefix(old).map(|t| format!("{new}{t}")))
        .unwrap_or_else(|| tail.to_string())
}

/// A stored tensor cut in two equal halves along its first axis (`None` when it has no even
/// first axis).
pub fn split_rows(t: &StoredTensor) -> Option<(StoredTensor, StoredTensor)> {
    let rows = *t.shape.first()?;
    if rows == 0 || !rows.is_multiple_of(2) || !t.data.len().is_multiple_of(2) {
        return None;
    }
    let mut shape = t.shape.clone();
    shape[0] = rows / 2;
    let (a, b) = t.data.split_at(t.data.len() / 2);
    let half = |data: &[u8]| StoredTensor {
        dtype: t.dtype,
        shape: shape.clone(),
        data: data.to_vec(),
    };
    Some((half(a), half(b)))
}

/// The hub's (transformers 4's) module path of one of our projection paths, where the two
/// differ: DINOv2's `encoder.layer.N.attention.q_proj` is `…attention.attention.query`, its
/// SwiGLU `mlp.gate_proj` and `mlp.up_proj` are both `mlp.weights_in`; ViT's `layers.N.mlp.fc1`
/// is `encoder.layer.N.intermediate.dense`. `None` where the names agree (and for DINOv3,
/// which has only transformers-5 names).
pub fn hub_module_path(family: Family, path: &str) -> Option<String> {
    const ATTENTION: [(&str, &str); 4] = [
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
    ];
    let (index, tail, renames): (&str, &str, &[(&str, &str)]) = match family {
        Family::Dinov3 => return None,
        Family::Vit => {
            let (index, tail) = path.strip_prefix("layers.")?.split_once('.')?;
            const MLP: [(&str, &str); 2] = [
                ("mlp.fc1", "intermediate.dense"),
                ("mlp.fc2", "output.dense"),
            ];
            let renames = if tail.starts_with("mlp.") {
                &MLP[..]
            } else {
                &ATTENTION[..]
            };
            (index, tail, renames)
        }
        Family::Dinov2 => {
            let (index, tail) = path.strip_prefix("encoder.layer.")?.split_once('.')?;
            const MLP: [(&str, &str); 3] = [
                ("mlp.gate_proj", "mlp.weights_in"),
                ("mlp.up_proj", "mlp.weights_in"),
                ("mlp.down_proj", "mlp.weights_out"),
            ];
            let renames = if tail.starts_with("mlp.") {
                &MLP[..]
            } else {
                &ATTENTION[..]
            };
            (index, tail, renames)
        }
    };
    let (_, hub) = renames.iter().find(|(ours, _)| *ours == tail)?;
    Some(format!("encoder.layer.{index}.{hub}"))
}

/// `target_modules` as written in our names: each list entry that names a projection only by
/// its hub spelling (`query`, `attention.output.dense`, `weights_in`) becomes the names of the
/// `adapted` paths it selects (`q_proj`, `attention.o_proj`, `gate_proj` + `up_proj`), so that
/// PEFT on transformers 5 finds them; other entries, regexes and auto are kept.
pub fn target_names_in_our_spelling(
    family: Family,
    names: &[String],
    adapted: &[String],
) -> Vec<String> {
    use tracknet_lora::target::list_match;
    let mut out: Vec<String> = Vec::new();
    let mut push = |n: String| {
        if !out.contains(&n) {
            out.push(n);
        }
    };
    for name in names {
        if adapted.iter().any(|p| list_match(p, name)) {
            push(name.clone());
            continue;
        }
        let mut translated = false;
        for path in adapted {
            let Some(hub) = hub_module_path(family, path) else {
                continue;
            };
            if !list_match(&hub, name) {
                continue;
            }
            translated = true;
            // The part of the hub path before `name`; where ours shares it, the rest of ours.
            let prefix = &hub[..hub.len() - name.len()];
            let ours = path
                .strip_prefix(prefix)
                .unwrap_or_else(|| path.rsplit('.').next().unwrap_or(path));
            push(ours.to_string());
        }
        if !translated {
            push(name.clone());
        }
    }
    out
}

/// A PEFT module or parameter path in our names, for every spelling [`family_key`] reads:
/// one path, two for a fused SwiGLU `weights_in` (gate, up), none for an ignored tensor.
pub fn peft_paths_in_our_spelling(family: Family, path: &str) -> Vec<String> {
    // `family_key` maps parameter keys; a module path gets a stand-in leaf.
    const LEAF: &str = ".__module__";
    let strip = |k: String| k.strip_suffix(LEAF).map(str::to_string).unwrap_or(k);
    match family_key(family, &format!("{path}{LEAF}")) {
        KeyMapping::Canonical(c) => vec![strip(c)],
        KeyMapping::Split(a, b) => vec![strip(a), strip(b)],
        KeyMapping::Ignored => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dinov3::Dinov3Config;
    use crate::vit::VitConfig;

    fn canon(arch: &BackboneArch, key: &str) -> KeyMapping {
        canonical_key(arch, key)
    }

    #[test]
    fn dinov3_keys_map_to_transformers5_names() {
        let arch = BackboneArch::Dinov3(Dinov3Config::default());
        let c = |s: &str| KeyMapping::Canonical(s.to_string());
        assert_eq!(
            canon(&arch, "layer.3.mlp.up_proj.weight"),
            c("model.layer.3.mlp.up_proj.weight")
        );
        assert_eq!(
            canon(&arch, "model.layer.3.norm1.bias"),
            c("model.layer.3.norm1.bias")
        );
        assert_eq!(
            canon(&arch, "embeddings.cls_token"),
            c("embeddings.cls_token")
        );
        assert_eq!(canon(&arch, "norm.weight"), c("norm.weight"));
        assert_eq!(canon(&arch, "embeddings.mask_token"), KeyMapping::Ignored);
    }

    #[test]
    fn vit_old_keys_map_to_transformers5_names() {
        let arch = BackboneArch::Vit(VitConfig::default());
        let c = |s: &str| KeyMapping::Canonical(s.to_string());
        let cases = [
            (
                "vit.encoder.layer.11.attention.attention.query.weight",
                "layers.11.attention.q_proj.weight",
            ),
            (
                "encoder.layer.0.attention.attention.key.bias",
                "layers.0.attention.k_proj.bias",
            ),
            (
                "encoder.layer.0.attention.attention.value.weight",
                "layers.0.attention.v_proj.weight",
            ),
            (
                "encoder.layer.0.attention.output.dense.weight",
                "layers.0.attention.o_proj.weight",
            ),
            (
                "encoder.layer.0.intermediate.dense.bias",
                "layers.0.mlp.fc1.bias",
            ),
            (
                "encoder.layer.0.output.dense.weight",
                "layers.0.mlp.fc2.weight",
            ),
            (
                "encoder.layer.2.layernorm_before.weight",
                "layers.2.layernorm_before.weight",
            ),
            ("vit.layernorm.bias", "layernorm.bias"),
            (
                "vit.embeddings.patch_embeddings.projection.weight",
                "embeddings.patch_embeddings.projection.weight",
            ),
            ("layers.1.mlp.fc2.bias", "layers.1.mlp.fc2.bias"),
        ];
        for (old, new) in cases {
            assert_eq!(canon(&arch, old), c(new), "{old}");
        }
        assert_eq!(canon(&arch, "vit.pooler.dense.weight"), KeyMapping::Ignored);
        assert_eq!(canon(&arch, "embeddings.mask_token"), KeyMapping::Ignored);
    }

    #[test]
    fn dinov2_hub_keys_map_to_transformers5_names_and_the_fused_swiglu_splits() {
        let c = |s: &str| KeyMapping::Canonical(s.to_string());
        let key = |k: &str| family_key(Family::Dinov2, k);
        assert_eq!(
            key("dinov2.encoder.layer.3.attention.attention.query.weight"),
            c("encoder.layer.3.attention.q_proj.weight")
        );
        assert_eq!(
            key("encoder.layer.0.attention.output.dense.bias"),
            c("encoder.layer.0.attention.o_proj.bias")
        );
        assert_eq!(
            key("encoder.layer.1.mlp.weights_out.weight"),
            c("encoder.layer.1.mlp.down_proj.weight")
        );
        assert_eq!(
            key("encoder.layer.1.mlp.weights_in.bias"),
            KeyMapping::Split(
                "encoder.layer.1.mlp.gate_proj.bias".into(),
                "encoder.layer.1.mlp.up_proj.bias".into()
            )
        );
        // transformers 5's own names are kept; the mask token is skipped.
        assert_eq!(
            key("encoder.layer.0.attention.q_proj.weight"),
            c("encoder.layer.0.attention.q_proj.weight")
        );
        assert_eq!(
            key("encoder.layer.0.mlp.fc1.weight"),
            c("encoder.layer.0.mlp.fc1.weight")
        );
        assert_eq!(key("embeddings.mask_token"), KeyMapping::Ignored);
    }

    #[test]
    fn hub_paths_invert_the_mapping_and_hub_targets_are_written_in_our_names() {
        for (family, ours) in [
            (Family::Dinov2, "encoder.layer.2.attention.q_proj"),
            (Family::Dinov2, "encoder.layer.2.attention.o_proj"),
            (Family::Dinov2, "encoder.layer.2.mlp.down_proj"),
            (Family::Vit, "layers.2.attention.k_proj"),
            (Family::Vit, "layers.2.mlp.fc1"),
        ] {
            let hub = hub_module_path(family, ours).unwrap();
            assert_eq!(peft_paths_in_our_spelling(family, &hub), [ours], "{hub}");
        }
        assert_eq!(
            hub_module_path(Family::Dinov2, "encoder.layer.0.mlp.up_proj").as_deref(),
            Some("encoder.layer.0.mlp.weights_in")
        );
        assert_eq!(
            hub_module_path(Family::Dinov2, "encoder.layer.0.mlp.fc1"),
            None
        );
        assert_eq!(
            hub_module_path(Family::Dinov3, "model.layer.0.attention.q_proj"),
            None
        );
        let adapted: Vec<String> = ["q_proj", "o_proj"]
            .iter()
            .map(|n| format!("encoder.layer.0.attention.{n}"))
            .chain([
                "encoder.layer.0.mlp.gate_proj".into(),
                "encoder.layer.0.mlp.up_proj".into(),
            ])
            .collect();
        let names: Vec<String> = [
            "query",
            "attention.output.dense",
            "weights_in",
            "q_proj",
            "nothing",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            target_names_in_our_spelling(Family::Dinov2, &names, &adapted),
            [
                "q_proj",
                "attention.o_proj",
                "gate_proj",
                "up_proj",
                "nothing"
            ]
        );
    }
}
