//! Errors of the quantization crate.
//!
//! One public enum for the whole crate so that callers match on a single type; every variant
//! names the offending value (index, block size, field) and what was expected.

use thiserror::Error;

/// Everything that can go wrong while quantizing, dequantizing or checking quantized data.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The 4-bit block size is not one bitsandbytes accepts.
    #[error("invalid 4-bit blocksize {blocksize}: expected a power of two in 32..=4096")]
    InvalidBlocksize {
        /// The rejected block size.
        blocksize: usize,
    },

    /// The block size of the 8-bit (nested) blockwise quantization is zero.
    #[error("invalid 8-bit blocksize {blocksize}: expected a block size of at least 1")]
    InvalidBlocksize8bit {
        /// The rejected block size.
        blocksize: usize,
    },

    /// An input value is NaN or infinite; absmax scaling cannot represent it.
    #[error("non-finite value {value} at flat index {index} of the {what}: expected finite values")]
    NonFinite {
        /// What was being quantized (for example "weight" or "8-bit input").
        what: &'static str,
        /// Index into the flattened input.
        index: usize,
        /// The offending value.
        value: f32,
    },

    /// Nothing to quantize: bitsandbytes' absmax mean (double quantization) is undefined for it.
    #[error("cannot quantize an empty {what}: expected at least one element")]
    EmptyInput {
        /// What was being quantized.
        what: &'static str,
    },

    /// A quant type name that is neither `nf4` nor `fp4`.
    #[error("unknown 4-bit quant type {name:?}: expected \"nf4\" or \"fp4\"")]
    UnknownQuantType {
        /// The name as given.
        name: String,
    },

    /// An 8-bit code book that is not sorted ascending (the nearest-code search needs it).
    #[error(
        "8-bit code book is not sorted ascending at index {index} ({prev} > {next}): \
         expected a sorted code book"
    )]
    UnsortedCode {
        /// Index of the first entry that is smaller than its predecessor.
        index: usize,
        /// The predecessor's value.
        prev: f32,
        /// The entry's value.
        next: f32,
    },

    /// A buffer of quantized data has the wrong length for the element count it claims.
    #[error("{what} has {actual} entries, expected {expected}")]
    LengthMismatch {
        /// Which buffer (for example "packed" or "absmax").
        what: &'static str,
        /// Length implied by `numel` and the block sizes.
        expected: usize,
        /// Length found.
        actual: usize,
    },

    /// A bitsandbytes-serialized tensor (or `quantization_config` entry) that does not fit
    /// bitsandbytes' 4-bit format.
    #[error("{key}: {message}")]
    Serialized {
        /// The tensor or config key.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },

    /// A tensor handed to the quantized layer has the wrong shape (added by the layer code).
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        /// Which tensor.
        what: String,
        /// The expected shape.
        expected: String,
        /// The shape found.
        found: String,
    },
}
