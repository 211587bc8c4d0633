//! Mixed precision as `torch.autocast` does it: inside a region opened with [`autocast`], the
//! model's matrix ops — linear layers and LoRA adapters, the attention matmuls, convolutions —
//! cast their f32 inputs and parameters to the region's half dtype, compute there, and return
//! f32. Everything else (norms, softmax, activations, the loss) stays f32, and parameters,
//! gradients and optimizer state are never anything but f32 (the cast's backward casts the
//! gradient back), so the optimizer updates f32 master weights.
//!
//! The region is per thread, like PyTorch's: the trainer opens it around a step's forward and
//! backward. A backend without arithmetic in the dtype (NdArray; wgpu has no bf16) runs the
//! region in f32 — [`active`] is `None` there — and the caller says so once
//! (`tracknet-train` does, naming `training.amp`).

use std::cell::Cell;

use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::module::linear as linear_op;

thread_local! {
    static REGION: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// Restores the enclosing region (or none) when dropped.
#[must_use = "the region ends when the guard is dropped"]
pub struct AutocastGuard {
    previous: Option<FloatDType>,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        REGION.with(|r| r.set(self.previous));
    }
}

/// Open a region computing matrix ops in `dtype` on this thread (`None`: an f32 region, e.g. to
/// turn autocast off inside one) until the guard drops.
pub fn autocast(dtype: Option<FloatDType>) -> AutocastGuard {
    let previous = REGION.with(|r| r.replace(dtype));
    AutocastGuard { previous }
}

/// The dtype of this thread's region, whatever the backend.
pub fn region() -> Option<FloatDType> {
    REGION.with(Cell::get)
}

/// The dtype matrix ops on `device` compute in: the region's, where the backend has
/// arithmetic in it; `None` (f32) otherwise.
pub fn active<B: Backend>(device: &B::Device) -> Option<FloatDType> {
    region().filter(|&d| supports::<B>(device, d))
}

/// Whether `B` computes in `dtype` on `device` (storage and arithmetic).
pub fn supports<B: Backend>(device: &B::Device, dtype: FloatDType) -> bool {
    B::supports_dtype(device, dtype.into())
}

/// The backend's name for messages, without Burn's `autodiff<…>` wrapper (`ndarray`, `wgpu<…>`).
pub fn backend_name<B: Backend>(device: &B::Device) -> String {
    let name = B::name(device);
    match name
        .strip_prefix("autodiff<")
        .and_then(|n| n.strip_suffix('>'))
    {
        Some(inner) => inner.to_string(),
        None => name,
    }
}

/// `t` in `dtype` when set (a no-op otherwise).
pub fn to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: Option<FloatDType>) -> Tensor<B, D> {
    match dtype {
        Some(d) if t.dtype() != d.into() => t.cast(d),
        _ => t,
    }
}

/// `t` back in f32 (a no-op when it is).
pub fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    to(t, Some(FloatDType::F32))
}

/// `x · W + b` (Burn layout, `weight: [in, out]`) in the region's dtype; f32 out.
///
/// # Shapes
/// - x: `[..., in]`, output `[..., out]`
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    match active::<B>(&x.device()) {
        None => linear_op(x, weight, bias),
        half => to_f32(linear_op(
            to(x, half),
            to(weight, half),
            bias.map(|b| to(b, half)),
        )),
    }
}

/// A Burn `Linear` through [`linear`].
pub fn linear_layer<B: Backend, const D: usize>(
    layer: &burn::nn::Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn regions_nest_and_restore_per_thread() {
        assert_eq!(region(), None);
        {
            let _outer = autocast(Some(FloatDType::F16));
            assert_eq!(region(), Some(FloatDType::F16));
            {
                let _inner = autocast(None);
                assert_eq!(region(), None);
            }
            assert_eq!(region(), Some(FloatDType::F16));
            // Another thread has its own (empty) region.
            std::thread::spawn(|| assert_eq!(region(), None))
                .join()
                .unwrap();
        }
        assert_eq!(region(), None);
    }

    /// NdArray has no f16 arithmetic: inside a region its linear is the f32 one, bit for bit.
    #[test]
    fn a_backend_without_half_arithmetic_computes_in_f32() {
        let device = Default::default();
        assert!(!supports::<NdArray>(&device, FloatDType::F16));
        let x = Tensor::<NdArray, 2>::from_floats([[1.0, 2.0, 3.0], [0.1, 0.2, 0.3]], &device);
        let w = Tensor::<NdArray, 2>::from_floats([[1.0, 0.5], [0.25, 1.0], [3.0, -1.0]], &device);
        let b = Tensor::<NdArray, 1>::from_floats([0.5, -0.5], &device);
        let plain = linear(x.clone(), w.clone(), Some(b.clone())).into_data();
        let _region = autocast(Some(FloatDType::F16));
        assert_eq!(active::<NdArray>(&device), None);
        let inside = linear(x, w, Some(b));
        assert_eq!(inside.dtype(), burn::tensor::DType::F32);
        assert_eq!(inside.into_data(), plain);
    }
}
