//! bitsandbytes' 4-bit serialization: the tensors a `Linear4bit` state dict holds and that
//! transformers saves in a 4-bit snapshot, and the `quantization_config` of its `config.json`.
//!
//! One 4-bit layer `<p>` is stored as (bitsandbytes 0.50, `QuantState.as_dict(packed=True)`):
//! - `<p>.weight` u8 `[ceil(numel/2), 1]`: two codes per byte, the first in the high nibble;
//! - `<p>.weight.absmax`: f32 (bf16 as transformers 5 saves some) per block, or u8 codes when
//!   double quantized, then also `<p>.weight.nested_absmax` f32 and
//!   `<p>.weight.nested_quant_map` f32 `[256]`;
//! - `<p>.weight.quant_map` f32 `[16]`: the 4-bit code book;
//! - `<p>.weight.quant_state.bitsandbytes__nf4|fp4`: u8 bytes of a JSON object with the
//!   original `shape`, `dtype`, `blocksize`, and with double quantization `nested_blocksize`,
//!   `nested_dtype`, `nested_offset`.
//!
//! Reading keeps the codes as stored (no dequantize / re-quantize round trip); the code books
//! must be bitsandbytes' own, so a file with a custom map is refused rather than misread.

use std::collections::{BTreeMap, HashMap};

use safetensors::Dtype;
use serde_json::{Value, json};

use crate::blockwise::{Absmax, Quantized4};
use crate::codebook::{QuantType, codebook, dynamic_map_signed};
use crate::error::QuantError;

/// The suffix (after `<p>.weight.`) of the quant-state entry, without the type.
pub const QUANT_STATE: &str = "quant_state.bitsandbytes__";

/// One tensor as stored in a safetensors file: dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Raw little-endian bytes.
    pub data: Vec<u8>,
}

impl StoredTensor {
    /// An f32 tensor.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A u8 tensor.
    pub fn from_u8(shape: Vec<usize>, data: Vec<u8>) -> Self {
        Self {
            dtype: Dtype::U8,
            shape,
            data,
        }
    }

    /// Number of elements the shape describes.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (exact for F32, F16, BF16; rounded for F64); `None` for other dtypes.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let b = &self.data;
        Some(match self.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F64 => b
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            _ => return None,
        })
    }
}

/// Tensors of any dtype as safetensors bytes, with `meta` as metadata.
///
/// The bytes are a function of the contents alone: the safetensors crate writes the
/// `__metadata__` map in `HashMap` order, which differs between runs, so the JSON header is
/// rewritten with every key sorted (same tensors, same offsets).
pub fn safetensors_bytes(
    tensors: &BTreeMap<String, StoredTensor>,
    meta: HashMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let views = tensors
        .iter()
        .map(|(k, t)| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (k.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let raw = safetensors::serialize(views, &Some(meta))?;
    Ok(sorted_header(raw))
}

/// `raw` with its JSON header re-serialised with sorted keys (padded with spaces to a multiple
/// of 8 bytes, as safetensors pads); returned unchanged if the header does not parse.
fn sorted_header(raw: Vec<u8>) -> Vec<u8> {
    fn sort(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<String, Value> =
                    m.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::to_value(sorted).unwrap_or(Value::Null)
            }
            other => other,
        }
    }
    let Some(len) = raw
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| u64::from_le_bytes(b) as usize)
    else {
        return raw;
    };
    let Some(header) = raw.get(8..8 + len) else {
        return raw;
    };
    let Ok(value) = serde_json::from_slice::<Value>(header) else {
        return raw;
    };
    // A BTreeMap serialises in key order whatever serde_json's map type is.
    let sorted: BTreeMap<String, Value> = match sort(value) {
        Value::Object(m) => m.into_iter().collect(),
        _ => return raw,
    };
    let Ok(mut json) = serde_json::to_vec(&sorted) else {
        return raw;
    };
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len() + raw.len() - 8 - len);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&raw[8 + len..]);
    out
}

/// A 4-bit layer read from a bitsandbytes serialization.
#[derive(Debug, Clone, PartialEq)]
pub struct BnbLayer {
    /// Codes and scales, exactly as stored.
    pub quantized: Quantized4,
    /// The original weight's shape (PyTorch layout, `[out, in]` for a linear).
    pub shape: Vec<usize>,
    /// The original weight's dtype name (`float32`, `bfloat16`, …).
    pub dtype: String,
}

/// The quant-state key of `weight_key` when `tensors` holds it as a bitsandbytes 4-bit weight.
pub fn quant_state_key(
    tensors: &BTreeMap<String, StoredTensor>,
    weight_key: &str,
) -> Option<String> {
    [QuantType::Nf4, QuantType::Fp4]
        .iter()
        .map(|t| format!("{weight_key}.{QUANT_STATE}{}", t.as_str()))
        .find(|k| tensors.contains_key(k))
}

/// Takes the tensors of the 4-bit layer `weight_key` (`<p>.weight`) out of `tensors`.
/// `Ok(None)` when `weight_key` is not stored in 4 bits; an error names the first tensor that
/// does not fit bitsandbytes' format.
pub fn take_layer(
    tensors: &mut BTreeMap<String, StoredTensor>,
    weight_key: &str,
) -> Result<Option<BnbLayer>, QuantError> {
    let Some(state_key) = quant_state_key(tensors, weight_key) else {
        return Ok(None);
    };
    let bad = |key: &str, message: String| QuantError::Serialized {
        key: key.to_string(),
        message,
    };
    let mut take = |suffix: &str| {
        let key = if suffix.is_empty() {
            weight_key.to_string()
        } else {
            format!("{weight_key}.{suffix}")
        };
        tensors
            .remove(&key)
            .map(|t| (key.clone(), t))
            .ok_or_else(|| {
                bad(
                    &key,
                    "missing (the layer has a bitsandbytes quant state)".into(),
                )
            })
    };
    let (_, state) = take(
        state_key
            .strip_prefix(&format!("{weight_key}."))
            .unwrap_or(""),
    )?;
    let state: Value = serde_json::from_slice(&state.data).map_err(|e| {
        bad(
            &state_key,
            format!("expected the JSON bytes of a quant state: {e}"),
        )
    })?;
    let field = |name: &str| {
        state
            .get(name)
            .ok_or_else(|| bad(&state_key, format!("no `{name}` in the quant state")))
    };
    let quant_type: QuantType = field("quant_type")?
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e: QuantError| bad(&state_key, e.to_string()))?;
    if !state_key.ends_with(quant_type.as_str()) {
        return Err(bad(
            &state_key,
            format!("the key names another quant type than its `quant_type` {quant_type}"),
        ));
    }
    let usize_field = |name: &str| {
        field(name)?.as_u64().map(|v| v as usize).ok_or_else(|| {
            bad(
                &state_key,
                format!("`{name}` is not a non-negative integer"),
            )
        })
    };
    let blocksize = usize_field("blocksize")?;
    let shape: Vec<usize> = field("shape")?
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_u64().map(|u| u as usize)).collect())
        .ok_or_else(|| bad(&state_key, "`shape` is not a list of sizes".into()))?;
    let dtype = field("dtype")?.as_str().unwrap_or("float32").to_string();
    let numel: usize = shape.iter().product();

    let (weight_name, weight) = take("")?;
    if weight.dtype != Dtype::U8 {
        return Err(bad(
            &weight_name,
            format!(
                "dtype {:?}: only bnb_4bit_quant_storage uint8 is supported",
                weight.dtype
            ),
        ));
    }
    if weight.data.len() != numel.div_ceil(2) {
        return Err(bad(
            &weight_name,
            format!(
                "{} bytes of codes, expected {} for shape {shape:?}",
                weight.data.len(),
                numel.div_ceil(2)
            ),
        ));
    }
    let (map_name, map) = take("quant_map")?;
    let map_values = map.to_f32().unwrap_or_default();
    if map_values != codebook(quant_type) {
        return Err(bad(
            &map_name,
            format!(
                "is not bitsandbytes' {quant_type} code book; custom code books are not supported"
            ),
        ));
    }
    let (absmax_name, absmax) = take("absmax")?;
    let absmax = if absmax.dtype == Dtype::U8 {
        let (nested_name, nested) = take("nested_absmax")?;
        let nested = nested.to_f32().ok_or_else(|| {
            bad(
                &nested_name,
                format!("dtype {:?}, expected f32", nested.dtype),
            )
        })?;
        let (nmap_name, nmap) = take("nested_quant_map")?;
        if nmap.to_f32().unwrap_or_default() != dynamic_map_signed() {
            return Err(bad(
                &nmap_name,
                "is not bitsandbytes' signed dynamic 8-bit map; custom maps are not supported"
                    .into(),
            ));
        }
        let offset = field("nested_offset")?
            .as_f64()
            .ok_or_else(|| bad(&state_key, "`nested_offset` is not a number".into()))?;
        Absmax::Double {
            absmax_u8: absmax.data,
            nested_absmax: nested,
            // Python writes the f32 offset as a double; the conversion back is exact.
            offset: offset as f32,
            nested_blocksize: usize_field("nested_blocksize")?,
        }
    } else {
        Absmax::Plain(absmax.to_f32().ok_or_else(|| {
            bad(
                &absmax_name,
                format!("dtype {:?}, expected a float type or u8", absmax.dtype),
            )
        })?)
    };
    let quantized = Quantized4 {
        quant_type,
        blocksize,
        numel,
        packed: weight.data,
        absmax,
    };
    quantized
        .validate()
        .map_err(|e| bad(weight_key, e.to_string()))?;
    Ok(Some(BnbLayer {
        quantized,
        shape,
        dtype,
    }))
}

/// The tensors bitsandbytes stores for the 4-bit weight `weight_key` of original `shape`
/// (f32): what [`take_layer`] reads back and transformers loads.
pub fn layer_tensors(
    weight_key: &str,
    q: &Quantized4,
    shape: &[usize],
) -> Vec<(String, StoredTensor)> {
    let key = |suffix: &str| format!("{weight_key}.{suffix}");
    let shape_json = shape
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = vec![
        (
            weight_key.to_string(),
            StoredTensor::from_u8(vec![q.packed.len(), 1], q.packed.clone()),
        ),
        (
            key("quant_map"),
            StoredTensor::from_f32(vec![16], &codebook(q.quant_type)),
        ),
    ];
    // The quant state's JSON as Python's `json.dumps` writes it.
    let state = match &q.absmax {
        Absmax::Plain(a) => {
            out.push((key("absmax"), StoredTensor::from_f32(vec![a.len()], a)));
            format!(
                "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"float32\", \"shape\": [{shape_json}]}}",
                q.quant_type, q.blocksize
            )
        }
        Absmax::Double {
            absmax_u8,
            nested_absmax,
            offset,
            nested_blocksize,
        } => {
            out.push((
                key("absmax"),
                StoredTensor::from_u8(vec![absmax_u8.len()], absmax_u8.clone()),
            ));
            out.push((
                key("nested_absmax"),
                StoredTensor::from_f32(vec![nested_absmax.len()], nested_absmax),
            ));
            out.push((
                key("nested_quant_map"),
                StoredTensor::from_f32(vec![256], &dynamic_map_signed()),
            ));
            format!(
                "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"float32\", \"shape\": [{shape_json}], \
                 \"nested_blocksize\": {nested_blocksize}, \"nested_dtype\": \"float32\", \"nested_offset\": {}}}",
                q.quant_type,
                q.blocksize,
                python_float(f64::from(*offset))
            )
        }
    };
    let state = state.into_bytes();
    out.push((
        key(&format!("{QUANT_STATE}{}", q.quant_type)),
        StoredTensor::from_u8(vec![state.len()], state),
    ));
    out
}

/// `repr(float)` of Python for a finite double (shortest round-trip digits, always a `.` or an
/// exponent).
fn python_float(v: f64) -> String {
    let s = serde_json::to_string(&v).unwrap_or_else(|_| "0.0".into());
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// The `quantization_config` of a transformers 4-bit snapshot (`quant_method: bitsandbytes`).
#[derive(Debug, Clone, PartialEq)]
pub struct BnbConfig {
    /// `bnb_4bit_quant_type`.
    pub quant_type: QuantType,
    /// `bnb_4bit_use_double_quant`.
    pub double_quant: bool,
    /// `bnb_4bit_compute_dtype` (`float32`, `bfloat16`, `float16`).
    pub compute_dtype: String,
    /// `llm_int8_skip_modules`: modules kept in full precision.
    pub skip_modules: Vec<String>,
}

impl BnbConfig {
    /// Reads `config["quantization_config"]`: `Ok(None)` when there is none; an error for a
    /// quantization this crate cannot load (8-bit, another method, non-u8 storage), naming the key.
    pub fn from_model_config(config: &Value) -> Result<Option<Self>, QuantError> {
        let Some(q) = config.get("quantization_config") else {
            return Ok(None);
        };
        let bad = |key: &str, message: String| QuantError::Serialized {
            key: format!("quantization_config.{key}"),
            message,
        };
        let text = |key: &str| q.get(key).and_then(Value::as_str);
        let flag = |key: &str| q.get(key).and_then(Value::as_bool).unwrap_or(false);
        match text("quant_method") {
            Some("bitsandbytes") => {}
            other => {
                return Err(bad(
                    "quant_method",
                    format!("{other:?}: only bitsandbytes 4-bit snapshots can be read"),
                ));
            }
        }
        if flag("load_in_8bit") || flag("_load_in_8bit") {
            return Err(bad(
                "load_in_8bit",
                "8-bit (LLM.int8) snapshots are not supported; save the model in 4 bits".into(),
            ));
        }
        if !(flag("load_in_4bit") || flag("_load_in_4bit")) {
            return Err(bad("load_in_4bit", "expected true".into()));
        }
        if let Some(storage) = text("bnb_4bit_quant_storage")
            && storage != "uint8"
        {
            return Err(bad(
                "bnb_4bit_quant_storage",
                format!("`{storage}`: only uint8 storage is supported"),
            ));
        }
        let quant_type = text("bnb_4bit_quant_type")
            .unwrap_or("fp4")
            .parse()
            .map_err(|e: QuantError| bad("bnb_4bit_quant_type", e.to_string()))?;
        let skip_modules = match q.get("llm_int8_skip_modules") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(String::from).ok_or_else(|| {
                        bad("llm_int8_skip_modules", "expected a list of names".into())
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(bad(
                    "llm_int8_skip_modules",
                    "expected a list of names".into(),
                ));
            }
        };
        Ok(Some(Self {
            quant_type,
            double_quant: flag("bnb_4bit_use_double_quant"),
            compute_dtype: text("bnb_4bit_compute_dtype")
                .unwrap_or("float32")
                .to_string(),
            skip_modules,
        }))
    }

    /// The `quantization_config` object transformers 5 writes for this configuration.
    pub fn to_json(&self) -> Value {
        json!({
            "_load_in_4bit": true,
            "_load_in_8bit": false,
            "bnb_4bit_compute_dtype": self.compute_dtype,
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": self.quant_type.as_str(),
            "bnb_4bit_use_double_quant": self.double_quant,
            "llm_int8_enable_fp32_cpu_offload": false,
            "llm_int8_has_fp16_weight": false,
            "llm_int8_skip_modules": if self.skip_modules.is_empty() {
                Value::Null
            } else {
                json!(self.skip_modules)
            },
            "llm_int8_threshold": 6.0,
            "load_in_4bit": true,
            "load_in_8bit": false,
            "quant_method": "bitsandbytes",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockwise::quantize_4bit;

    fn layer(double: bool) -> (Quantized4, BTreeMap<String, StoredTensor>) {
        let w: Vec<f32> = (0..96 * 8)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 70.0)
            .collect();
        let q = quantize_4bit(&w, QuantType::Nf4, 64, double).unwrap();
        let map = layer_tensors("l.weight", &q, &[8, 96])
            .into_iter()
            .collect();
        (q, map)
    }

    #[test]
    fn written_layers_read_back_identically_and_consume_their_tensors() {
        for double in [false, true] {
            let (q, mut map) = layer(double);
            map.insert("l.bias".into(), StoredTensor::from_f32(vec![8], &[0.0; 8]));
            let back = take_layer(&mut map, "l.weight").unwrap().unwrap();
            assert_eq!(back.quantized, q);
            assert_eq!(back.shape, vec![8, 96]);
            assert_eq!(map.keys().collect::<Vec<_>>(), vec!["l.bias"]);
            assert!(take_layer(&mut map, "l.bias").unwrap().is_none());
        }
    }

    #[test]
    fn a_foreign_code_book_or_a_short_code_buffer_is_refused_by_key() {
        let (_, mut map) = layer(true);
        map.insert(
            "l.weight.quant_map".into(),
            StoredTensor::from_f32(vec![16], &[0.5; 16]),
        );
        let err = take_layer(&mut map, "l.weight").unwrap_err().to_string();
        assert!(
            err.contains("l.weight.quant_map") && err.contains("code book"),
            "{err}"
        );

        let (_, mut map) = layer(false);
        map.get_mut("l.weight").unwrap().data.pop();
        let err = take_layer(&mut map, "l.weight").unwrap_err().to_string();
        assert!(
            err.contains("l.weight:") && err.contains("expected 384"),
            "{err}"
        );

        let (_, mut map) = layer(true);
        map.remove("l.weight.nested_absmax");
        let err = take_layer(&mut map, "l.weight").unwrap_err().to_string();
        assert!(
            err.contains("l.weight.nested_absmax") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn the_quant_state_json_is_what_python_writes() {
        let (q, map) = layer(true);
        let Absmax::Double { offset, .. } = q.absmax else {
            unreachable!()
        };
        let text =
            String::from_utf8(map["l.weight.quant_state.bitsandbytes__nf4"].data.clone()).unwrap();
        assert!(text.starts_with(
            "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [8, 96], \"nested_blocksize\": 256"
        ), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["nested_offset"].as_f64().unwrap() as f32, offset);
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(0.0514068603515625), "0.0514068603515625");
    }

    #[test]
    fn quantization_configs_other_than_4bit_bitsandbytes_are_refused_by_key() {
        let cfg = |q: Value| json!({ "quantization_config": q });
        let ok = BnbConfig {
            quant_type: QuantType::Fp4,
            double_quant: true,
            compute_dtype: "bfloat16".into(),
            skip_modules: vec!["head".into()],
        };
        assert_eq!(
            BnbConfig::from_model_config(&cfg(ok.to_json())).unwrap(),
            Some(ok)
        );
        assert_eq!(BnbConfig::from_model_config(&json!({})).unwrap(), None);
        let err = BnbConfig::from_model_config(&cfg(
            json!({"quant_method": "bitsandbytes", "load_in_8bit": true}),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("quantization_config.load_in_8bit"), "{err}");
        let err = BnbConfig::from_model_config(&cfg(json!({"quant_method": "gptq"})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("quantization_config.quant_method"), "{err}");
    }
}
