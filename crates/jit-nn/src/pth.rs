//! PyTorch checkpoints (`torch.save`, the zip format of PyTorch 1.6 and later) read
//! in Rust, without Python: the archive's `data.pkl` is unpickled by a small
//! interpreter that knows only what checkpoints contain (dicts, lists, tuples,
//! numbers, strings, `OrderedDict`, and tensors rebuilt from their storages), and
//! every tensor is read from its storage record with its offset, shape and strides
//! (so views, shared storages and non-contiguous tensors load as saved).
//!
//! Anything else in the pickle (an arbitrary class) is refused with its name; the
//! legacy pre-1.6 format is refused with how to re-save it.

use jit_core::{DType, Error, HostBuffer, Result, Var};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// A value of the unpickled checkpoint.
#[derive(Clone, Debug)]
pub enum PthValue {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A tuple or list.
    List(Vec<PthValue>),
    /// A dict (`dict` or `OrderedDict`), in insertion order.
    Dict(Vec<(PthValue, PthValue)>),
    /// A tensor.
    Tensor(Var),
    /// A reference to a Python global (`module.name`), before it is called.
    Global(String, String),
    /// A storage reference: `(dtype, key, element count)`.
    Storage(DType, String, usize),
}

impl PthValue {
    /// Every tensor under this value with a dotted path (dict keys, list indices).
    pub fn tensors(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.collect("", &mut out);
        out
    }

    fn collect(&self, prefix: &str, out: &mut Vec<(String, Var)>) {
        let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
        match self {
            PthValue::Tensor(v) => out.push((prefix.to_string(), v.clone())),
            PthValue::Dict(items) => {
                for (k, v) in items {
                    let key = match k {
                        PthValue::Str(s) => s.clone(),
                        PthValue::Int(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    v.collect(&join(&key), out);
                }
            }
            PthValue::List(items) => {
                for (i, v) in items.iter().enumerate() {
                    v.collect(&join(&i.to_string()), out);
                }
            }
            _ => {}
        }
    }
}

/// Every tensor of the checkpoint at `path`, with dotted names (`{'state_dict':
/// {'conv.weight': ..}}` gives `state_dict.conv.weight`; strip such a prefix with
/// the renaming hook of [`crate::ModuleExt::load_safetensors`]'s sibling,
/// [`crate::ModuleExt::load_state_dict`]).
pub fn load(path: impl AsRef<Path>) -> Result<Vec<(String, Var)>> {
    Ok(load_value(path)?.tensors())
}

/// The whole unpickled checkpoint.
pub fn load_value(path: impl AsRef<Path>) -> Result<PthValue> {
    let path = path.as_ref();
    let bad = |msg: String| Error::file(path, msg);
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if !bytes.starts_with(b"PK") {
        if bytes.first() == Some(&0x80) {
            return Err(bad(
                "a PyTorch checkpoint in the legacy format (before PyTorch 1.6), which is not supported; re-save it with torch.save(obj, path) from PyTorch 1.6 or later".into(),
            ));
        }
        return Err(bad("not a PyTorch checkpoint (not a zip archive)".into()));
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes))
        .map_err(|e| bad(format!("not a readable zip archive (truncated or corrupt?): {e}")))?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| bad("a zip archive without data.pkl: not a PyTorch checkpoint".into()))?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut read = |name: &str| -> Result<Vec<u8>> {
        let mut f = zip.by_name(name).map_err(|e| bad(format!("missing record {name}: {e}")))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|e| bad(format!("cannot read record {name}: {e}")))?;
        Ok(out)
    };
    let program = read(&pkl)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut load_storage = |key: &str| -> Result<Vec<u8>> {
        if let Some(b) = storages.get(key) {
            return Ok(b.clone());
        }
        let b = read(&format!("{prefix}data/{key}"))?;
        storages.insert(key.to_string(), b.clone());
        Ok(b)
    };
    Unpickler { path, stack: vec![], marks: vec![], memo: HashMap::new() }.run(&program, &mut load_storage)
}

struct Unpickler<'a> {
    path: &'a Path,
    stack: Vec<PthValue>,
    marks: Vec<usize>,
    memo: HashMap<u32, PthValue>,
}

fn storage_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        _ => return None,
    })
}

impl Unpickler<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::file(self.path, msg.into())
    }

    fn pop(&mut self) -> Result<PthValue> {
        self.stack.pop().ok_or_else(|| self.err("corrupt pickle: stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<PthValue>> {
        let m = self.marks.pop().ok_or_else(|| self.err("corrupt pickle: no mark"))?;
        if m > self.stack.len() {
            return Err(self.err("corrupt pickle: mark beyond the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn run(mut self, p: &[u8], storage: &mut dyn FnMut(&str) -> Result<Vec<u8>>) -> Result<PthValue> {
        let mut i = 0usize;
        let take = |i: &mut usize, n: usize| -> Option<&[u8]> {
            let s = p.get(*i..*i + n)?;
            *i += n;
            Some(s)
        };
        let path = self.path;
        let trunc = || Error::file(path, "corrupt pickle: truncated");
        loop {
            let op = *p.get(i).ok_or_else(trunc)?;
            i += 1;
            match op {
                0x80 => i += 1,                                  // PROTO
                0x95 => i += 8,                                  // FRAME
                b'.' => return self.pop(),                       // STOP
                b'}' => self.stack.push(PthValue::Dict(vec![])), // EMPTY_DICT
                b']' => self.stack.push(PthValue::List(vec![])), // EMPTY_LIST
                b')' => self.stack.push(PthValue::List(vec![])), // EMPTY_TUPLE
                b'N' => self.stack.push(PthValue::None),
                0x88 => self.stack.push(PthValue::Bool(true)),
                0x89 => self.stack.push(PthValue::Bool(false)),
                b'(' => self.marks.push(self.stack.len()),
                b'K' => {
                    let v = take(&mut i, 1).ok_or_else(trunc)?[0];
                    self.stack.push(PthValue::Int(i64::from(v)));
                }
                b'M' => {
                    let b = take(&mut i, 2).ok_or_else(trunc)?;
                    self.stack.push(PthValue::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))));
                }
                b'J' => {
                    let b = take(&mut i, 4).ok_or_else(trunc)?;
                    self.stack.push(PthValue::Int(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))));
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = take(&mut i, 1).ok_or_else(trunc)?[0] as usize;
                    let b = take(&mut i, n).ok_or_else(trunc)?;
                    if n > 8 {
                        return Err(self.err("an integer wider than 64 bits"));
                    }
                    let mut v: i64 = 0;
                    for (k, &byte) in b.iter().enumerate() {
                        v |= i64::from(byte) << (8 * k);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(PthValue::Int(v));
                }
                b'G' => {
                    let b = take(&mut i, 8).ok_or_else(trunc)?;
                    self.stack.push(PthValue::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))));
                }
                b'X' | 0x8c | b'B' | b'C' => {
                    let n = match op {
                        0x8c | b'C' => take(&mut i, 1).ok_or_else(trunc)?[0] as usize,
                        _ => {
                            let b = take(&mut i, 4).ok_or_else(trunc)?;
                            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
                        }
                    };
                    let b = take(&mut i, n).ok_or_else(trunc)?.to_vec();
                    self.stack.push(if matches!(op, b'B' | b'C') {
                        PthValue::Bytes(b)
                    } else {
                        PthValue::Str(String::from_utf8(b).map_err(|_| self.err("corrupt pickle: bad UTF-8"))?)
                    });
                }
                b'c' => {
                    let mut line = || -> Result<String> {
                        let end = p[i..].iter().position(|&c| c == b'\n').ok_or_else(trunc)?;
                        let s = String::from_utf8_lossy(&p[i..i + end]).into_owned();
                        i += end + 1;
                        Ok(s)
                    };
                    let (module, name) = (line()?, line()?);
                    self.stack.push(PthValue::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (PthValue::Str(m), PthValue::Str(n)) => self.stack.push(PthValue::Global(m, n)),
                        _ => return Err(self.err("corrupt pickle: STACK_GLOBAL without names")),
                    }
                }
                b'q' | b'r' | 0x94 => {
                    let key = match op {
                        b'q' => u32::from(take(&mut i, 1).ok_or_else(trunc)?[0]),
                        b'r' => {
                            let b = take(&mut i, 4).ok_or_else(trunc)?;
                            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                        }
                        _ => self.memo.len() as u32,
                    };
                    let top = self.stack.last().cloned().ok_or_else(|| self.err("corrupt pickle: memo of nothing"))?;
                    self.memo.insert(key, top);
                }
                b'h' | b'j' => {
                    let key = if op == b'h' {
                        u32::from(take(&mut i, 1).ok_or_else(trunc)?[0])
                    } else {
                        let b = take(&mut i, 4).ok_or_else(trunc)?;
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                    };
                    let v = self.memo.get(&key).cloned().ok_or_else(|| self.err("corrupt pickle: unknown memo"))?;
                    self.stack.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(PthValue::List(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("corrupt pickle: stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(PthValue::List(items));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                    match self.stack.last_mut() {
                        Some(PthValue::List(l)) => l.extend(items),
                        _ => return Err(self.err("corrupt pickle: append to a non-list")),
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    let Some(PthValue::Dict(d)) = self.stack.last_mut() else {
                        return Err(Error::file(self.path, "corrupt pickle: setitem on a non-dict"));
                    };
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
                b'Q' => {
                    // BINPERSID: ('storage', <Storage global>, key, location, numel)
                    let pid = self.pop()?;
                    let PthValue::List(t) = pid else { return Err(self.err("unsupported persistent id")) };
                    let dtype = match t.get(1) {
                        Some(PthValue::Global(_, name)) => storage_dtype(name)
                            .ok_or_else(|| self.err(format!("unsupported storage type torch.{name}")))?,
                        _ => return Err(self.err("unsupported persistent id")),
                    };
                    let (Some(PthValue::Str(key)), Some(PthValue::Int(n))) = (t.get(2), t.get(4)) else {
                        return Err(self.err("unsupported persistent id"));
                    };
                    self.stack.push(PthValue::Storage(dtype, key.clone(), *n as usize));
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args, storage)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: state for the object below; OrderedDict and tensors take none we need
                    let _state = self.pop()?;
                }
                other => {
                    return Err(self.err(format!(
                        "unsupported pickle content (opcode 0x{other:02x} at byte {}); only tensors, dicts, lists and numbers can be read",
                        i - 1
                    )))
                }
            }
        }
    }

    fn call(&self, f: PthValue, args: PthValue, storage: &mut dyn FnMut(&str) -> Result<Vec<u8>>) -> Result<PthValue> {
        let PthValue::Global(module, name) = f else {
            return Err(self.err("corrupt pickle: call of a non-function"));
        };
        let args = match args {
            PthValue::List(a) => a,
            _ => return Err(self.err("corrupt pickle: arguments are not a tuple")),
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => Ok(PthValue::Dict(vec![])),
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                self.rebuild(&args, storage)
            }
            ("torch._utils", "_rebuild_parameter") => {
                args.into_iter().next().ok_or_else(|| self.err("_rebuild_parameter without a tensor"))
            }
            _ => Err(self.err(format!(
                "unsupported pickle content: {module}.{name} (only tensors, dicts, lists and numbers can be read)"
            ))),
        }
    }

    fn rebuild(&self, args: &[PthValue], storage: &mut dyn FnMut(&str) -> Result<Vec<u8>>) -> Result<PthValue> {
        let ints = |v: &PthValue| -> Option<Vec<usize>> {
            match v {
                PthValue::List(l) => {
                    l.iter().map(|x| if let PthValue::Int(i) = x { usize::try_from(*i).ok() } else { None }).collect()
                }
                _ => None,
            }
        };
        let (Some(PthValue::Storage(dtype, key, numel)), Some(PthValue::Int(offset)), Some(size), Some(stride)) =
            (args.first(), args.get(1), args.get(2).and_then(ints), args.get(3).and_then(ints))
        else {
            return Err(self.err("corrupt tensor record"));
        };
        let raw = storage(key)?;
        let data = HostBuffer::from_le_bytes(*dtype, &raw)
            .filter(|d| d.len() >= *numel)
            .ok_or_else(|| self.err(format!("storage {key} holds {} bytes, too few for {numel} {dtype}", raw.len())))?;
        let offset = usize::try_from(*offset).map_err(|_| self.err("negative storage offset"))?;
        // gather through offset and strides (views and non-contiguous tensors)
        if stride.len() != size.len() {
            return Err(self.err(format!(
                "tensor in storage {key} has size {size:?} but stride {stride:?} (one stride per dimension)"
            )));
        }
        let n = jit_core::numel(&size);
        // the last element the view reads; every other element comes before it
        let last = size
            .iter()
            .zip(&stride)
            .try_fold(offset, |at, (&d, &s)| at.checked_add(d.saturating_sub(1).checked_mul(s)?));
        let (Some(n), Some(last)) = (n, last) else {
            return Err(self.err(format!(
                "tensor in storage {key} with size {size:?}, stride {stride:?} and offset {offset} overflows"
            )));
        };
        if n > 0 && last >= data.len() {
            return Err(self.err(format!(
                "tensor in storage {key} (size {size:?}, stride {stride:?}, offset {offset}) reads element {last}, \
                 past the end of its {} elements",
                data.len()
            )));
        }
        let mut flat = Vec::new();
        flat.try_reserve_exact(n).map_err(|_| {
            self.err(format!("tensor in storage {key} of size {size:?} ({n} elements) does not fit in memory"))
        })?;
        let mut idx = vec![0usize; size.len()];
        for _ in 0..n {
            let at = offset + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
            flat.push(at);
            for d in (0..size.len()).rev() {
                idx[d] += 1;
                if idx[d] < size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        let picked = gather(&data, &flat);
        Ok(PthValue::Tensor(Var::from_host(picked, &size)?))
    }
}

fn gather(data: &HostBuffer, at: &[usize]) -> HostBuffer {
    macro_rules! pick {
        ($v:expr, $variant:ident) => {
            HostBuffer::$variant(at.iter().map(|&i| $v[i]).collect())
        };
    }
    match data {
        HostBuffer::Bool(v) => pick!(v, Bool),
        HostBuffer::U8(v) => pick!(v, U8),
        HostBuffer::I32(v) => pick!(v, I32),
        HostBuffer::I64(v) => pick!(v, I64),
        HostBuffer::F16(v) => pick!(v, F16),
        HostBuffer::BF16(v) => pick!(v, BF16),
        HostBuffer::F32(v) => pick!(v, F32),
        HostBuffer::F64(v) => pick!(v, F64),
    }
}
