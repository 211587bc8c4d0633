//! LoRA's update added to a base layer's output, `y + s · ((drop(x) · A) · B)`, as one op with
//! its own backward. On NdArray it is one autodiff node over host GEMMs that keeps only the
//! input (when `A` trains) and the small `t = drop(x) · A` `[rows, r]`: the dropout mask is
//! regenerated from its stream position in the backward instead of being stored, and the
//! dropped input is never kept. Composed from Burn's ops (the mask built from the same stream
//! values), the same op costs a full-size f32 mask and a full-size dropped copy of the input
//! per adapted layer, kept until the backward. Elsewhere `tracknet-lora` keeps Burn's ops.

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata, TensorPrimitive};

use crate::QuantBackend;
use crate::dense::DenseGrads;

/// Inverted dropout with its mask given by position in a SplitMix64 stream: element `i` is
/// kept when the stream's `i + 1`-th value after `state`, as a uniform in `[0, 1)` (top 53
/// bits), is below `keep`; kept elements are scaled by `1 / keep`. These are exactly the draws
/// of `tracknet_lora::rng::bernoulli` inside a stream at `state`, so the mask is the same as
/// the composed path's. [`with_bits`](Self::with_bits) draws it once into a bit set (1/32 of
/// an f32 mask) that the forward and the backward both read.
#[derive(Clone, Debug)]
pub struct DropMask {
    keep: f64,
    state: u64,
    /// `keep · 2⁵³` rounded up: `unit < keep` ⟺ `top53 < threshold` for the integer `top53`.
    threshold: u64,
    bits: Option<std::sync::Arc<[u64]>>,
}

/// SplitMix64's increment: the stream's state moves by this per draw.
pub const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function of a state (Steele, Lea and Flood 2014): the draw
/// `tracknet_lora::rng` streams and [`DropMask`] share.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DropMask {
    /// The mask keeping each element with probability `keep` (in `[0, 1]`), drawn from a stream
    /// at `state`.
    pub fn new(keep: f64, state: u64) -> Self {
        let keep = keep.clamp(0.0, 1.0);
        Self {
            keep,
            state,
            threshold: (keep * (1u64 << 53) as f64).ceil() as u64,
            bits: None,
        }
    }

    fn draw(&self, i: usize) -> bool {
        let z = mix(self
            .state
            .wrapping_add((i as u64).wrapping_add(1).wrapping_mul(GOLDEN)));
        (z >> 11) < self.threshold
    }

    /// Whether element `i` is kept.
    pub fn kept(&self, i: usize) -> bool {
        match &self.bits {
            Some(bits) => (bits[i / 64] >> (i % 64)) & 1 == 1,
            None => self.draw(i),
        }
    }

    /// The same mask with its first `n` draws made once, into a bit set (rayon tasks).
    pub fn with_bits(mut self, n: usize) -> Self {
        use rayon::prelude::*;
        if self.bits.as_ref().is_some_and(|b| b.len() * 64 >= n) {
            return self;
        }
        self.bits = None;
        let words: Vec<u64> = (0..n.div_ceil(64))
            .into_par_iter()
            .with_min_len(256)
            .map(|w| {
                (0..64.min(n - w * 64)).fold(0u64, |word, j| {
                    word | (u64::from(self.draw(w * 64 + j)) << j)
                })
            })
            .collect();
        self.bits = Some(words.into());
        self
    }

    /// The scale of kept elements as Burn's `mul_scalar(1 / keep)` applies it (in f32).
    pub fn scale(&self) -> f32 {
        (1.0 / self.keep) as f32
    }

    /// Elements `first ..` of `values` with the mask applied in place: `(v · m) · scale` with
    /// `m` 1 or 0, Burn's `Dropout` arithmetic (so a NaN or infinity stays NaN when dropped).
    pub fn apply_at(&self, first: usize, values: &mut [f32]) {
        let scale = self.scale();
        match &self.bits {
            // Drawn: 64 elements per word, a branch-free loop the compiler vectorizes.
            Some(bits) if first.is_multiple_of(64) => {
                for (w, chunk) in values.chunks_mut(64).enumerate() {
                    let word = bits[first / 64 + w];
                    for (j, v) in chunk.iter_mut().enumerate() {
                        let m = ((word >> j) & 1) as u32 as f32;
                        *v = (*v * m) * scale;
                    }
                }
            }
            _ => {
                for (j, v) in values.iter_mut().enumerate() {
                    let m = if self.kept(first + j) { 1.0 } else { 0.0 };
                    *v = (*v * m) * scale;
                }
            }
        }
    }

    /// The mask applied to all of `values` (element 0 first), split over rayon tasks.
    pub fn apply(&self, values: &mut [f32]) {
        use rayon::prelude::*;
        const PIECE: usize = 1 << 14;
        values
            .par_chunks_mut(PIECE)
            .enumerate()
            .for_each(|(p, chunk)| self.apply_at(p * PIECE, chunk));
    }

    /// The mask of `n` elements as 0/1 values (the composed path's tensor).
    pub fn ones(&self, n: usize) -> Vec<f32> {
        (0..n).map(|i| f32::from(u8::from(self.kept(i)))).collect()
    }
}

fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `x [rows, k]` with the mask applied, in Burn's ops.
fn dropped<B: Backend>(x: Tensor<B, 2>, drop: Option<&DropMask>) -> Tensor<B, 2> {
    match drop {
        Some(d) => {
            let [rows, k] = x.dims();
            let mask = Tensor::<B, 2>::from_data(
                TensorData::new(d.ones(rows * k), [rows, k]),
                (&x.device(), x.dtype()),
            );
            (x * mask).mul_scalar(d.scale())
        }
        None => x,
    }
}

/// The op in Burn's ops: `(y + s · ((drop(x) · A) · B), t = drop(x) · A)` for `y [.., out]`,
/// `x [.., in]`, `A [in, r]`, `B [r, out]` (Burn layout); `t` is `[rows, r]`.
pub fn composed<B: Backend>(
    y: FloatTensor<B>,
    x: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    scaling: f32,
    drop: Option<DropMask>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let y_shape = y.shape();
    let (k, n) = (a.shape()[0], b.shape()[1]);
    let rows = x.shape().num_elements() / k.max(1);
    let x = wrap::<B, 2>(B::float_reshape(x, Shape::new([rows, k])));
    let t = dropped(x, drop.as_ref()).matmul(wrap(a));
    let z = t.clone().matmul(wrap(b)).mul_scalar(scaling);
    let out = wrap::<B, 2>(B::float_reshape(y, Shape::new([rows, n]))) + z;
    (B::float_reshape(prim(out), y_shape), prim(t))
}

/// `[dx, dA, dB]` of [`composed`] in Burn's ops for the output gradient (the base output's
/// gradient is the output gradient itself): `dB = tᵀ · s·g`, `dt = s·g · Bᵀ`,
/// `dA = drop(x)ᵀ · dt`, `dx = drop'(dt · Aᵀ)`. `x` is needed (and kept) only for `dA`.
#[allow(clippy::too_many_arguments)]
pub fn composed_backward<B: Backend>(
    x: Option<FloatTensor<B>>,
    t: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    grad: FloatTensor<B>,
    (scaling, drop): (f32, Option<DropMask>),
    x_shape: Shape,
    need: [bool; 3],
) -> DenseGrads<B> {
    let (k, n) = (a.shape()[0], b.shape()[1]);
    let rows = grad.shape().num_elements() / n.max(1);
    let g = wrap::<B, 2>(B::float_reshape(grad, Shape::new([rows, n]))).mul_scalar(scaling);
    let t = wrap::<B, 2>(t);
    let db = need[2].then(|| prim(t.transpose().matmul(g.clone())));
    let dt = g.matmul(wrap::<B, 2>(b).transpose());
    let da = match (need[1], x) {
        (true, Some(x)) => {
            let x = wrap::<B, 2>(B::float_reshape(x, Shape::new([rows, k])));
            Some(prim(
                dropped(x, drop.as_ref()).transpose().matmul(dt.clone()),
            ))
        }
        _ => None,
    };
    let dx = need[0].then(|| {
        let dx = dropped(dt.matmul(wrap::<B, 2>(a).transpose()), drop.as_ref());
        B::float_reshape(prim(dx), x_shape)
    });
    [dx, da, db]
}

/// The op as one autodiff node over the inner backend's forward and backward.
pub fn tracked<B: QuantBackend, C: CheckpointStrategy>(
    y: FloatTensor<Autodiff<B, C>>,
    x: FloatTensor<Autodiff<B, C>>,
    a: FloatTensor<Autodiff<B, C>>,
    b: FloatTensor<Autodiff<B, C>>,
    scaling: f32,
    drop: Option<DropMask>,
) -> FloatTensor<Autodiff<B, C>> {
    /// The input only when `A` trains, `t`, both factors, the scaling, the mask's stream
    /// position and the input's shape.
    type State<B> = (
        Option<FloatTensor<B>>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        (f32, Option<DropMask>),
        Shape,
    );

    #[derive(Debug)]
    struct LowRankBackward;

    impl<B: QuantBackend> Backward<B, 4> for LowRankBackward {
        type State = State<B>;

        fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let [node_y, node_x, node_a, node_b] = ops.parents;
            let (x, t, a, b, op, x_shape) = ops.state;
            let need = [node_x.is_some(), node_a.is_some(), node_b.is_some()];
            let out = B::low_rank_backward(x, t, a, b, grad.clone(), op, x_shape, need);
            if let Some(node) = node_y {
                grads.register::<B>(node.id, grad);
            }
            for (node, g) in [node_x, node_a, node_b].into_iter().zip(out) {
                if let (Some(node), Some(g)) = (node, g) {
                    grads.register::<B>(node.id, g);
                }
            }
        }
    }

    // The mask drawn once, read by the forward and the backward.
    let drop = drop.map(|d| d.with_bits(x.primitive.shape().num_elements()));
    let keep_x = !a.node.requirement.is_none();
    let parents = [
        y.node.clone(),
        x.node.clone(),
        a.node.clone(),
        b.node.clone(),
    ];
    match LowRankBackward
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let x_shape = x.primitive.shape();
            let (out, t) = B::low_rank_forward(
                y.primitive,
                x.primitive.clone(),
                a.primitive.clone(),
                b.primitive.clone(),
                scaling,
                drop.clone(),
            );
            let state = (
                keep_x.then_some(x.primitive),
                t,
                a.primitive,
                b.primitive,
                (scaling, drop),
                x_shape,
            );
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(
            B::low_rank_forward(
                y.primitive,
                x.primitive,
                a.primitive,
                b.primitive,
                scaling,
                drop,
            )
            .0,
        ),
    }
}

/// `y + scaling · ((drop(x) · A) · B)` through [`QuantBackend::low_rank`]: `y [.., out]`,
/// `x [.., in]`, `a [in, r]`, `b [r, out]` (Burn's `Linear` weights of LoRA's A and B).
pub fn low_rank_update<B: QuantBackend, const D: usize>(
    y: Tensor<B, D>,
    x: Tensor<B, D>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scaling: f32,
    drop: Option<DropMask>,
) -> Tensor<B, D> {
    wrap(B::low_rank(
        prim(y),
        prim(x),
        prim(a),
        prim(b),
        scaling,
        drop,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    /// The mask is the stream's Bernoulli draws: about `keep` of the elements, the same
    /// element for the same position whichever piece computes it.
    #[test]
    fn the_mask_is_positional_and_keeps_about_keep() {
        let d = DropMask::new(0.8, 12345);
        let n = 100_000;
        let ones = d.ones(n);
        let kept = ones.iter().filter(|&&v| v == 1.0).count() as f64 / n as f64;
        assert!((kept - 0.8).abs() < 0.01, "kept {kept}");
        let mut all = vec![1f32; n];
        d.apply(&mut all);
        let mut tail = vec![1f32; 777];
        d.apply_at(n - 777, &mut tail);
        assert_eq!(&all[n - 777..], &tail[..]);
        assert!(all.iter().zip(&ones).all(|(a, m)| *a == *m * d.scale()));
        // Drawn once into bits: the same mask.
        let bits = d.clone().with_bits(n + 5);
        assert_eq!(bits.ones(n), ones);
        // Applied from the bits (64 per word, over several tasks): the same values.
        let mut from_bits = vec![1f32; n];
        bits.apply(&mut from_bits);
        assert_eq!(from_bits, all);
    }

    /// The NdArray node (host GEMMs, mask regenerated in the backward) against Burn's ops
    /// and autodiff in f64, with dropout: output and the gradients of the base output, the
    /// input (a strided view) and both factors (A given as PyTorch's `[r, in]` transposed).
    #[test]
    fn the_node_matches_burns_ops_and_their_gradients_with_dropout() {
        assert!(A::host_dense());
        let drop = Some(DropMask::new(0.7, 99));
        let (y, y64) = leaf([2, 5, 6], 1);
        let (x, x64) = leaf([2, 7, 5], 2); // used as [2, 5, 7], strided
        let (a, a64) = leaf([3, 7], 3); // PyTorch's A [r, in]
        let (b, b64) = leaf([3, 6], 4); // Burn's B [r, out]
        let s = 2.5f32;
        let got = low_rank_update(
            y.clone(),
            x.clone().swap_dims(1, 2),
            a.clone().transpose(),
            b.clone(),
            s,
            drop.clone(),
        );
        let (truth, _) = composed::<A64>(
            prim(y64.clone()),
            prim(x64.clone().swap_dims(1, 2)),
            prim(a64.clone().transpose()),
            prim(b64.clone()),
            s,
            drop,
        );
        let truth = wrap::<A64, 3>(truth);
        assert_eq!(got.dims(), [2, 5, 6]);
        assert!(rel(&host(got.clone().inner()), &host(truth.clone().inner())) < 1e-5);
        let (c, c64) = leaf([2, 5, 6], 5);
        let g = (got * c.detach()).sum().backward();
        let g64 = (truth * c64.detach()).sum().backward();
        for (name, got, want) in [
            (
                "y",
                host(y.grad(&g).unwrap()),
                host(y64.grad(&g64).unwrap()),
            ),
            (
                "x",
                host(x.grad(&g).unwrap()),
                host(x64.grad(&g64).unwrap()),
            ),
            (
                "a",
                host(a.grad(&g).unwrap()),
                host(a64.grad(&g64).unwrap()),
            ),
            (
                "b",
                host(b.grad(&g).unwrap()),
                host(b64.grad(&g64).unwrap()),
            ),
        ] {
            let err = rel(&got, &want);
            assert!(err < 1e-5, "d{name}: {err:e} from f64");
        }
    }

    /// Without dropout and with `A` frozen: no input kept, and `dx` and `dB` still right.
    #[test]
    fn a_frozen_a_needs_no_input() {
        let (y, y64) = leaf([4, 6], 1);
        let (x, x64) = leaf([4, 5], 2);
        let (a, a64) = leaf([5, 2], 3);
        let (b, b64) = leaf([2, 6], 4);
        let got = low_rank_update(y, x.clone(), a.detach(), b.clone(), 0.5, None);
        let (truth, _) = composed::<A64>(
            prim(y64),
            prim(x64.clone()),
            prim(a64.detach()),
            prim(b64.clone()),
            0.5,
            None,
        );
        let g = got.sum().backward();
        let g64 = wrap::<A64, 2>(truth).sum().backward();
        assert!(rel(&host(x.grad(&g).unwrap()), &host(x64.grad(&g64).unwrap())) < 1e-5);
        assert!(rel(&host(b.grad(&g).unwrap()), &host(b64.grad(&g64).unwrap())) < 1e-5);
    }

    /// The NdArray forward adds the update into `y`'s buffer: a `y` another tensor still
    /// shares is copied first (the other tensor keeps its values), a `y` it alone owns is
    /// written in place (no copy).
    #[test]
    fn the_update_goes_into_y_only_when_y_is_not_shared() {
        use burn::backend::NdArray;
        let d = Default::default();
        let t = |n: usize, seed: u64, dims: [usize; 2]| {
            Tensor::<NdArray, 2>::from_data(TensorData::new(values(n, seed), dims), &d)
        };
        let (y, x, a, b) = (
            t(24, 1, [4, 6]),
            t(20, 2, [4, 5]),
            t(10, 3, [5, 2]),
            t(12, 4, [2, 6]),
        );
        let want = y.clone()
            + x.clone()
                .matmul(a.clone())
                .matmul(b.clone())
                .mul_scalar(0.5);
        let kept = y.clone().into_data();
        let run = |y: Tensor<NdArray, 2>| {
            let (out, _) = NdArray::low_rank_forward(
                y.into_primitive().tensor(),
                x.clone().into_primitive().tensor(),
                a.clone().into_primitive().tensor(),
                b.clone().into_primitive().tensor(),
                0.5,
                None,
            );
            Tensor::<NdArray, 2>::from_primitive(TensorPrimitive::Float(out))
        };
        let shared = run(y.clone());
        assert_eq!(y.clone().into_data(), kept, "a shared y keeps its values");
        assert!(rel(&host(shared), &host(want.clone())) < 1e-6);
        let fresh = y.clone() + 0.0; // a buffer of its own
        let ptr = |t: &Tensor<NdArray, 2>| match t.clone().into_primitive().tensor() {
            burn_ndarray::NdArrayTensor::F32(s) => s.view().as_ptr() as usize,
            _ => 0,
        };
        let before = ptr(&fresh);
        let out = run(fresh);
        assert_eq!(ptr(&out), before, "an unshared y is written in place");
        assert!(rel(&host(out), &host(want)) < 1e-6);
    }
}
