//! Model-level quantization: which linear layers to quantize, why others are not, and what it
//! saves — measured from the tensors the layers really hold.

use std::fmt;

/// Does `name` match `path` as whole dotted segments?
///
/// The original project matched skip names as plain substrings (`mlp` skipped every MLP
/// projection); this keeps that meaning for whole segments only: `mlp`, `layer.0` and
/// `attention.q_proj` match `model.layer.0.attention.q_proj`, but `proj` does not match
/// `q_proj` and `layer.1` does not match `layer.10`.
pub fn segment_match(path: &str, name: &str) -> bool {
    let name = name.trim_matches('.');
    if name.is_empty() {
        return false;
    }
    let segs: Vec<&str> = path.split('.').collect();
    let want: Vec<&str> = name.split('.').collect();
    segs.windows(want.len()).any(|w| w == want.as_slice())
}

/// A linear layer offered for quantization.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearInfo {
    /// Module path (Hugging Face names), e.g. `model.layer.0.attention.q_proj`.
    pub path: String,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether every weight is finite (a NaN/inf weight cannot be blockwise-quantized).
    pub finite: bool,
}

/// Why a layer stays in full precision.
#[derive(Debug, Clone, PartialEq)]
pub enum KeepReason {
    /// Matched one of `skip_modules`.
    Skipped {
        /// The skip name that matched.
        by: String,
    },
    /// The caller excludes it (e.g. the heatmap head is never quantized).
    Excluded {
        /// What excluded it.
        by: String,
    },
    /// It cannot be quantized.
    Incompatible {
        /// Why.
        why: String,
    },
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Skipped { by } => write!(f, "skipped by skip_modules entry `{by}`"),
            Self::Excluded { by } => write!(f, "excluded: {by}"),
            Self::Incompatible { why } => write!(f, "cannot be quantized: {why}"),
        }
    }
}

/// The decision for every layer, and what each skip name matched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantPlan {
    /// Paths to quantize, in the order given.
    pub quantize: Vec<String>,
    /// Paths kept in full precision, with the reason.
    pub keep: Vec<(String, KeepReason)>,
    /// For each skip name, the paths it matched (empty: it matched nothing).
    pub skip_matches: Vec<(String, Vec<String>)>,
}

impl QuantPlan {
    /// Decide for each layer. `exclude` are (path prefix, reason) pairs set by the caller.
    pub fn new(
        layers: &[LinearInfo],
        skip_modules: &[String],
        exclude: &[(String, String)],
        blocksize: usize,
    ) -> Self {
        let mut plan = QuantPlan {
            skip_matches: skip_modules
                .iter()
                .map(|s| (s.clone(), Vec::new()))
                .collect(),
            ..Default::default()
        };
        for layer in layers {
            if let Some((_, why)) = exclude.iter().find(|(p, _)| segment_match(&layer.path, p)) {
                plan.keep
                    .push((layer.path.clone(), KeepReason::Excluded { by: why.clone() }));
                continue;
            }
            let mut skipped_by = None;
            for (name, hits) in plan.skip_matches.iter_mut() {
                if segment_match(&layer.path, name) {
                    hits.push(layer.path.clone());
                    skipped_by.get_or_insert_with(|| name.clone());
                }
            }
            if let Some(by) = skipped_by {
                plan.keep
                    .push((layer.path.clone(), KeepReason::Skipped { by }));
                continue;
            }
            if let Some(why) = incompatibility(layer, blocksize) {
                plan.keep
                    .push((layer.path.clone(), KeepReason::Incompatible { why }));
                continue;
            }
            plan.quantize.push(layer.path.clone());
        }
        plan
    }

    /// One warning per skip name that matched no layer (likely a typo).
    pub fn warnings(&self) -> Vec<String> {
        self.skip_matches
            .iter()
            .filter(|(_, hits)| hits.is_empty())
            .map(|(name, _)| {
                format!("quantization.skip_modules entry `{name}` matched no linear layer (names match whole dotted segments, e.g. `mlp`, `layer.0`, `attention.q_proj`)")
            })
            .collect()
    }

    /// Layers that cannot be quantized, with the reason.
    pub fn incompatible(&self) -> Vec<(&str, &str)> {
        self.keep
            .iter()
            .filter_map(|(p, r)| match r {
                KeepReason::Incompatible { why } => Some((p.as_str(), why.as_str())),
                _ => None,
            })
            .collect()
    }
}

fn incompatibility(layer: &LinearInfo, blocksize: usize) -> Option<String> {
    let numel = layer.in_features * layer.out_features;
    if numel == 0 {
        return Some("it has no weights".into());
    }
    if !layer.finite {
        return Some("its weight holds NaN or infinite values".into());
    }
    if numel < blocksize {
        return Some(format!(
            "{numel} weights is less than one {blocksize}-element block; 4-bit storage would be larger than f32"
        ));
    }
    None
}

/// Measured storage of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMemory {
    /// Module path.
    pub path: String,
    /// Weights (excluding bias).
    pub params: usize,
    /// Bytes the layer's weight tensors really occupy (codes + scales; f32 layers: 4/param).
    pub stored_bytes: usize,
    /// Whether the layer is 4-bit.
    pub quantized: bool,
}

impl LayerMemory {
    /// Bits per weight.
    pub fn bits_per_param(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.stored_bytes as f64 * 8.0 / self.params as f64
        }
    }
    /// The f32 bytes this storage replaces.
    pub fn f32_bytes(&self) -> usize {
        self.params * 4
    }
}

/// Per-layer and total storage report (the measured successor of the original's
/// `get_quantization_memory_info`, which only estimated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryReport {
    /// One row per linear layer considered.
    pub layers: Vec<LayerMemory>,
    /// Shared code books, counted once.
    pub shared_bytes: usize,
}

impl MemoryReport {
    /// Weights of all layers.
    pub fn total_params(&self) -> usize {
        self.layers.iter().map(|l| l.params).sum()
    }
    /// Weights in 4-bit layers.
    pub fn quantized_params(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| l.quantized)
            .map(|l| l.params)
            .sum()
    }
    /// Bytes of all layers plus the shared code books.
    pub fn total_stored_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.stored_bytes).sum::<usize>() + self.shared_bytes
    }
    /// Bytes the quantized layers occupy (with the shared code books).
    pub fn quantized_stored_bytes(&self) -> usize {
        self.layers
            .iter()
            .filter(|l| l.quantized)
            .map(|l| l.stored_bytes)
            .sum::<usize>()
            + self.shared_bytes
    }
    /// Bits per weight over the quantized layers (shared code books included).
    pub fn quantized_bits_per_param(&self) -> f64 {
        let p = self.quantized_params();
        if p == 0 {
            0.0
        } else {
            self.quantized_stored_bytes() as f64 * 8.0 / p as f64
        }
    }
    /// f32 bytes of all layers.
    pub fn total_f32_bytes(&self) -> usize {
        self.total_params() * 4
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<48} {:>10} {:>12} {:>9} {:>12}",
            "layer", "params", "stored B", "bits/p", "f32 B"
        )?;
        for l in &self.layers {
            writeln!(
                f,
                "{:<48} {:>10} {:>12} {:>9.3} {:>12}{}",
                l.path,
                l.params,
                l.stored_bytes,
                l.bits_per_param(),
                l.f32_bytes(),
                if l.quantized { "" } else { "  (f32)" }
            )?;
        }
        writeln!(f, "shared code books: {} B", self.shared_bytes)?;
        let q = self.quantized_params();
        write!(
            f,
            "total: {} params ({} quantized), {} B stored vs {} B in f32 ({:.1}%); quantized layers {:.3} bits/param",
            self.total_params(),
            q,
            self.total_stored_bytes(),
            self.total_f32_bytes(),
            100.0 * self.total_stored_bytes() as f64 / self.total_f32_bytes().max(1) as f64,
            self.quantized_bits_per_param()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_match_whole_names_only() {
        let p = "model.layer.0.attention.q_proj";
        assert!(segment_match(p, "attention"));
        assert!(segment_match(p, "layer.0"));
        assert!(segment_match(p, "attention.q_proj"));
        assert!(segment_match(p, "q_proj"));
        assert!(!segment_match(p, "proj"));
        assert!(!segment_match(p, "layer.1"));
        assert!(!segment_match("model.layer.10.mlp.up_proj", "layer.1"));
        assert!(segment_match("model.layer.10.mlp.up_proj", "mlp"));
        assert!(!segment_match(p, ""));
    }

    fn info(path: &str, i: usize, o: usize) -> LinearInfo {
        LinearInfo {
            path: path.into(),
            in_features: i,
            out_features: o,
            finite: true,
        }
    }

    #[test]
    fn plan_reports_skips_exclusions_and_unmatched_names() {
        let layers = vec![
            info("model.layer.0.attention.q_proj", 64, 64),
            info("model.layer.0.mlp.up_proj", 64, 128),
            info("model.layer.1.mlp.up_proj", 64, 128),
            info("head.conv", 4, 1),
            LinearInfo {
                finite: false,
                ..info("model.layer.1.attention.q_proj", 64, 64)
            },
        ];
        let skip = vec!["layer.0.mlp".to_string(), "proj".to_string()];
        let plan = QuantPlan::new(
            &layers,
            &skip,
            &[("head".into(), "the heatmap head is never quantized".into())],
            64,
        );
        assert_eq!(
            plan.quantize,
            vec![
                "model.layer.0.attention.q_proj",
                "model.layer.1.mlp.up_proj"
            ]
        );
        assert_eq!(plan.skip_matches[0].1, vec!["model.layer.0.mlp.up_proj"]);
        assert!(plan.skip_matches[1].1.is_empty());
        let w = plan.warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("`proj`"));
        assert!(matches!(
            plan.keep.iter().find(|(p, _)| p == "head.conv").unwrap().1,
            KeepReason::Excluded { .. }
        ));
        let inc = plan.incompatible();
        assert_eq!(inc.len(), 1);
        assert!(inc[0].1.contains("NaN"));
    }

    #[test]
    fn memory_report_arithmetic() {
        let r = MemoryReport {
            layers: vec![
                LayerMemory {
                    path: "a".into(),
                    params: 4096,
                    stored_bytes: 2048 + 256,
                    quantized: true,
                },
                LayerMemory {
                    path: "b".into(),
                    params: 100,
                    stored_bytes: 400,
                    quantized: false,
                },
            ],
            shared_bytes: 0,
        };
        assert_eq!(r.total_params(), 4196);
        assert!((r.quantized_bits_per_param() - 4.5).abs() < 1e-12);
        assert_eq!(r.total_f32_bytes(), 4196 * 4);
        assert!(r.to_string().contains("(f32)"));
    }
}
