//! `Autodiff<B>`'s 4-bit linear: bitsandbytes' `MatMul4Bit` — the forward dequantizes,
//! multiplies and drops the dense weight; the backward dequantizes again for the input gradient.

use super::*;

impl<B: QuantBackend, C: CheckpointStrategy> QuantBackend for Autodiff<B, C> {
    fn q4_supports(device: &Self::Device, dtype: burn::tensor::DType) -> bool {
        B::q4_supports(device, dtype)
    }

    fn q4_cache_absmax() -> bool {
        B::q4_cache_absmax()
    }

    fn memory_probe(device: &Self::Device) -> Option<MemoryProbe> {
        B::memory_probe(device)
    }

    fn q4_dequantize(weight: Q4Weight<Self>, layout: Q4Layout) -> FloatTensor<Self> {
        // Used by merge and reports: a constant, no graph.
        let inner = Q4Weight::<B> {
            packed: weight.packed,
            absmax: weight.absmax.primitive,
            code: weight.code.primitive,
        };
        let dense = B::q4_dequantize(inner, layout);
        <Self as burn::tensor::backend::AutodiffBackend>::from_inner(dense)
    }

    fn q4_matmul(
        x: FloatTensor<Self>,
        weight: Q4Weight<Self>,
        layout: Q4Layout,
    ) -> FloatTensor<Self> {
        q4_linear_tracked::<B, C>(x, weight, layout)
    }

    fn q4_decode_absmax(
        q: IntTensor<Self>,
        nested: FloatTensor<Self>,
        offset: FloatTensor<Self>,
        map: FloatTensor<Self>,
        nested_blocksize: usize,
        n: usize,
    ) -> FloatTensor<Self> {
        // Constants of a frozen layer: no graph.
        let decoded = B::q4_decode_absmax(
            q,
            nested.primitive,
            offset.primitive,
            map.primitive,
            nested_blocksize,
            n,
        );
        <Self as burn::tensor::backend::AutodiffBackend>::from_inner(decoded)
    }

    fn q4_linear(
        x: FloatTensor<Self>,
        weight: Q4Weight<Self>,
        layout: Q4Layout,
    ) -> FloatTensor<Self> {
        q4_linear_tracked::<B, C>(x, weight, layout)
    }

    fn host_dense() -> bool {
        B::host_dense()
    }

    fn dense_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if B::host_dense() {
            crate::dense::tracked::<B, C>(x, w, bias)
        } else {
            crate::dense::composed::<Self>(x, w, bias)
        }
    }

    fn low_rank(
        y: FloatTensor<Self>,
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scaling: f32,
        drop: Option<crate::low_rank::DropMask>,
    ) -> FloatTensor<Self> {
        if B::host_dense() {
            crate::low_rank::tracked::<B, C>(y, x, a, b, scaling, drop)
        } else {
            crate::low_rank::composed::<Self>(y, x, a, b, scaling, drop).0
        }
    }
}

/// The 4-bit linear `[.., in] → [.., out]` as one graph node: the flattening to rows happens
/// on the inner backend, in the forward and in the backward, so no reshape (a memory-bound op
/// that checkpointing would keep inputs for) enters the graph.
fn q4_linear_tracked<B: QuantBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: Q4Weight<Autodiff<B, C>>,
    layout: Q4Layout,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct Q4LinearBackward;

    impl<B: QuantBackend> Backward<B, 1> for Q4LinearBackward {
        /// Only the 4-bit weight (a few bytes per weight) and the input's shape are kept for
        /// the backward pass.
        type State = (Q4Weight<B>, Q4Layout, burn::tensor::Shape);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_x] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (weight, layout, x_shape) = ops.state;
            if let Some(node) = node_x {
                // dL/dx = dL/dy · W, with W re-dequantized (chunk by chunk on NdArray).
                let (grad2, _) = flatten_rows::<B>(grad, layout.out_features, layout.in_features);
                let gx = B::q4_matmul_grad(grad2, weight, layout);
                grads.register::<B>(node.id, B::float_reshape(gx, x_shape));
            }
        }
    }

    let inner = Q4Weight::<B> {
        packed: weight.packed,
        absmax: weight.absmax.primitive,
        code: weight.code.primitive,
    };
    match Q4LinearBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            use burn::tensor::TensorMetadata;
            let x_shape = x.primitive.shape();
            let output = B::q4_linear(x.primitive, inner.clone(), layout);
            prep.finish((inner, layout, x_shape), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::q4_linear(x.primitive, inner, layout)),
    }
}
