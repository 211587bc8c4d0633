//! [`QuantBackend`] for Burn's kernel-fusion wrapper `Fusion<B>` (what `burn::backend::Cuda`
//! and `burn::backend::Wgpu` are with Burn's `fusion` feature, which the `cuda` and `wgpu`
//! features turn on). The wrapper records operations and compiles runs of element-wise ones
//! into single kernels; an operation it does not know is a custom operation in its stream.
//! So the wrapped backend's 4-bit kernels (dequantize, the fused few-row matmul and its input
//! gradient; for more rows the dequantized weight goes into the wrapper's own matmul) run as
//! custom operations, as `burn-vision` registers its kernels; everything
//! else (absmax decode, the dense and LoRA paths) is the trait's default Burn ops, which fusion
//! can merge.

use std::marker::PhantomData;

use burn::tensor::DType;
use burn::tensor::Shape;
use burn::tensor::ops::FloatTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use super::{Q4Layout, Q4Weight, QuantBackend};

/// Which 4-bit kernel of the wrapped backend a custom operation runs.
#[derive(Debug, Clone, Copy)]
enum Q4Kernel {
    /// `[packed, absmax, code] → [out, in]`.
    Dequantize,
    /// `[x, packed, absmax, code] → x · Wᵀ`.
    Matmul,
    /// `[grad, packed, absmax, code] → grad · W`.
    MatmulGrad,
}

/// One 4-bit kernel call in the fusion stream.
#[derive(Debug)]
struct Q4Op<B> {
    desc: CustomOpIr,
    kernel: Q4Kernel,
    layout: Q4Layout,
    _backend: PhantomData<B>,
}

impl<B: FusionBackend + QuantBackend> Operation<B::FusionRuntime> for Q4Op<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let weight =
            |handles: &mut HandleContainer<_>, [packed, absmax, code]: [&TensorIr; 3]| Q4Weight::<
                B,
            > {
                packed: handles.get_int_tensor::<B>(packed),
                absmax: handles.get_float_tensor::<B>(absmax),
                code: handles.get_float_tensor::<B>(code),
            };
        let (out, result) = match self.kernel {
            Q4Kernel::Dequantize => {
                let ([packed, absmax, code], [out]) = self.desc.as_fixed::<3, 1>();
                let w = weight(handles, [packed, absmax, code]);
                (out, B::q4_dequantize(w, self.layout))
            }
            Q4Kernel::Matmul | Q4Kernel::MatmulGrad => {
                let ([input, packed, absmax, code], [out]) = self.desc.as_fixed::<4, 1>();
                let input = handles.get_float_tensor::<B>(input);
                let w = weight(handles, [packed, absmax, code]);
                let result = match self.kernel {
                    Q4Kernel::Matmul => B::q4_matmul(input, w, self.layout),
                    _ => B::q4_matmul_grad(input, w, self.layout),
                };
                (out, result)
            }
        };
        handles.register_float_tensor::<B>(&out.id, result);
    }
}

/// Registers `kernel` on `input` (if any) and the weight's three tensors; the output is
/// `shape` in `dtype`.
fn register<B: FusionBackend + QuantBackend>(
    kernel: Q4Kernel,
    input: Option<FloatTensor<Fusion<B>>>,
    weight: Q4Weight<Fusion<B>>,
    layout: Q4Layout,
    (shape, dtype): (Shape, DType),
) -> FloatTensor<Fusion<B>> {
    let client = weight.packed.client.clone();
    let tensors: Vec<_> = input
        .into_iter()
        .chain([weight.packed, weight.absmax, weight.code])
        .collect();
    let streams = OperationStreams::with_inputs(&tensors);
    let out = TensorIr::uninit(client.create_empty_handle(), shape, dtype);
    let inputs: Vec<TensorIr> = tensors.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new("tracknet_q4", &inputs, &[out]);
    let op = Q4Op::<B> {
        desc: desc.clone(),
        kernel,
        layout,
        _backend: PhantomData,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .output()
}

impl<B: FusionBackend + QuantBackend> QuantBackend for Fusion<B> {
    fn q4_supports(device: &Self::Device, dtype: DType) -> bool {
        B::q4_supports(device, dtype)
    }

    fn q4_cache_absmax() -> bool {
        B::q4_cache_absmax()
    }

    /// The wrapped backend's allocator: fusion allocates there when it runs its queue.
    fn memory_probe(device: &Self::Device) -> Option<super::MemoryProbe> {
        B::memory_probe(device)
    }

    fn q4_dequantize(weight: Q4Weight<Self>, layout: Q4Layout) -> FloatTensor<Self> {
        let shape = Shape::new([layout.out_features, layout.in_features]);
        let dtype = weight.code.dtype;
        register(Q4Kernel::Dequantize, None, weight, layout, (shape, dtype))
    }

    fn q4_matmul(
        x: FloatTensor<Self>,
        weight: Q4Weight<Self>,
        layout: Q4Layout,
    ) -> FloatTensor<Self> {
        // Many rows: the dequantize kernel, then the wrapper's own matmul, which fusion can
        // merge the compute dtype's casts into (the wrapped backend's matmul inside an opaque
        // operation would hide them).
        if !super::use_fused(x.shape[0]) {
            return super::dequantize_then_matmul::<Self>(x, weight, layout);
        }
        let out = (Shape::new([x.shape[0], layout.out_features]), x.dtype);
        register(Q4Kernel::Matmul, Some(x), weight, layout, out)
    }

    fn q4_matmul_grad(
        grad: FloatTensor<Self>,
        weight: Q4Weight<Self>,
        layout: Q4Layout,
    ) -> FloatTensor<Self> {
        if !super::use_fused(grad.shape[0]) {
            return super::dequantize_then_matmul_grad::<Self>(grad, weight, layout);
        }
        let out = (Shape::new([grad.shape[0], layout.in_features]), grad.dtype);
        register(Q4Kernel::MatmulGrad, Some(grad), weight, layout, out)
    }
}
