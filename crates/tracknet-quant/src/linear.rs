//! `QuantizedLinear`: a frozen linear layer whose weight lives on the device in 4-bit form.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use crate::blockwise::{Absmax, Quantized4, dequantize_4bit, quantize_4bit};
use crate::codebook::{QuantType, codebook, dynamic_map_signed};
use crate::error::QuantError;
use crate::ops::{ComputeDtype, Q4Layout, Q4Weight, QuantBackend};

/// How to quantize one layer (bitsandbytes' `Linear4bit` arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantSpec {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Elements per absmax block (bitsandbytes: 64).
    pub blocksize: usize,
    /// Double quantization of the absmax (`compress_statistics` / `bnb_4bit_use_double_quant`).
    pub double_quant: bool,
    /// Dtype of the matmul.
    pub compute: ComputeDtype,
}

impl Default for QuantSpec {
    fn default() -> Self {
        Self {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: true,
            compute: ComputeDtype::F32,
        }
    }
}

/// The code books, created once per model and shared (cloned tensors share storage) by every
/// layer, so that per-layer storage is only codes and scales.
#[derive(Module, Debug)]
pub struct CodeBooks<B: Backend> {
    /// `[16]` NF4 code book.
    pub nf4: Tensor<B, 1>,
    /// `[16]` FP4 code book.
    pub fp4: Tensor<B, 1>,
    /// `[256]` signed dynamic 8-bit map for double quantization.
    pub dynamic: Tensor<B, 1>,
}

impl<B: Backend> CodeBooks<B> {
    /// Upload the three code books to `device`.
    pub fn new(device: &B::Device) -> Self {
        let t = |v: &[f32]| Tensor::<B, 1>::from_floats(v, device);
        Self {
            nf4: t(&codebook(QuantType::Nf4)),
            fp4: t(&codebook(QuantType::Fp4)),
            dynamic: t(&dynamic_map_signed()),
        }
    }

    /// The 4-bit code book for `quant_type`.
    pub fn code(&self, quant_type: QuantType) -> Tensor<B, 1> {
        match quant_type {
            QuantType::Nf4 => self.nf4.clone(),
            QuantType::Fp4 => self.fp4.clone(),
        }
    }

    /// Bytes the shared code books occupy (counted once per model, not per layer).
    pub fn stored_bytes(&self) -> usize {
        (16 + 16 + 256) * 4
    }
}

/// A frozen linear layer `y = x · dequant(W)ᵀ + b` with `W` stored as 4-bit codes.
///
/// Storage per weight: 4 bits of code, plus 32/blocksize bits of f32 absmax, or with double
/// quantization 8/blocksize bits of 8-bit absmax + 32/(blocksize·256) bits of nested absmax.
#[derive(Module, Debug)]
pub struct QuantizedLinear<B: Backend> {
    /// `[ceil(numel/8)]` int32 words, eight 4-bit codes each, PyTorch `[out, in]` element order.
    pub packed: Tensor<B, 1, Int>,
    /// Plain absmax: `[num_blocks]` f32.
    pub absmax: Option<Tensor<B, 1>>,
    /// Double quant: `[ceil(num_blocks/4)]` int32 words, four 8-bit absmax codes each.
    pub absmax_q: Option<Tensor<B, 1, Int>>,
    /// Double quant: `[ceil(num_blocks/256)]` f32 nested absmax.
    pub nested_absmax: Option<Tensor<B, 1>>,
    /// Double quant: `[1]` f32, the mean of the f32 absmax.
    pub offset: Option<Tensor<B, 1>>,
    /// `[16]` 4-bit code book (shared with every other layer).
    pub code: Tensor<B, 1>,
    /// `[256]` nested 8-bit map (shared), double quant only.
    pub nested_code: Option<Tensor<B, 1>>,
    /// Double quant on a backend that keeps it ([`QuantBackend::q4_cache_absmax`]): the f32
    /// absmax decoded once when the layer is made, so a forward does not decode it again.
    pub absmax_decoded: Option<Tensor<B, 1>>,
    /// `[out]` f32 bias; frozen unless the LoRA bias mode trains it.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Shapes and format.
    #[module(skip)]
    pub layout: Q4Layout,
    /// Format details.
    #[module(skip)]
    pub spec: QuantSpec,
    /// bitsandbytes' nested blocksize (256).
    #[module(skip)]
    pub nested_blocksize: usize,
}

static HALF_NOTICE: AtomicBool = AtomicBool::new(false);

/// Configuration of a fresh 4-bit layer, as bitsandbytes' `Linear4bit` makes one: a weight
/// initialised like `torch.nn.Linear` (U(±1/√d_input)), quantized with the config's code book,
/// block size and double quantization; the bias stays f32. A layer read from a checkpoint is
/// built with [`QuantizedLinear::from_torch_weight`] or [`QuantizedLinear::from_quantized`].
#[derive(Config, Debug)]
pub struct QuantizedLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
    /// NF4 or FP4.
    #[config(default = "QuantType::Nf4")]
    pub quant_type: QuantType,
    /// Elements per absmax block (bitsandbytes: 64).
    #[config(default = 64)]
    pub blocksize: usize,
    /// Double quantization of the absmax.
    #[config(default = true)]
    pub double_quant: bool,
    /// Dtype of the matmul.
    #[config(default = "ComputeDtype::F32")]
    pub compute: ComputeDtype,
}

impl QuantizedLinearConfig {
    /// The quantization settings.
    pub fn spec(&self) -> QuantSpec {
        QuantSpec {
            quant_type: self.quant_type,
            blocksize: self.blocksize,
            double_quant: self.double_quant,
            compute: self.compute,
        }
    }

    /// A layer with code books of its own.
    pub fn init<B: QuantBackend>(
        &self,
        device: &B::Device,
    ) -> Result<QuantizedLinear<B>, QuantError> {
        self.init_with(&CodeBooks::new(device), device)
    }

    /// A layer that shares a model's code books.
    pub fn init_with<B: QuantBackend>(
        &self,
        books: &CodeBooks<B>,
        device: &B::Device,
    ) -> Result<QuantizedLinear<B>, QuantError> {
        let linear = torch_linear(self.d_input, self.d_output, self.bias, device);
        QuantizedLinear::from_linear(&linear, self.spec(), books)
    }
}

/// A Burn `Linear` `d_input → d_output` initialised as `torch.nn.Linear` is (Kaiming-uniform
/// a = √5 for the weight and U(±1/√d_input) for the bias, so both U(±1/√d_input)): the base
/// layer a fresh 4-bit or LoRA layer starts from.
pub fn torch_linear<B: Backend>(
    d_input: usize,
    d_output: usize,
    bias: bool,
    device: &B::Device,
) -> Linear<B> {
    let bound = 1.0 / (d_input.max(1) as f64).sqrt();
    LinearConfig::new(d_input, d_output)
        .with_bias(bias)
        .with_initializer(Initializer::Uniform {
            min: -bound,
            max: bound,
        })
        .init(device)
}

impl<B: QuantBackend> QuantizedLinear<B> {
    /// Quantize a dense Burn `Linear` (weight `[in, out]`). Its bias is kept in f32.
    pub fn from_linear(
        linear: &Linear<B>,
        spec: QuantSpec,
        books: &CodeBooks<B>,
    ) -> Result<Self, QuantError> {
        let w = linear.weight.val();
        let [d_in, d_out] = w.dims();
        // PyTorch order `[out, in]`, so blocks and bytes match bitsandbytes exactly.
        let torch_order: Vec<f32> = host_f32(w.transpose().into_data());
        let bias = linear.bias.as_ref().map(|b| b.val());
        Self::from_torch_weight(&torch_order, d_in, d_out, bias, spec, books)
    }

    /// Quantize a PyTorch-layout weight (`[out, in]` row-major) with an optional `[out]` bias.
    pub fn from_torch_weight(
        weight: &[f32],
        in_features: usize,
        out_features: usize,
        bias: Option<Tensor<B, 1>>,
        spec: QuantSpec,
        books: &CodeBooks<B>,
    ) -> Result<Self, QuantError> {
        if weight.len() != in_features * out_features {
            return Err(QuantError::Shape {
                what: "weight".into(),
                expected: format!(
                    "[{out_features}, {in_features}] = {} elements",
                    in_features * out_features
                ),
                found: format!("{} elements", weight.len()),
            });
        }
        let q = quantize_4bit(weight, spec.quant_type, spec.blocksize, spec.double_quant)?;
        let device = books.nf4.device();
        Self::from_quantized(
            &q,
            in_features,
            out_features,
            bias,
            spec.compute,
            books,
            &device,
        )
    }

    /// Upload an already quantized weight (e.g. bitsandbytes' own output).
    pub fn from_quantized(
        q: &Quantized4,
        in_features: usize,
        out_features: usize,
        bias: Option<Tensor<B, 1>>,
        compute: ComputeDtype,
        books: &CodeBooks<B>,
        device: &B::Device,
    ) -> Result<Self, QuantError> {
        let numel = in_features * out_features;
        if q.numel != numel {
            return Err(QuantError::Shape {
                what: "quantized weight".into(),
                expected: format!("{numel} elements ([{out_features}, {in_features}])"),
                found: format!("{} elements", q.numel),
            });
        }
        if let Some(b) = &bias
            && b.dims() != [out_features]
        {
            return Err(QuantError::Shape {
                what: "bias".into(),
                expected: format!("[{out_features}]"),
                found: format!("{:?}", b.dims()),
            });
        }
        let compute = resolve_compute::<B>(compute, device);
        let layout = Q4Layout {
            in_features,
            out_features,
            blocksize: q.blocksize,
            compute,
        };
        let words = pack_words(&q.packed);
        let packed = int_tensor::<B>(words, device);
        let (absmax, absmax_q, nested_absmax, offset, nested_code, nested_blocksize) =
            match &q.absmax {
                Absmax::Plain(a) => (
                    Some(Tensor::from_floats(a.as_slice(), device)),
                    None,
                    None,
                    None,
                    None,
                    256,
                ),
                Absmax::Double {
                    absmax_u8,
                    nested_absmax,
                    offset,
                    nested_blocksize,
                } => (
                    None,
                    Some(int_tensor::<B>(pack_words(absmax_u8), device)),
                    Some(Tensor::from_floats(nested_absmax.as_slice(), device)),
                    Some(Tensor::from_floats([*offset], device)),
                    Some(books.dynamic.clone()),
                    *nested_blocksize,
                ),
            };
        let spec = QuantSpec {
            quant_type: q.quant_type,
            blocksize: q.blocksize,
            double_quant: offset.is_some(),
            compute,
        };
        let layer = Self {
            packed,
            absmax,
            absmax_q,
            nested_absmax,
            offset,
            code: books.code(q.quant_type),
            nested_code,
            absmax_decoded: None,
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            layout,
            spec,
            nested_blocksize,
        };
        Ok(if B::q4_cache_absmax() && layer.absmax.is_none() {
            Self {
                absmax_decoded: Some(layer.absmax_f32()),
                ..layer
            }
        } else {
            layer
        })
    }

    /// The same layer with its matmul in `compute` (a layer read from a 4-bit snapshot takes
    /// the run's `compute_dtype`, not the one the snapshot was saved with).
    pub fn with_compute(mut self, compute: ComputeDtype) -> Self {
        let compute = resolve_compute::<B>(compute, &self.packed.device());
        self.layout.compute = compute;
        self.spec.compute = compute;
        self
    }

    /// The codes and scales as bitsandbytes stores them (the inverse of
    /// [`Self::from_quantized`]; a host copy).
    pub fn to_quantized(&self) -> Quantized4 {
        let ints = |t: &Tensor<B, 1, Int>| -> Vec<i32> {
            t.clone()
                .into_data()
                .convert::<i32>()
                .into_vec::<i32>()
                .unwrap_or_default()
        };
        let bytes_of = |words: Vec<i32>, n: usize| -> Vec<u8> {
            // Inverse of `pack_words`: big-endian bytes of each word, first byte highest.
            words.iter().flat_map(|w| w.to_be_bytes()).take(n).collect()
        };
        let numel = self.layout.numel();
        let packed = bytes_of(ints(&self.packed), numel.div_ceil(2));
        let nb = self.layout.num_blocks();
        let absmax = match (
            &self.absmax,
            &self.absmax_q,
            &self.nested_absmax,
            &self.offset,
        ) {
            (Some(a), ..) => Absmax::Plain(host_f32(a.clone().into_data())),
            (None, Some(q), Some(nested), Some(offset)) => Absmax::Double {
                absmax_u8: bytes_of(ints(q), nb),
                nested_absmax: host_f32(nested.clone().into_data()),
                offset: host_f32(offset.clone().into_data())
                    .first()
                    .copied()
                    .unwrap_or(0.0),
                nested_blocksize: self.nested_blocksize,
            },
            // Construction guarantees one of the two forms.
            _ => Absmax::Plain(vec![0.0; nb]),
        };
        Quantized4 {
            quant_type: self.spec.quant_type,
            blocksize: self.layout.blocksize,
            numel,
            packed,
            absmax,
        }
    }

    /// `x · Wᵀ + b` with `W` dequantized block by block inside the matmul.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // One op for any rank: no reshape in the autodiff graph (see `QuantBackend::q4_linear`).
        let y = B::q4_linear(x.into_primitive().tensor(), self.q4_weight(), self.layout);
        let y = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(y));
        match &self.bias {
            Some(b) => y + b.val().unsqueeze::<D>(),
            None => y,
        }
    }

    /// The dense weight in Burn layout `[in, out]` (for merging and checks).
    pub fn dequantize(&self) -> Tensor<B, 2> {
        let w = B::q4_dequantize(self.q4_weight(), self.layout);
        Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(w)).transpose()
    }

    /// The f32 absmax per block, undoing double quantization as bitsandbytes does
    /// (`nested_code[q] * nested_absmax + offset`).
    pub fn absmax_f32(&self) -> Tensor<B, 1> {
        if let Some(a) = self.absmax.as_ref().or(self.absmax_decoded.as_ref()) {
            return a.clone();
        }
        let nb = self.layout.num_blocks();
        match (
            &self.absmax_q,
            &self.nested_absmax,
            &self.offset,
            &self.nested_code,
        ) {
            (Some(q), Some(nested), Some(offset), Some(map)) => {
                Tensor::from_primitive(TensorPrimitive::Float(B::q4_decode_absmax(
                    q.clone().into_primitive(),
                    nested.clone().into_primitive().tensor(),
                    offset.clone().into_primitive().tensor(),
                    map.clone().into_primitive().tensor(),
                    self.nested_blocksize,
                    nb,
                )))
            }
            // Construction guarantees one of the two forms; an empty absmax would only be
            // reachable by hand-assembling the struct.
            _ => Tensor::zeros([nb], &self.packed.device()),
        }
    }

    /// The operands of the 4-bit matmul: packed codes, f32 absmax (double quantization undone),
    /// code book.
    pub fn q4_weight(&self) -> Q4Weight<B> {
        Q4Weight {
            packed: self.packed.clone().into_primitive(),
            absmax: self.absmax_f32().into_primitive().tensor(),
            code: self.code.clone().into_primitive().tensor(),
        }
    }
}

impl<B: Backend> QuantizedLinear<B> {
    /// Weights (not counting the bias).
    pub fn num_weights(&self) -> usize {
        self.layout.numel()
    }

    /// Bytes of the tensors this layer holds for its weight: codes and scales (with the decoded
    /// absmax where the backend keeps it). The shared code
    /// books are not counted here (see [`CodeBooks::stored_bytes`]); the bias is separate.
    pub fn stored_weight_bytes(&self) -> usize {
        let words = |t: &Tensor<B, 1, Int>| t.dims()[0] * 4;
        let floats = |t: &Tensor<B, 1>| t.dims()[0] * 4;
        words(&self.packed)
            + self.absmax.as_ref().map_or(0, floats)
            + self.absmax_q.as_ref().map_or(0, words)
            + self.nested_absmax.as_ref().map_or(0, floats)
            + self.offset.as_ref().map_or(0, floats)
            + self.absmax_decoded.as_ref().map_or(0, floats)
    }

    /// Bytes of the f32 bias.
    pub fn bias_bytes(&self) -> usize {
        self.bias.as_ref().map_or(0, |b| b.dims()[0] * 4)
    }

    /// Bits of storage per weight.
    pub fn bits_per_weight(&self) -> f64 {
        self.stored_weight_bytes() as f64 * 8.0 / self.num_weights() as f64
    }
}

/// `compute` where the backend has 4-bit matmuls in that dtype on `device`, else f32 (said
/// once).
fn resolve_compute<B: QuantBackend>(compute: ComputeDtype, device: &B::Device) -> ComputeDtype {
    match compute.dtype() {
        Some(dtype) if !B::q4_supports(device, dtype) => {
            if !HALF_NOTICE.swap(true, Ordering::Relaxed) {
                let key = match compute {
                    ComputeDtype::F16 => "float16",
                    _ => "bfloat16",
                };
                tracing::warn!(
                    "quantization.compute_dtype {key}: the {} backend has no {key} arithmetic, \
                     so the 4-bit matmuls run in f32",
                    crate::autocast::backend_name::<B>(device)
                );
            }
            ComputeDtype::F32
        }
        _ => compute,
    }
}

/// Reference host round trip used by tests: quantize then dequantize with the host code.
pub fn host_roundtrip(weight: &[f32], spec: QuantSpec) -> Result<Vec<f32>, QuantError> {
    Ok(dequantize_4bit(&quantize_4bit(
        weight,
        spec.quant_type,
        spec.blocksize,
        spec.double_quant,
    )?))
}

/// Bytes → big-endian int32 words (zero padded), so code `i` of the stream sits in bits
/// `28 - 4(i mod 8)` of word `i / 8` (or `24 - 8(i mod 4)` for bytes).
pub fn pack_words(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_be_bytes(b) as i32
        })
        .collect()
}

fn int_tensor<B: Backend>(words: Vec<i32>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = words.len();
    Tensor::<B, 1, Int>::from_data(
        TensorData::new(words, [n]),
        (device, burn::tensor::DType::I32),
    )
}

fn host_f32(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32")
}
