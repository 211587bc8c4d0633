//! The floating-point work of a bench case, counted from its sizes: the matrix products and
//! convolutions (2 FLOPs a multiply-add), which is what a GEMM rate bounds. Element-wise ops,
//! norms, softmax and resizes are left out (they add time, not GEMM work), so a mode's
//! roofline — these FLOPs ÷ the best GEMM rate — is a floor no implementation can go under.

use super::config::Sizes;

/// One frame's forward pass and one training step (the whole batch), in FLOPs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flops {
    /// Forward pass of one frame (LoRA's factors included where the mode has them).
    pub forward_per_frame: f64,
    /// Forward, backward (input and trained weights' gradients) and, with recomputation, the
    /// second forward, for the batch.
    pub step: f64,
}

/// Parts of a frame's forward pass, FLOPs.
struct Parts {
    /// The transformer blocks' linears (q, k, v, o, MLP up and down).
    linears: f64,
    /// The attention products (QKᵀ and the weighted sum of V).
    attention: f64,
    /// The patch embedding (its input, the image, takes no gradient).
    patch: f64,
    /// Decoder convolutions and the 1×1 head (always trained).
    decoder: f64,
    /// LoRA's factors on every adapted linear.
    lora: f64,
}

fn parts(s: &Sizes, lora: bool, blocks_per_stage: usize) -> Parts {
    let (gh, gw) = (s.height / s.patch.max(1), s.width / s.patch.max(1));
    let grid = (gh * gw) as f64;
    let tokens = 1.0 + s.registers as f64 + grid;
    let (d, m, layers) = (s.hidden as f64, s.mlp as f64, s.layers as f64);
    let linears = layers * 2.0 * tokens * (4.0 * d * d + 2.0 * d * m);
    let attention = layers * 2.0 * 2.0 * tokens * tokens * d;
    let patch = 2.0 * grid * (3 * s.patch * s.patch) as f64 * d;
    // Stage i: ×2 upsampling, a 1×1 projection where the width changes, then residual
    // blocks of a depthwise 3×3 and a 1×1 convolution; then the 1×1 head on the heatmap.
    let mut decoder = 0.0;
    let mut pixels = grid;
    for w in s.decoder.windows(2) {
        pixels *= 4.0;
        let (cin, cout) = (w[0] as f64, w[1] as f64);
        if w[0] != w[1] {
            decoder += 2.0 * pixels * cin * cout;
        }
        decoder += blocks_per_stage as f64 * 2.0 * pixels * (9.0 * cout + cout * cout);
    }
    let last = *s.decoder.last().unwrap_or(&1) as f64;
    decoder += 2.0 * (s.heatmap.0 * s.heatmap.1) as f64 * last;
    let r = s.rank as f64;
    let lora = if lora {
        layers * 2.0 * tokens * r * (4.0 * (d + d) + (d + m) + (m + d))
    } else {
        0.0
    };
    Parts {
        linears,
        attention,
        patch,
        decoder,
        lora,
    }
}

/// The case's FLOPs: `mode` `full` trains every weight; the others (LoRA, QLoRA) the adapters,
/// decoder and head, with input gradients through the whole frozen backbone all the same.
/// Backward: an input gradient costs its forward again; a trained weight's gradient too; the
/// attention products, both of whose operands are activations, twice.
pub fn count(s: &Sizes, mode: &str, recompute: bool, blocks_per_stage: usize) -> Flops {
    let full = mode == "full";
    let p = parts(s, !full, blocks_per_stage);
    let forward = p.linears + p.attention + p.patch + p.decoder + p.lora;
    let input_grads = p.linears + 2.0 * p.attention + p.decoder + p.lora;
    let weight_grads = if full {
        p.linears + p.patch + p.decoder
    } else {
        p.decoder + p.lora
    };
    let again = if recompute { forward } else { 0.0 };
    Flops {
        forward_per_frame: forward,
        step: s.batch as f64 * (forward + input_grads + weight_grads + again),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Sizes {
        Sizes {
            hidden: 384,
            layers: 12,
            heads: 6,
            mlp: 1536,
            registers: 4,
            patch: 16,
            width: 512,
            height: 288,
            heatmap: (256, 144),
            decoder: vec![384, 256, 128, 64],
            rank: 16,
            alpha: 32,
            batch: 2,
            steps: 1,
            warmup: 0,
            infer_runs: 1,
        }
    }

    /// The seed model (ViT-S/16 + decoder at 512×288): ≈ 31.2 GFLOP of backbone and ≈ 2.6 of
    /// decoder a frame, as counted by hand (docs/performance.md, "Roofline").
    #[test]
    fn the_seed_model_counts_as_by_hand() {
        let s = seed();
        let p = parts(&s, false, 1);
        let gf = |x: f64| x / 1e9;
        // 581 tokens: 12 × 2·581·(4·384² + 2·384·1536) and 12 × 4·581²·384.
        assert!((gf(p.linears) - 24.67).abs() < 0.01, "{}", gf(p.linears));
        assert!((gf(p.attention) - 6.22).abs() < 0.01, "{}", gf(p.attention));
        assert!((gf(p.patch) - 0.340).abs() < 0.001, "{}", gf(p.patch));
        assert!((gf(p.decoder) - 2.646).abs() < 0.001, "{}", gf(p.decoder));
        let full = count(&s, "full", false, 1);
        let lora = count(&s, "lora", false, 1);
        assert!((gf(full.forward_per_frame) - 33.881).abs() < 0.001);
        // LoRA trains no backbone weight: less than full's step, more than two forwards.
        assert!(lora.step < full.step && lora.step > 2.0 * 2.0 * lora.forward_per_frame);
        // Recomputation adds one forward of the batch.
        let ckpt = count(&s, "lora", true, 1);
        assert!((ckpt.step - lora.step - 2.0 * lora.forward_per_frame).abs() < 1.0);
    }
}
