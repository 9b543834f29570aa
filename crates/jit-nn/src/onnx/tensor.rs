//! `TensorProto` to `Var`, and the mapping between ONNX element types and dtypes.

use super::proto::{data_type as dt, TensorProto};
use super::Value;
use crate::prelude::*;
use jit_core::HostBuffer;
use std::path::Path;

/// The dtype an ONNX element type is held in (narrow integers widen to `i32`).
pub(crate) fn dtype_of(elem: i32) -> Option<DType> {
    Some(match elem {
        dt::FLOAT => DType::F32,
        dt::DOUBLE => DType::F64,
        dt::FLOAT16 => DType::F16,
        dt::BFLOAT16 => DType::BF16,
        dt::UINT8 => DType::U8,
        dt::INT8 | dt::INT16 | dt::UINT16 | dt::INT32 => DType::I32,
        dt::INT64 | dt::UINT32 => DType::I64,
        dt::BOOL => DType::Bool,
        _ => return None,
    })
}

/// The ONNX element type of a dtype.
pub(crate) fn elem_of(d: DType) -> i32 {
    match d {
        DType::Bool => dt::BOOL,
        DType::U8 => dt::UINT8,
        DType::I32 => dt::INT32,
        DType::I64 => dt::INT64,
        DType::F16 => dt::FLOAT16,
        DType::BF16 => dt::BFLOAT16,
        DType::F32 => dt::FLOAT,
        DType::F64 => dt::DOUBLE,
    }
}

/// Saturation range of an integer ONNX element type.
pub(crate) fn int_range(elem: i32) -> Option<(f64, f64)> {
    Some(match elem {
        dt::INT8 => (-128.0, 127.0),
        dt::UINT8 => (0.0, 255.0),
        dt::INT16 => (-32768.0, 32767.0),
        dt::UINT16 => (0.0, 65535.0),
        dt::INT32 => (i32::MIN as f64, i32::MAX as f64),
        _ => return None,
    })
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| c.try_into().expect("exact chunk"))
}

/// Decodes an initializer or attribute tensor. `dir` resolves external data.
pub(crate) fn to_value(t: &TensorProto, dir: Option<&Path>) -> std::result::Result<Value, String> {
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(format!("negative dim {d} in shape {:?}", t.dims));
        }
        shape.push(d as usize);
    }
    let n = jit_core::numel(&shape)
        .ok_or_else(|| format!("shape {:?} has more elements than this machine can address", t.dims))?;
    if dtype_of(t.data_type).is_none() {
        return Err(format!("element type {} is not supported", dt::name(t.data_type)));
    };
    let external;
    let raw: &[u8] = if t.data_location == 1 {
        external = read_external(t, dir)?;
        &external
    } else {
        &t.raw_data
    };
    let count_err = |got: usize| format!("shape {shape:?} needs {n} values, the tensor holds {got}");
    let buf = if !raw.is_empty() || (n == 0 && t.data_location == 0) {
        let size = match t.data_type {
            dt::FLOAT | dt::INT32 | dt::UINT32 => 4,
            dt::DOUBLE | dt::INT64 => 8,
            dt::FLOAT16 | dt::BFLOAT16 | dt::INT16 | dt::UINT16 => 2,
            _ => 1,
        };
        if n.checked_mul(size) != Some(raw.len()) {
            return Err(format!(
                "raw data of {} bytes does not fit shape {shape:?} of {} ({n} values of {size} bytes)",
                raw.len(),
                dt::name(t.data_type),
            ));
        }
        match t.data_type {
            dt::FLOAT => HostBuffer::F32(le_chunks::<4>(raw).map(f32::from_le_bytes).collect()),
            dt::DOUBLE => HostBuffer::F64(le_chunks::<8>(raw).map(f64::from_le_bytes).collect()),
            dt::FLOAT16 => {
                HostBuffer::F16(le_chunks::<2>(raw).map(|b| f16::from_bits(u16::from_le_bytes(b))).collect())
            }
            dt::BFLOAT16 => {
                HostBuffer::BF16(le_chunks::<2>(raw).map(|b| bf16::from_bits(u16::from_le_bytes(b))).collect())
            }
            dt::INT64 => HostBuffer::I64(le_chunks::<8>(raw).map(i64::from_le_bytes).collect()),
            dt::UINT32 => HostBuffer::I64(le_chunks::<4>(raw).map(|b| u32::from_le_bytes(b) as i64).collect()),
            dt::INT32 => HostBuffer::I32(le_chunks::<4>(raw).map(i32::from_le_bytes).collect()),
            dt::INT16 => HostBuffer::I32(le_chunks::<2>(raw).map(|b| i16::from_le_bytes(b) as i32).collect()),
            dt::UINT16 => HostBuffer::I32(le_chunks::<2>(raw).map(|b| u16::from_le_bytes(b) as i32).collect()),
            dt::INT8 => HostBuffer::I32(raw.iter().map(|&b| b as i8 as i32).collect()),
            dt::UINT8 => HostBuffer::U8(raw.to_vec()),
            dt::BOOL => HostBuffer::Bool(raw.iter().map(|&b| b != 0).collect()),
            _ => unreachable!("dtype_of accepted it"),
        }
    } else {
        match t.data_type {
            dt::FLOAT => {
                if t.float_data.len() != n {
                    return Err(count_err(t.float_data.len()));
                }
                HostBuffer::F32(t.float_data.clone())
            }
            dt::DOUBLE => {
                if t.double_data.len() != n {
                    return Err(count_err(t.double_data.len()));
                }
                HostBuffer::F64(t.double_data.clone())
            }
            dt::INT64 => {
                if t.int64_data.len() != n {
                    return Err(count_err(t.int64_data.len()));
                }
                HostBuffer::I64(t.int64_data.clone())
            }
            dt::UINT32 => {
                if t.uint64_data.len() != n {
                    return Err(count_err(t.uint64_data.len()));
                }
                HostBuffer::I64(t.uint64_data.iter().map(|&v| v as i64).collect())
            }
            _ => {
                let d = &t.int32_data;
                if d.len() != n {
                    return Err(count_err(d.len()));
                }
                match t.data_type {
                    dt::FLOAT16 => HostBuffer::F16(d.iter().map(|&v| f16::from_bits(v as u16)).collect()),
                    dt::BFLOAT16 => HostBuffer::BF16(d.iter().map(|&v| bf16::from_bits(v as u16)).collect()),
                    dt::UINT8 => HostBuffer::U8(d.iter().map(|&v| v as u8).collect()),
                    dt::BOOL => HostBuffer::Bool(d.iter().map(|&v| v != 0).collect()),
                    dt::INT8 => HostBuffer::I32(d.iter().map(|&v| v as i8 as i32).collect()),
                    dt::INT16 => HostBuffer::I32(d.iter().map(|&v| v as i16 as i32).collect()),
                    dt::UINT16 => HostBuffer::I32(d.iter().map(|&v| v as u16 as i32).collect()),
                    _ => HostBuffer::I32(d.clone()),
                }
            }
        }
    };
    let var = Var::from_host(buf, &shape).map_err(|e| e.to_string())?;
    Ok(Value { var, constant: true, elem: t.data_type })
}

fn read_external(t: &TensorProto, dir: Option<&Path>) -> std::result::Result<Vec<u8>, String> {
    let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
    let Some(location) = get("location") else {
        return Err("external data without a location".into());
    };
    let Some(dir) = dir else {
        return Err(format!(
            "external data in {location:?} cannot be found for a model given as bytes; load it from its file"
        ));
    };
    let rel = Path::new(location);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!(
            "external data location {location:?} must be a relative path inside the model's directory"
        ));
    }
    let path = dir.join(rel);
    let data = std::fs::read(&path).map_err(|e| format!("cannot read external data {}: {e}", path.display()))?;
    let parse = |k: &str| -> std::result::Result<Option<usize>, String> {
        get(k).map(|v| v.parse::<usize>().map_err(|_| format!("bad external data {k} {v:?}"))).transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let length = parse("length")?.unwrap_or(data.len().saturating_sub(offset));
    data.get(offset..offset.saturating_add(length)).map(<[u8]>::to_vec).ok_or_else(|| {
        format!(
            "external data {} holds {} bytes; offset {offset} + length {length} is past its end",
            path.display(),
            data.len()
        )
    })
}
