//! NdArray's tensors as `f32` slices for the [kernels](super::kernels), and back.
//!
//! A contiguous f32 tensor is read in place (no copy); anything else (a permuted view) is
//! gathered once in logical order. Results become owned arrays without a copy.

use std::borrow::Cow;

use burn::backend::ndarray::{NdArray, NdArrayTensor};
use burn::tensor::ops::FloatTensor;

/// The tensor's elements in row-major order and its shape, or `None` when it is not f32 (the
/// caller then takes the composed ops).
pub fn read(t: &FloatTensor<NdArray>) -> Option<(Cow<'_, [f32]>, Vec<usize>)> {
    let NdArrayTensor::F32(storage) = t else {
        return None;
    };
    let view = storage.view();
    let shape = view.shape().to_vec();
    let data = match view.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(view.iter().copied().collect()),
    };
    Some((data, shape))
}

/// An f32 tensor of `shape` holding `data` (whose length is the shape's product).
pub fn write(data: Vec<f32>, shape: &[usize]) -> FloatTensor<NdArray> {
    let array = ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(shape), data)
        .expect("kernel output has its shape's length");
    NdArrayTensor::from(array)
}

/// [`read`] of tensors the caller has checked with [`all_f32`].
pub fn read_all<'a, const N: usize>(
    ts: [&'a FloatTensor<NdArray>; N],
) -> [(Cow<'a, [f32]>, Vec<usize>); N] {
    ts.map(|t| read(t).expect("an f32 tensor (checked with all_f32 by the caller)"))
}

/// Whether every tensor is f32 (the kernels' only type).
pub fn all_f32(ts: &[&FloatTensor<NdArray>]) -> bool {
    ts.iter().all(|t| matches!(t, NdArrayTensor::F32(_)))
}

/// A strided 4-D view of an f32 tensor for the attention kernel, valid while `t` lives.
pub fn view4(t: &FloatTensor<NdArray>) -> Option<super::attention_kernel::View> {
    let NdArrayTensor::F32(storage) = t else {
        return None;
    };
    let view = storage.view();
    let (shape, strides) = (view.shape(), view.strides());
    if shape.len() != 4 {
        return None;
    }
    Some(super::attention_kernel::View {
        ptr: view.as_ptr(),
        shape: [shape[0], shape[1], shape[2], shape[3]],
        strides: [strides[0], strides[1], strides[2], strides[3]],
    })
}

/// A `[batch, heads, tokens, head_dim]` tensor over `data` laid out as
/// `[batch, tokens, heads, head_dim]` (the attention kernel's output order): a permuted view,
/// no copy.
pub fn write_bthd(data: Vec<f32>, [b, h, t, d]: [usize; 4]) -> FloatTensor<NdArray> {
    let array = ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(&[b, t, h, d]), data)
        .expect("kernel output has its shape's length")
        .permuted_axes(ndarray::IxDyn(&[0, 2, 1, 3]));
    NdArrayTensor::from(array)
}
