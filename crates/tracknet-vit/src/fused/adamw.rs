//! One AdamW update of a parameter (`torch.optim.AdamW`'s rule), for
//! [`FusedBackend::fused_adamw`](super::FusedBackend::fused_adamw).
//!
//! Composed from Burn's element-wise ops it is fourteen passes over the parameter, each
//! allocating a tensor; on NdArray those run on one core, and a full fine-tune of ViT-S spent
//! ≈ 0.4 s a step in them with the other core idle. The host kernel is one parallel pass that
//! does the same f32 operations in the same order, so its result is the composed one to the bit
//! (test below).

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;

/// The constants of one update, rounded to f32 as Burn's scalar ops round them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// `1 − β₁ᵗ`, `1 − β₂ᵗ` for the parameter's own step count `t`.
    bias1: f32,
    bias2: f32,
    eps: f32,
    /// `1 − lr · weight_decay` (decoupled decay).
    decay: f32,
    lr: f32,
}

impl AdamWStep {
    /// The update at learning rate `lr` for a parameter's `t`-th step (from 1).
    pub fn new(betas: (f64, f64), eps: f64, weight_decay: f64, lr: f64, t: i32) -> Self {
        let (b1, b2) = betas;
        Self {
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            bias1: (1.0 - b1.powi(t)) as f32,
            bias2: (1.0 - b2.powi(t)) as f32,
            eps: eps as f32,
            decay: (1.0 - lr * weight_decay) as f32,
            lr: lr as f32,
        }
    }

    /// One element: `(p, m, v)` after the update, each operation rounded as the composed
    /// ops round it.
    #[inline(always)]
    fn element(&self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let m = m * self.beta1 + g * self.one_minus_beta1;
        let v = v * self.beta2 + g * g * self.one_minus_beta2;
        let update = (m / self.bias1) / ((v / self.bias2).sqrt() + self.eps);
        (p * self.decay - update * self.lr, m, v)
    }
}

/// The update from Burn's ops, any backend: `[p, m, v]` after it, all `[n]`.
pub fn composed<B: Backend>(
    p: FloatTensor<B>,
    g: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    h: AdamWStep,
) -> [FloatTensor<B>; 3] {
    let [p, g, m, v] = [p, g, m, v].map(super::wrap::<B, 1>);
    let m = m.mul_scalar(h.beta1) + g.clone().mul_scalar(h.one_minus_beta1);
    let v = v.mul_scalar(h.beta2) + g.powi_scalar(2).mul_scalar(h.one_minus_beta2);
    let update = m
        .clone()
        .div_scalar(h.bias1)
        .div(v.clone().div_scalar(h.bias2).sqrt().add_scalar(h.eps));
    let p = p.mul_scalar(h.decay) - update.mul_scalar(h.lr);
    [p, m, v].map(super::prim)
}

/// The update on host slices of one length, in parallel chunks: `(p, m, v)` after it.
pub fn host(p: &[f32], g: &[f32], m: &[f32], v: &[f32], h: AdamWStep) -> [Vec<f32>; 3] {
    use rayon::prelude::*;
    /// Elements per task: big enough that scheduling is noise, small enough to spread.
    const CHUNK: usize = 1 << 14;
    let n = p.len();
    assert!(g.len() == n && m.len() == n && v.len() == n);
    let (mut np, mut nm, mut nv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    np.par_chunks_mut(CHUNK)
        .zip(nm.par_chunks_mut(CHUNK))
        .zip(nv.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, ((np, nm), nv))| {
            let r = c * CHUNK..c * CHUNK + np.len();
            let inputs = p[r.clone()].iter().zip(&g[r.clone()]).zip(&m[r.clone()]);
            for ((((&p, &g), &m), &v), (np, (nm, nv))) in inputs
                .zip(&v[r])
                .zip(np.iter_mut().zip(nm.iter_mut().zip(nv.iter_mut())))
            {
                (*np, *nm, *nv) = h.element(p, g, m, v);
            }
        });
    [np, nm, nv]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::FusedBackend;
    use burn::backend::NdArray;

    /// The NdArray kernel gives the composed ops' bits: first step (zero moments) and a later
    /// one, with decay, on a length that is not a multiple of the chunk.
    #[test]
    fn the_host_kernel_is_the_composed_update_to_the_bit() {
        let device = Default::default();
        let n = (1 << 14) * 3 + 77;
        let data = |seed: u64, scale: f32| -> Vec<f32> {
            let mut s = seed;
            (0..n)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
                })
                .collect()
        };
        let t = |d: Vec<f32>| Tensor::<NdArray, 1>::from_floats(d.as_slice(), &device);
        let bits = |x: FloatTensor<NdArray>| -> Vec<u32> {
            super::super::wrap::<NdArray, 1>(x)
                .into_data()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        let (p, g) = (data(1, 2.0), data(2, 0.1));
        let later = (
            data(3, 0.01),
            data(4, 1e-4).iter().map(|v| v.abs()).collect(),
        );
        for (t_step, (m, v)) in [(1, (vec![0.0; n], vec![0.0; n])), (7, later)] {
            let h = AdamWStep::new((0.9, 0.999), 1e-8, 0.01, 3e-4, t_step);
            let args = || [&p, &g, &m, &v].map(|x| t(x.clone()).into_primitive().tensor());
            let [p1, g1, m1, v1] = args();
            let fused = NdArray::fused_adamw(p1, g1, m1, v1, h);
            let [p2, g2, m2, v2] = args();
            let reference = composed::<NdArray>(p2, g2, m2, v2, h);
            for (what, (a, b)) in ["p", "m", "v"].iter().zip(fused.into_iter().zip(reference)) {
                let (a, b) = (bits(a), bits(b));
                let first = a.iter().zip(&b).position(|(x, y)| x != y);
                assert_eq!(first, None, "{what} at step {t_step}: first difference");
            }
        }
    }
}
