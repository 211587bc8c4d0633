//! Byte-for-byte parity with bitsandbytes' `quantize_4bit` / `dequantize_4bit`.
//!
//! Every case listed in `bnb/cases.json` of the fixture root (`TRACKNET_FIXTURES`, else the
//! repository's `tests/fixtures`) is quantized here and compared with what bitsandbytes wrote.
//! A missing file or tensor fails the test with its path.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use tracknet_quant::codebook::{codebook, dynamic_map_signed};
use tracknet_quant::{Absmax, QuantType, dequantize_4bit, quantize_4bit};
use tracknet_testkit::{fixtures, read};

/// One entry of `cases.json`.
pub(crate) struct Case {
    pub name: String,
    pub quant_type: QuantType,
    pub double_quant: bool,
    pub blocksize: usize,
    pub shape: Vec<usize>,
    pub nested_blocksize: Option<usize>,
    pub file: PathBuf,
}

pub(crate) fn load_cases() -> Vec<Case> {
    let dir = fixtures().join("bnb");
    let path = dir.join("cases.json");
    let json: Value = serde_json::from_slice(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let cases = json["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: `cases` is not an array", path.display()));
    cases
        .iter()
        .map(|c| {
            let field = |key: &str| {
                c.get(key)
                    .unwrap_or_else(|| panic!("{}: case {c} lacks `{key}`", path.display()))
            };
            let name = field("name").as_str().expect("name is a string").to_owned();
            let file = c
                .get("file")
                .and_then(Value::as_str)
                .map_or_else(|| format!("{name}.safetensors"), str::to_owned);
            Case {
                quant_type: field("quant_type")
                    .as_str()
                    .expect("quant_type is a string")
                    .parse()
                    .expect("quant_type is nf4 or fp4"),
                double_quant: field("double_quant")
                    .as_bool()
                    .expect("double_quant is a bool"),
                blocksize: field("blocksize")
                    .as_u64()
                    .expect("blocksize is an integer") as usize,
                shape: field("shape")
                    .as_array()
                    .expect("shape is an array")
                    .iter()
                    .map(|d| d.as_u64().expect("shape entries are integers") as usize)
                    .collect(),
                nested_blocksize: c
                    .get("nested_blocksize")
                    .map(|v| v.as_u64().expect("nested_blocksize is an integer") as usize),
                file: dir.join(file),
                name,
            }
        })
        .collect()
}

pub(crate) struct Tensors<'a> {
    pub st: SafeTensors<'a>,
    pub path: &'a Path,
}

impl Tensors<'_> {
    fn raw(&self, name: &str, dtype: Dtype) -> (Vec<usize>, &[u8]) {
        let view = self
            .st
            .tensor(name)
            .unwrap_or_else(|e| panic!("{}: tensor `{name}` missing: {e}", self.path.display()));
        assert_eq!(
            view.dtype(),
            dtype,
            "{}: dtype of `{name}`",
            self.path.display()
        );
        (view.shape().to_vec(), view.data())
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, data) = self.raw(name, Dtype::F32);
        let values = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (shape, values)
    }

    pub fn u8(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let (shape, data) = self.raw(name, Dtype::U8);
        (shape, data.to_vec())
    }
}

pub(crate) fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Index and values of the first difference, for a readable failure.
pub(crate) fn first_diff<T: PartialEq + Copy + std::fmt::Debug>(a: &[T], b: &[T]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at {i}: ours {:?}, bnb {:?}", a[i], b[i]),
        None => format!("lengths differ: ours {}, bnb {}", a.len(), b.len()),
    }
}

#[test]
fn bnb_quantize_4bit_matches_every_fixture_case() {
    let cases = load_cases();
    assert!(!cases.is_empty(), "bnb/cases.json lists no cases");
    for case in &cases {
        let bytes = read(&case.file);
        let st = SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: not safetensors: {e}", case.file.display()));
        let t = Tensors {
            st,
            path: &case.file,
        };
        let name = &case.name;

        let (wshape, weight) = t.f32("weight");
        assert_eq!(wshape, case.shape, "{name}: weight shape vs cases.json");
        let numel: usize = case.shape.iter().product();
        assert_eq!(weight.len(), numel, "{name}: weight length");

        let (_, code) = t.f32("code");
        assert_eq!(
            bits(&code),
            bits(&codebook(case.quant_type)),
            "{name}: 4-bit code book"
        );

        let q = quantize_4bit(&weight, case.quant_type, case.blocksize, case.double_quant)
            .unwrap_or_else(|e| panic!("{name}: quantize_4bit failed: {e}"));
        assert_eq!(q.numel, numel);
        assert_eq!(q.validate(), Ok(()), "{name}");

        let (_, packed) = t.u8("packed");
        assert!(
            q.packed == packed,
            "{name}: packed bytes differ ({})",
            first_diff(&q.packed, &packed)
        );

        match (&q.absmax, case.double_quant) {
            (Absmax::Plain(ours), false) => {
                let (_, absmax) = t.f32("absmax");
                assert!(
                    bits(ours) == bits(&absmax),
                    "{name}: absmax differs ({})",
                    first_diff(ours, &absmax)
                );
            }
            (
                Absmax::Double {
                    absmax_u8,
                    nested_absmax,
                    offset,
                    nested_blocksize,
                },
                true,
            ) => {
                let expected_nb = case
                    .nested_blocksize
                    .unwrap_or_else(|| panic!("{name}: dq case without nested_blocksize"));
                assert_eq!(*nested_blocksize, expected_nb, "{name}: nested blocksize");
                let (_, nested_code) = t.f32("nested_code");
                assert_eq!(
                    bits(&nested_code),
                    bits(&dynamic_map_signed()),
                    "{name}: nested code (signed dynamic map): {}",
                    first_diff(&nested_code, &dynamic_map_signed())
                );
                let (_, fix_offset) = t.f32("offset");
                assert_eq!(fix_offset.len(), 1, "{name}: offset has one value");
                assert_eq!(offset.to_bits(), fix_offset[0].to_bits(), "{name}: offset");
                let (_, fix_u8) = t.u8("absmax_u8");
                assert!(
                    *absmax_u8 == fix_u8,
                    "{name}: absmax_u8 differs ({})",
                    first_diff(absmax_u8, &fix_u8)
                );
                let (_, fix_nested) = t.f32("nested_absmax");
                assert!(
                    bits(nested_absmax) == bits(&fix_nested),
                    "{name}: nested_absmax differs ({})",
                    first_diff(nested_absmax, &fix_nested)
                );
            }
            (other, dq) => panic!("{name}: double_quant={dq} but absmax is {other:?}"),
        }

        let (dshape, expected) = t.f32("dequantized");
        assert_eq!(dshape, case.shape, "{name}: dequantized shape");
        let ours = dequantize_4bit(&q);
        assert_eq!(ours.len(), expected.len(), "{name}: dequantized length");
        let (worst, max_err) = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .enumerate()
            .fold(
                (0, 0.0f32),
                |acc, (i, e)| if e > acc.1 { (i, e) } else { acc },
            );
        let identical = bits(&ours) == bits(&expected);
        println!(
            "bnb case {name}: {numel} elements, max |dequant - bnb| = {max_err:e} \
             (at {worst}), bit-identical: {identical}, stored bytes {}",
            q.stored_bytes()
        );
        assert!(
            max_err <= 1e-6,
            "{name}: dequantized differs by {max_err} at {worst}"
        );
    }
}

#[test]
fn bnb_missing_fixture_file_names_its_path() {
    let missing = fixtures().join("bnb").join("no_such_case.safetensors");
    let result = std::panic::catch_unwind(|| read(&missing));
    let message = match result {
        Ok(_) => panic!("reading {} unexpectedly succeeded", missing.display()),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(
        message.contains("no_such_case.safetensors"),
        "panic message lacks the path: {message}"
    );
}

/// `torch.sum` / `torch.mean` of f32 vectors of many lengths, bit for bit. The data
/// (`tests/data/torch_sums.safetensors`: `x<n>` input, `s<n>` its sum, `m<n>` its mean) was
/// made with torch 2.15 on the CPU; the same bits came out under `ATEN_CPU_CAPABILITY`
/// `default`, `avx2` and `avx512`. Double quantization's offset is this mean.
#[test]
fn torch_f32_sum_and_mean_order_is_atens() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/torch_sums.safetensors"
    ));
    let bytes = read(path);
    let t = Tensors {
        st: SafeTensors::deserialize(&bytes).expect("torch_sums is safetensors"),
        path,
    };
    let mut lengths: Vec<usize> =
        t.st.names()
            .iter()
            .filter_map(|k| k.strip_prefix('x')?.parse().ok())
            .collect();
    lengths.sort_unstable();
    assert!(lengths.len() > 100, "{lengths:?}");
    let mut f64_rounded_wrong = 0;
    for n in lengths {
        let (_, x) = t.f32(&format!("x{n}"));
        let (_, sum) = t.f32(&format!("s{n}"));
        let (_, mean) = t.f32(&format!("m{n}"));
        assert_eq!(x.len(), n);
        let ours = tracknet_quant::aten_sum_f32(&x);
        assert_eq!(
            ours.to_bits(),
            sum[0].to_bits(),
            "sum of {n}: {ours} vs {}",
            sum[0]
        );
        let m = tracknet_quant::torch_mean_f32(&x);
        assert_eq!(
            m.to_bits(),
            mean[0].to_bits(),
            "mean of {n}: {m} vs {}",
            mean[0]
        );
        let rounded = x.iter().map(|&v| f64::from(v)).sum::<f64>() as f32;
        f64_rounded_wrong += usize::from(rounded.to_bits() != sum[0].to_bits());
    }
    // The correctly rounded sum is not torch's: the order matters.
    assert!(f64_rounded_wrong > 0);
}
