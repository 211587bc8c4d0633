//! Bilinear resize (`align_corners = false`), PyTorch's `F.interpolate(..., mode="bilinear",
//! align_corners=False)`, as a fused op: a host kernel with its own backward on NdArray, the
//! composed Burn ops of [`crate::fused::bilinear`] elsewhere (Burn's `interpolate` has no
//! bilinear backward on NdArray, so the decoder would not train on CPU with it).

use burn::prelude::*;

use crate::fused::FusedBackend;

/// Resizes `[batch, channels, h, w]` to `[batch, channels, size[0], size[1]]` (`size` is
/// `[height, width]`). Returns the input unchanged when it already has that size.
///
/// Through [`FusedBackend::fused_bilinear_resize`]: one host kernel with its own backward on
/// NdArray, the composed ops (`fused::bilinear`) elsewhere.
pub fn bilinear_resize<B: FusedBackend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == size || h == 0 || w == 0 {
        return x;
    }
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(
        B::fused_bilinear_resize(x.into_primitive().tensor(), size),
    ))
}
