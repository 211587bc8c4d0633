//! The dense (f32) linear `x · W + b` as one op with its own backward: on NdArray the rows go
//! through the host GEMM (`crate::gemm`) split over rayon, instead of burn-ndarray's matmul
//! (single-threaded per shard, and about half the rate); elsewhere Burn's ops, differentiated
//! by Burn's autodiff. Used by `tracknet-lora` for every dense base layer and LoRA factor.

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::FloatTensor;

use crate::QuantBackend;

/// `[dx, dW, db]` of a dense linear, each present only where asked for.
pub type DenseGrads<B> = [Option<FloatTensor<B>>; 3];

fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `x [.., in] · w [in, out] + bias [out]` in Burn's ops.
pub fn composed<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> FloatTensor<B> {
    use burn::tensor::TensorMetadata;
    let shape = x.shape();
    let (k, n) = (w.shape()[0], w.shape()[1]);
    let rows = shape.num_elements() / k.max(1);
    let x2 = wrap::<B, 2>(B::float_reshape(x, burn::tensor::Shape::new([rows, k])));
    let y = x2.matmul(wrap::<B, 2>(w)) + wrap::<B, 1>(bias).unsqueeze::<2>();
    let mut dims = shape.to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    B::float_reshape(y.into_primitive().tensor(), burn::tensor::Shape::from(dims))
}

/// The gradients of [`composed`] in Burn's ops: `dx = dy·Wᵀ`, `dW = xᵀ·dy`, `db = Σ dy`.
pub fn composed_backward<B: Backend>(
    x: Option<FloatTensor<B>>,
    w: FloatTensor<B>,
    grad: FloatTensor<B>,
    need: [bool; 3],
) -> DenseGrads<B> {
    use burn::tensor::TensorMetadata;
    let mut dims = grad.shape().to_vec();
    let (k, n) = (w.shape()[0], w.shape()[1]);
    let rows = grad.shape().num_elements() / n.max(1);
    let dy = wrap::<B, 2>(B::float_reshape(grad, burn::tensor::Shape::new([rows, n])));
    let w = wrap::<B, 2>(w);
    let dx = need[0].then(|| {
        let dx = dy.clone().matmul(w.transpose()).into_primitive().tensor();
        if let Some(last) = dims.last_mut() {
            *last = k;
        }
        B::float_reshape(dx, burn::tensor::Shape::from(dims))
    });
    let dw = match (need[1], x) {
        (true, Some(x)) => {
            let x2 = wrap::<B, 2>(B::float_reshape(x, burn::tensor::Shape::new([rows, k])));
            Some(x2.transpose().matmul(dy.clone()).into_primitive().tensor())
        }
        _ => None,
    };
    let db = need[2].then(|| dy.sum_dim(0).reshape([n]).into_primitive().tensor());
    [dx, dw, db]
}

/// The op as one autodiff node over the inner backend's forward and backward.
pub fn tracked<B: QuantBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    w: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct DenseBackward;

    impl<B: QuantBackend> Backward<B, 3> for DenseBackward {
        /// The weight, and the input only when the weight trains (only `dW` needs it).
        type State = (Option<FloatTensor<B>>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let (x, w) = ops.state;
            let need = ops.parents.each_ref().map(Option::is_some);
            let out = B::dense_linear_backward(x, w, grad, need);
            for (node, g) in ops.parents.into_iter().zip(out) {
                if let (Some(node), Some(g)) = (node, g) {
                    grads.register::<B>(node.id, g);
                }
            }
        }
    }

    let keep_x = !w.node.requirement.is_none();
    let parents = [x.node.clone(), w.node.clone(), bias.node.clone()];
    match DenseBackward
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = (keep_x.then(|| x.primitive.clone()), w.primitive.clone());
            prep.finish(
                state,
                B::dense_linear(x.primitive, w.primitive, bias.primitive),
            )
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(B::dense_linear(x.primitive, w.primitive, bias.primitive))
        }
    }
}

/// `x · W + b` through [`QuantBackend::dense_linear`] (zeros for a missing bias), f32 only:
/// inside an autocast region with a half dtype the caller takes `crate::autocast::linear`.
pub fn linear<B: QuantBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let n = weight.dims()[1];
    let bias = bias.unwrap_or_else(|| Tensor::zeros([n], &weight.device()));
    wrap(B::dense_linear(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.into_primitive().tensor(),
    ))
}

/// A Burn `Linear` in f32 through [`linear`]; inside an autocast region with a half dtype
/// (where the backend has it), through [`crate::autocast::linear_layer`] instead.
pub fn linear_layer<B: QuantBackend, const D: usize>(
    layer: &burn::nn::Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    if crate::autocast::active::<B>(&x.device()).is_some() {
        return crate::autocast::linear_layer(layer, x);
    }
    linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use burn::backend::NdArray;

    /// The NdArray node (host GEMM forward, written-out backward) against Burn's matmul and
    /// autodiff in f64: a 3-D input read through a transposed (strided) view, all three
    /// gradients.
    #[test]
    fn dense_linear_matches_burns_matmul_and_its_gradients() {
        assert!(A::host_dense());
        let (x, x64) = leaf([2, 7, 5], 1); // used as its [2, 5, 7] transpose: strided
        // The weight as PyTorch's `[out, in]` transposed (a strided view, read in place).
        let (w, w64) = leaf([4, 7], 2);
        let (b, b64) = leaf([4], 3);
        let y = linear(
            x.clone().swap_dims(1, 2),
            w.clone().transpose(),
            Some(b.clone()),
        );
        let truth = x64
            .clone()
            .swap_dims(1, 2)
            .matmul(w64.clone().transpose().unsqueeze::<3>())
            + b64.clone().unsqueeze::<3>();
        assert_eq!(y.dims(), [2, 5, 4]);
        assert!(rel(&host(y.clone().inner()), &host(truth.clone().inner())) < 1e-5);
        let (c, c64) = leaf([2, 5, 4], 4);
        let g = (y * c.clone().detach()).sum().backward();
        let g64 = (truth * c64.clone().detach()).sum().backward();
        for (name, got, want) in [
            (
                "x",
                host(x.grad(&g).unwrap()),
                host(x64.grad(&g64).unwrap()),
            ),
            (
                "w",
                host(w.grad(&g).unwrap()),
                host(w64.grad(&g64).unwrap()),
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
        // A frozen weight and no bias: only dx, and the same dx.
        let frozen = w.clone().detach().transpose();
        let y = linear(x.clone().swap_dims(1, 2), frozen, None);
        let truth = x64
            .clone()
            .swap_dims(1, 2)
            .matmul(w64.clone().detach().transpose().unsqueeze::<3>());
        let g = (y * c.detach()).sum().backward();
        let g64 = (truth * c64.detach()).sum().backward();
        assert!(rel(&host(x.grad(&g).unwrap()), &host(x64.grad(&g64).unwrap())) < 1e-5);
    }

    /// The same weight values laid out row-major (as a checkpoint loads them) or as a
    /// transposed view (as Hugging Face / PEFT loading gives them) give the same bits.
    /// Both are read in place; rows of 9, 3 and 1 take the GEMM's blocked, small-product and
    /// matrix-vector paths. The input gradient (through `Wᵀ`) likewise.
    #[test]
    fn the_weights_layout_does_not_change_the_result() {
        let d = Default::default();
        for m in [9, 3, 1] {
            let x =
                Tensor::<NdArray, 2>::from_data(TensorData::new(values(m * 300, 5), [m, 300]), &d);
            let torch = Tensor::<NdArray, 2>::from_data(
                TensorData::new(values(70 * 300, 6), [70, 300]),
                &d,
            );
            let view = torch.clone().transpose(); // [300, 70], strided
            let rows = Tensor::<NdArray, 2>::from_data(view.clone().into_data(), &d); // row-major
            let a = linear(x.clone(), view.clone(), None).into_data();
            let b = linear(x.clone(), rows.clone(), None).into_data();
            assert_eq!(a, b, "forward, {m} rows");
            let dy =
                Tensor::<NdArray, 2>::from_data(TensorData::new(values(m * 70, 7), [m, 70]), &d);
            let dx = |w: Tensor<NdArray, 2>| {
                let [dx, _, _] = NdArray::dense_linear_backward(
                    None,
                    w.into_primitive().tensor(),
                    dy.clone().into_primitive().tensor(),
                    [true, false, false],
                );
                let dx = dx.expect("dx was asked for");
                Tensor::<NdArray, 2>::from_primitive(TensorPrimitive::Float(dx)).into_data()
            };
            assert_eq!(dx(view), dx(rows), "input gradient, {m} rows");
        }
    }
}
