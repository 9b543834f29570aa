//! Reading and writing `.safetensors` files: named values plus string metadata.
//! Writes are atomic (a temporary file in the same directory, then a rename), so a
//! crash never leaves a half-written file under the final name.

use jit_core::{DType, Error, HostBuffer, Result, Var};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

fn to_st(d: DType) -> Dtype {
    match d {
        DType::Bool => Dtype::BOOL,
        DType::U8 => Dtype::U8,
        DType::I32 => Dtype::I32,
        DType::I64 => Dtype::I64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    }
}

fn from_st(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::BOOL => DType::Bool,
        Dtype::U8 => DType::U8,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        _ => return None,
    })
}

struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    data: HostBuffer,
}

impl View for &Entry {
    fn dtype(&self) -> Dtype {
        to_st(self.dtype)
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data.as_bytes())
    }
    fn data_len(&self) -> usize {
        self.data.size_in_bytes()
    }
}

/// Computes `tensors` and writes them with `metadata` to `path` atomically.
pub fn save(path: impl AsRef<Path>, tensors: &[(String, Var)], metadata: HashMap<String, String>) -> Result<()> {
    let path = path.as_ref();
    jit_core::realize(&tensors.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>())?;
    let mut entries = Vec::with_capacity(tensors.len());
    for (name, v) in tensors {
        entries.push((name.clone(), Entry { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.to_host()? }));
    }
    let bytes = safetensors::tensor::serialize(entries.iter().map(|(n, e)| (n.as_str(), e)), Some(metadata))
        .map_err(|e| Error::file(path, format!("cannot encode as safetensors: {e}")))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file next to `path`, syncs it and renames it over
/// `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, format!("cannot write: {e}"))
    })
}

/// Named values, in file order.
pub type Tensors = Vec<(String, Var)>;

/// String metadata of a file.
pub type Metadata = HashMap<String, String>;

/// Reads every tensor (as CPU values, in file order) and the metadata of the
/// `.safetensors` file at `path`. A missing, truncated or malformed file, or a dtype
/// the framework does not have, is an error naming the file.
pub fn load(path: impl AsRef<Path>) -> Result<(Tensors, Metadata)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::with_capacity(st.len());
    let mut order: Vec<_> = st.iter().collect();
    order.sort_by_key(|(_, t)| t.data().as_ptr() as usize);
    for (name, t) in order {
        let dtype = from_st(t.dtype()).ok_or_else(|| {
            Error::file(
                path,
                format!("tensor {name:?} has dtype {:?}, which this framework does not support", t.dtype()),
            )
        })?;
        let data = HostBuffer::from_le_bytes(dtype, t.data())
            .ok_or_else(|| Error::file(path, format!("tensor {name:?}: data is not a whole number of {dtype}")))?;
        out.push((name.to_string(), Var::from_host(data, t.shape())?));
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
