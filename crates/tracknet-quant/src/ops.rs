//! The 4-bit matmul as a backend operation with its own backward.
//!
//! `QuantBackend` narrows `Backend` to the backends that can run the 4-bit linear: NdArray
//! (a fused host dequantizer), CUDA (generic tensor ops, behind the `cuda` feature) and
//! `Autodiff<B>` over any of them. The autodiff implementation is what bitsandbytes'
//! `MatMul4Bit` does: the forward dequantizes, multiplies and drops the dense weight; the
//! backward dequantizes again to compute the input gradient. The weight never gets a gradient,
//! so no full-precision copy of it lives from forward to backward.

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::{FloatTensor, IntTensor};

/// Static description of one packed 4-bit weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Q4Layout {
    /// Input features (PyTorch `in_features`).
    pub in_features: usize,
    /// Output features (PyTorch `out_features`).
    pub out_features: usize,
    /// Elements per absmax block.
    pub blocksize: usize,
    /// Dtype the matmul runs in (the weight is dequantized to it).
    pub compute: ComputeDtype,
}

/// Dtype of the dequantized weight and the matmul (bitsandbytes' `compute_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ComputeDtype {
    /// f32 everywhere (the only choice on NdArray).
    #[default]
    F32,
    /// f16 matmul, f32 in and out.
    F16,
    /// bf16 matmul, f32 in and out.
    BF16,
}

impl ComputeDtype {
    pub(crate) fn dtype(self) -> Option<burn::tensor::DType> {
        match self {
            Self::F32 => None,
            Self::F16 => Some(burn::tensor::DType::F16),
            Self::BF16 => Some(burn::tensor::DType::BF16),
        }
    }
}

impl Q4Layout {
    /// Elements of the weight.
    pub fn numel(&self) -> usize {
        self.in_features * self.out_features
    }
    /// Absmax blocks (the last one may be partial).
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }
    /// 32-bit words holding the codes, eight 4-bit codes per word.
    pub fn num_words(&self) -> usize {
        self.numel().div_ceil(8)
    }
}

/// The device-side tensors of a 4-bit weight, as backend primitives.
#[derive(Debug, Clone)]
pub struct Q4Weight<B: Backend> {
    /// `[num_words]` int32 words, eight codes each; element `8j + i` sits in bits
    /// `28 - 4i .. 32 - 4i` of word `j` (so byte order and nibble order follow bitsandbytes).
    pub packed: IntTensor<B>,
    /// `[num_blocks]` f32 absmax of each block (already de-double-quantized).
    pub absmax: FloatTensor<B>,
    /// `[16]` the code book.
    pub code: FloatTensor<B>,
}

/// Bytes a device allocator holds, as CubeCL's memory manager counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceMemory {
    /// Bytes of live tensors (padding excluded): what PyTorch calls "allocated".
    pub in_use: u64,
    /// Bytes of the pages the allocator holds. The default CubeCL pools give pages back only
    /// on an explicit `Backend::memory_cleanup`, so between two cleanups this is also the
    /// high-water mark of `in_use` plus padding (PyTorch's "max reserved").
    pub reserved: u64,
}

/// Reads one stream's device allocator; callable from any thread, so that a sampler can
/// poll it while the thread that made it computes.
pub type MemoryProbe = Box<dyn Fn() -> Option<DeviceMemory> + Send + Sync>;

/// Backends that can run the 4-bit linear.
pub trait QuantBackend: Backend {
    /// Whether the matmul can run in `dtype` (f16/bf16) on `device` (false: f32 is used):
    /// where the backend has arithmetic in it.
    fn q4_supports(device: &Self::Device, dtype: burn::tensor::DType) -> bool {
        Self::supports_dtype(device, dtype)
    }

    /// Whether a double-quantized layer keeps its absmax decoded to f32 (0.5 bit per weight at
    /// blocksize 64, on top of the 4.13 bits) rather than decoding it in every forward. The
    /// CubeCL backends keep it: the decode is several kernel launches per layer and call. The
    /// default (NdArray) keeps bitsandbytes' compressed form only, decoding it per call as
    /// bitsandbytes does; on the host that costs microseconds.
    fn q4_cache_absmax() -> bool {
        false
    }

    /// Dequantize to the dense weight in PyTorch layout `[out, in]`.
    fn q4_dequantize(weight: Q4Weight<Self>, layout: Q4Layout) -> FloatTensor<Self> {
        dequantize_generic::<Self>(weight, layout)
    }

    /// `x [n, in] → x · Wᵀ [n, out]` with `W` dequantized on the fly and dropped afterwards.
    fn q4_matmul(
        x: FloatTensor<Self>,
        weight: Q4Weight<Self>,
        layout: Q4Layout,
    ) -> FloatTensor<Self> {
        dequantize_then_matmul::<Self>(x, weight, layout)
    }

    /// `x [.., in] → [.., out]`: [`QuantBackend::q4_matmul`] over the flattened leading
    /// dimensions, the reshapes done here rather than as tensor ops around the call. Why: under
    /// autodiff a reshape is a memory-bound op, and Burn's `BalancedCheckpointing` keeps the
    /// input of every memory-bound op for its recomputation — a reshape after the 4-bit matmul
    /// would keep the matmul's output alive until the backward, which the 4-bit op itself never
    /// needs. The autodiff implementation flattens inside its one graph node.
    fn q4_linear(
        x: FloatTensor<Self>,
        weight: Q4Weight<Self>,
        layout: Q4Layout,
    ) -> FloatTensor<Self> {
        let (x2, out_shape) = flatten_rows::<Self>(x, layout.in_features, layout.out_features);
        Self::float_reshape(Self::q4_matmul(x2, weight, layout), out_shape)
    }

    /// `grad [n, out] → grad · W [n, in]`: the input gradient of [`QuantBackend::q4_matmul`].
    fn q4_matmul_grad(
        grad: FloatTensor<Self>,
        weight: Q4Weight<Self>,
        layout: Q4Layout,
    ) -> FloatTensor<Self> {
        dequantize_then_matmul_grad::<Self>(grad, weight, layout)
    }

    /// bitsandbytes' double-quantization decode of the absmax: `map[q_i] · nested[i /
    /// nested_blocksize] + offset` for the `n` 8-bit codes `q` packed four per i32 word (first
    /// in the high byte). Burn's tensor ops by default; a host loop on NdArray, where the ops
    /// (unpack, gather, two element-wise passes per 4-bit layer and forward) cost more than the
    /// decode.
    fn q4_decode_absmax(
        q: IntTensor<Self>,
        nested: FloatTensor<Self>,
        offset: FloatTensor<Self>,
        map: FloatTensor<Self>,
        nested_blocksize: usize,
        n: usize,
    ) -> FloatTensor<Self> {
        decode_absmax_generic::<Self>(q, nested, offset, map, nested_blocksize, n)
    }

    /// Whether [`dense_linear`](Self::dense_linear) is a host kernel whose autodiff node
    /// should be used (NdArray); otherwise the autodiff backend differentiates Burn's ops.
    fn host_dense() -> bool {
        false
    }

    /// The dense linear `x [.., in] · w [in, out] + bias [out]` (Burn layout).
    fn dense_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        crate::dense::composed::<Self>(x, w, bias)
    }

    /// `[dx, dW, db]` of [`dense_linear`](Self::dense_linear) for the output gradient, each
    /// only where `need` says so. `x` is kept (and given) only when the weight trains: `dW`
    /// is the only gradient that needs it.
    fn dense_linear_backward(
        x: Option<FloatTensor<Self>>,
        w: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        need: [bool; 3],
    ) -> crate::dense::DenseGrads<Self> {
        crate::dense::composed_backward::<Self>(x, w, grad, need)
    }

    /// LoRA's update added to the base output, `y + s · ((drop(x) · A) · B)`
    /// (`crate::low_rank`): one node on NdArray, Burn's ops elsewhere.
    fn low_rank(
        y: FloatTensor<Self>,
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scaling: f32,
        drop: Option<crate::low_rank::DropMask>,
    ) -> FloatTensor<Self> {
        Self::low_rank_forward(y, x, a, b, scaling, drop).0
    }

    /// [`low_rank`](Self::low_rank)'s output and `t = drop(x) · A` `[rows, r]`.
    fn low_rank_forward(
        y: FloatTensor<Self>,
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scaling: f32,
        drop: Option<crate::low_rank::DropMask>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::low_rank::composed::<Self>(y, x, a, b, scaling, drop)
    }

    /// `[dx, dA, dB]` of [`low_rank`](Self::low_rank), each only where `need` says so; `x`
    /// is given only when `A` trains.
    #[allow(clippy::too_many_arguments)]
    fn low_rank_backward(
        x: Option<FloatTensor<Self>>,
        t: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        op: (f32, Option<crate::low_rank::DropMask>),
        x_shape: burn::tensor::Shape,
        need: [bool; 3],
    ) -> crate::dense::DenseGrads<Self> {
        crate::low_rank::composed_backward::<Self>(x, t, a, b, grad, op, x_shape, need)
    }

    /// A probe of the device memory that the calling thread's operations allocate on
    /// `device` (CubeCL keeps one allocator per stream, a stream per thread). `None` where
    /// tensors live on the process heap (NdArray): a counting global allocator sees those.
    fn memory_probe(_device: &Self::Device) -> Option<MemoryProbe> {
        None
    }
}

/// [`QuantBackend::q4_matmul`] as dequantize (in `layout.compute`) + the backend's matmul.
pub fn dequantize_then_matmul<B: QuantBackend>(
    x: FloatTensor<B>,
    weight: Q4Weight<B>,
    layout: Q4Layout,
) -> FloatTensor<B> {
    let w =
        Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::q4_dequantize(weight, layout)));
    let x = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(x));
    let y = match layout.compute.dtype() {
        Some(dtype) if B::q4_supports(&x.device(), dtype) => {
            let out_dtype = x.dtype();
            x.cast(dtype)
                .matmul(w.cast(dtype).transpose())
                .cast(out_dtype)
        }
        _ => x.matmul(w.transpose()),
    };
    y.into_primitive().tensor()
}

/// [`QuantBackend::q4_matmul_grad`] as dequantize + the backend's matmul.
pub fn dequantize_then_matmul_grad<B: QuantBackend>(
    grad: FloatTensor<B>,
    weight: Q4Weight<B>,
    layout: Q4Layout,
) -> FloatTensor<B> {
    let w =
        Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::q4_dequantize(weight, layout)));
    let grad = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grad));
    let g = match layout.compute.dtype() {
        Some(dtype) if B::q4_supports(&grad.device(), dtype) => {
            let out_dtype = grad.dtype();
            grad.cast(dtype).matmul(w.cast(dtype)).cast(out_dtype)
        }
        _ => grad.matmul(w),
    };
    g.into_primitive().tensor()
}

/// Rows up to which the CubeCL backends' [`QuantBackend::q4_matmul`] and its gradient use the
/// fused kernels that decode each 4-bit code where they multiply it (above: dequantize once,
/// then the backend's tiled matmul, which reuses each weight across rows). NdArray's host
/// kernel always decodes in row chunks. Measured on wgpu/lavapipe (docs/performance.md): the
/// fused kernels take 0.5–0.95× the time of dequantize + matmul for 1–8 rows and break even at
/// 16.
pub const FUSED_MAX_ROWS: usize = 8;

/// Whether a CubeCL backend multiplies `rows` rows with the fused kernels of [`crate::cube`]:
/// few rows, in any compute dtype.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn use_fused(rows: usize) -> bool {
    rows <= FUSED_MAX_ROWS
}

/// The fused kernel `k(input)` in `layout.compute` (a half `compute` is only ever set where
/// the backend has it: `with_compute`), the result back in the input's dtype.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn fused_in_compute<B: Backend>(
    input: FloatTensor<B>,
    layout: Q4Layout,
    k: impl FnOnce(FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<B> {
    let input = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(input));
    let out_dtype = input.dtype();
    let input = match layout.compute.dtype() {
        Some(dtype) => input.cast(dtype),
        None => input,
    };
    let out =
        Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(k(input.into_primitive().tensor())));
    out.cast(out_dtype).into_primitive().tensor()
}

mod autodiff;
mod dequant;
mod host;

pub use dequant::{
    decode_absmax_generic, dequantize_generic, dequantize_host, dequantize_range, expand_blocks,
    unpack_words,
};

/// `x [.., features]` as `[rows, features]`, and the shape `[.., out]` of the result.
fn flatten_rows<B: Backend>(
    x: FloatTensor<B>,
    features: usize,
    out: usize,
) -> (FloatTensor<B>, burn::tensor::Shape) {
    use burn::tensor::TensorMetadata;
    let mut dims = x.shape().to_vec();
    let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    (
        B::float_reshape(x, burn::tensor::Shape::new([rows, features])),
        burn::tensor::Shape::from(dims),
    )
}

/// Host copy of a tensor's data as `T` (the conversion makes the element type match).
fn host_vec<T: burn::tensor::Element>(data: TensorData) -> Vec<T> {
    data.convert::<T>()
        .into_vec::<T>()
        .expect("TensorData::convert yields the requested element type")
}

/// The three kernels' methods of [`QuantBackend`], the same for every CubeCL backend.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
macro_rules! cube_q4_methods {
    () => {
        fn q4_cache_absmax() -> bool {
            true
        }

        fn q4_dequantize(weight: Q4Weight<Self>, layout: Q4Layout) -> FloatTensor<Self> {
            crate::cube::dequantize(
                weight.packed,
                weight.absmax,
                weight.code,
                [layout.out_features, layout.in_features],
                layout.blocksize,
            )
        }

        fn q4_matmul(
            x: FloatTensor<Self>,
            weight: Q4Weight<Self>,
            layout: Q4Layout,
        ) -> FloatTensor<Self> {
            if !use_fused(x.meta.shape()[0]) {
                return dequantize_then_matmul::<Self>(x, weight, layout);
            }
            fused_in_compute::<Self>(x, layout, |x| {
                crate::cube::dequant_matmul(
                    x,
                    weight.packed,
                    weight.absmax,
                    weight.code,
                    [layout.out_features, layout.in_features],
                    layout.blocksize,
                )
            })
        }

        fn q4_matmul_grad(
            grad: FloatTensor<Self>,
            weight: Q4Weight<Self>,
            layout: Q4Layout,
        ) -> FloatTensor<Self> {
            if !use_fused(grad.meta.shape()[0]) {
                return dequantize_then_matmul_grad::<Self>(grad, weight, layout);
            }
            fused_in_compute::<Self>(grad, layout, |grad| {
                crate::cube::dequant_matmul_grad(
                    grad,
                    weight.packed,
                    weight.absmax,
                    weight.code,
                    [layout.out_features, layout.in_features],
                    layout.blocksize,
                )
            })
        }
    };
}

/// The CubeCL backends (CUDA, wgpu): up to [`FUSED_MAX_ROWS`] rows multiply with the fused
/// CubeCL kernels that decode each code where they use it (bitsandbytes' `gemv_4bit`); more rows
/// dequantize with one CubeCL kernel and multiply with Burn's tiled matmul, as bitsandbytes'
/// `MatMul4Bit` does for training batches. Never the NdArray host kernel. wgpu's WGSL has no
/// bf16 (f32 then, one warning); f16 where the device has it (lavapipe does).
/// `burn::backend::Cuda` and `Wgpu` are these wrapped in Burn's fusion: see `ops/fusion.rs`.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl<R, F, I, BT> QuantBackend for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
    cube_q4_methods!();

    fn memory_probe(device: &Self::Device) -> Option<MemoryProbe> {
        let mut client = R::client(device);
        // SAFETY: pins the client to the calling thread's stream, whose allocator holds that
        // thread's tensors; the probe only reads that allocator's counters through it.
        unsafe { client.set_stream(cubecl::stream_id::StreamId::current()) };
        Some(Box::new(move || {
            client.memory_usage().ok().map(|u| DeviceMemory {
                in_use: u.bytes_in_use,
                reserved: u.bytes_reserved,
            })
        }))
    }
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod fusion;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    /// The NdArray host decode of double-quantized absmax gives the generic tensor ops' bits,
    /// for a count that ends inside a word and inside a nested block.
    #[test]
    fn host_absmax_decode_is_the_generic_decode_bit_for_bit() {
        let d = Default::default();
        let n: usize = 1001; // 251 words (the last partial), 4 nested blocks of 256
        let words: Vec<i32> = (0..n.div_ceil(4) as u32)
            .map(|w| w.wrapping_mul(0x9E37_79B9).rotate_left(11) as i32)
            .collect();
        let nested: Vec<f32> = (0..4).map(|b| 0.013 + b as f32 * 0.0071).collect();
        let map: Vec<f32> = (0..256).map(|c| (c as f32 - 127.3) / 131.0).collect();
        let q = || {
            Tensor::<NdArray, 1, Int>::from_data(TensorData::new(words.clone(), [words.len()]), &d)
        };
        let f = |v: &[f32]| {
            Tensor::<NdArray, 1>::from_floats(v, &d)
                .into_primitive()
                .tensor()
        };
        let host = NdArray::q4_decode_absmax(
            q().into_primitive(),
            f(&nested),
            f(&[0.0421]),
            f(&map),
            256,
            n,
        );
        let generic = decode_absmax_generic::<NdArray>(
            q().into_primitive(),
            f(&nested),
            f(&[0.0421]),
            f(&map),
            256,
            n,
        );
        let bits = |t| {
            Tensor::<NdArray, 1>::from_primitive(TensorPrimitive::Float(t))
                .into_data()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        };
        let (h, g) = (bits(host), bits(generic));
        assert_eq!(h.len(), n);
        assert_eq!(h, g);
    }

    /// The block-table dequantizer against the per-element definition `code[nibble] ·
    /// absmax[i / blocksize]` over ranges that start and end inside words and blocks, small
    /// (one task) and large (split over tasks), for a block size that is not a multiple of 8.
    #[test]
    fn dequantize_range_is_code_times_absmax_for_any_range() {
        let n: usize = 150_000;
        let words: Vec<i32> = (0..n.div_ceil(8) as u32)
            .map(|w| w.wrapping_mul(0x9E37_79B9).rotate_left(7) as i32)
            .collect();
        let code: Vec<f32> = (0..16).map(|c| (c as f32 - 7.5) / 7.3).collect();
        for blocksize in [64, 100] {
            let absmax: Vec<f32> = (0..n.div_ceil(blocksize))
                .map(|b| 0.01 + b as f32 * 0.37 % 3.0)
                .collect();
            let want = |i: usize| {
                let nib = ((words[i / 8] as u32) >> (28 - 4 * (i % 8) as u32)) & 0xF;
                code[nib as usize] * absmax[i / blocksize]
            };
            for (start, len) in [(0, n), (3, 13), (61, 70_001), (1000, 0), (n - 5, 5)] {
                let got = super::dequantize_range(&words, &absmax, &code, blocksize, start, len);
                assert_eq!(got.len(), len);
                for (k, g) in got.iter().enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        want(start + k).to_bits(),
                        "element {}",
                        start + k
                    );
                }
            }
        }
    }
}
