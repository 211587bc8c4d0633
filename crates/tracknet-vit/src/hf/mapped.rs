//! A safetensors file memory-mapped (memmap2, as candle does): the header is parsed and checked
//! up front, and a tensor's bytes are copied out of the page cache only when asked for, so a
//! snapshot never sits in RAM twice and a shape mismatch is found before any allocation.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tracknet_quant::bnb::StoredTensor;

use crate::error::VitError;

/// One tensor's header entry: element type, shape and where its bytes are in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Element type as stored.
    pub dtype: Dtype,
    /// Shape (row-major, PyTorch layout).
    pub shape: Vec<usize>,
    bytes: Range<usize>,
}

/// A mapped safetensors file with its validated header.
pub struct MappedSafetensors {
    path: PathBuf,
    map: Mmap,
    entries: BTreeMap<String, TensorEntry>,
}

impl std::fmt::Debug for MappedSafetensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedSafetensors")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

impl MappedSafetensors {
    /// Maps `path` and parses its header (offsets, dtypes and sizes are checked by
    /// `SafeTensors::deserialize`); a truncated or malformed file is an error naming it.
    pub fn open(path: &Path) -> Result<Self, VitError> {
        let io = |source| VitError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process. Another process truncating
        // or rewriting a snapshot while we read it is outside what any safetensors reader can
        // guard against (the same contract as candle's and safetensors' own mmap loaders).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let entries = {
            let parsed = SafeTensors::deserialize(&map).map_err(|e| VitError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            let base = map.as_ptr() as usize;
            parsed
                .tensors()
                .into_iter()
                .map(|(key, view)| {
                    let start = view.data().as_ptr() as usize - base;
                    let entry = TensorEntry {
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        bytes: start..start + view.data().len(),
                    };
                    (key, entry)
                })
                .collect()
        };
        Ok(Self {
            path: path.to_path_buf(),
            map,
            entries,
        })
    }

    /// The file this maps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's header entry, by name.
    pub fn entries(&self) -> &BTreeMap<String, TensorEntry> {
        &self.entries
    }

    /// The bytes of `key` as stored (borrowed from the map).
    pub fn bytes(&self, key: &str) -> Option<&[u8]> {
        let e = self.entries.get(key)?;
        self.map.get(e.bytes.clone())
    }

    /// A copy of `key` as stored (dtype, shape, bytes).
    pub fn stored(&self, key: &str) -> Option<StoredTensor> {
        let e = self.entries.get(key)?;
        Some(StoredTensor {
            dtype: e.dtype,
            shape: e.shape.clone(),
            data: self.bytes(key)?.to_vec(),
        })
    }
}
