//! PyTorch `.pth` checkpoints written by `torch.save` (`scripts/make_fixtures.py`):
//! several dtypes, a nested dict, a shared storage, a non-contiguous tensor, a scalar
//! and plain Python values load with exact values; bad files give clear errors.

use jit_nn::pth::{self, PthValue};
use jit_ops::prelude::*;
use std::collections::HashMap;

fn fixture(name: &str) -> std::path::PathBuf {
    integration_tests::fixture(name)
}

#[test]
fn checkpoints_load_with_exact_values() {
    let got: HashMap<String, Var> = pth::load(fixture("checkpoint.pth")).unwrap().into_iter().collect();
    let (want, _) = jit_nn::safetensors_io::load(fixture("pth_expected.safetensors")).unwrap();
    assert_eq!(got.len(), want.len(), "{:?}", got.keys().collect::<Vec<_>>());
    for (k, w) in &want {
        let g = got.get(k).unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(g.shape(), w.shape(), "{k}");
        // bf16 was saved as its exact f32 values
        let g = if g.dtype() == DType::BF16 { g.cast(DType::F32) } else { g.clone() };
        assert_eq!(g.dtype(), w.dtype(), "{k}");
        assert_eq!(g.to_vec_f64().unwrap(), w.to_vec_f64().unwrap(), "{k}");
    }
    assert_eq!(got["state_dict.conv.bias"].dtype(), DType::F16);
    assert_eq!(got["state_dict.bn.running_mean"].dtype(), DType::BF16);
    assert_eq!(got["state_dict.bn.num_batches_tracked"].shape(), &[] as &[usize]);
    assert_eq!(got["state_dict.transposed"].shape(), &[4, 3], "non-contiguous view read through its strides");
    // plain values are there too
    let PthValue::Dict(top) = pth::load_value(fixture("checkpoint.pth")).unwrap() else { panic!("not a dict") };
    let find = |k: &str| top.iter().find(|(key, _)| matches!(key, PthValue::Str(s) if s == k)).map(|(_, v)| v.clone());
    assert!(matches!(find("epoch"), Some(PthValue::Int(3))));
    assert!(matches!(find("lr"), Some(PthValue::Float(f)) if f == 0.5));
    assert!(matches!(find("name"), Some(PthValue::Str(s)) if s == "test"));
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let dir = std::env::temp_dir().join(format!("jit-pth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = |p: &std::path::Path| pth::load(p).unwrap_err().to_string();
    // truncated
    let bytes = std::fs::read(fixture("checkpoint.pth")).unwrap();
    let cut = dir.join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&cut);
    assert!(e.contains("cut.pth: not a readable zip archive (truncated or corrupt?)"), "{e}");
    // a zip that is not a checkpoint
    let other = dir.join("other.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&other).unwrap());
        z.start_file("readme.txt", zip::write::SimpleFileOptions::default()).unwrap();
        std::io::Write::write_all(&mut z, b"hello").unwrap();
        z.finish().unwrap();
    }
    assert!(
        err(&other).ends_with("other.zip: a zip archive without data.pkl: not a PyTorch checkpoint"),
        "{}",
        err(&other)
    );
    // a pickle with unsupported content (an arbitrary class)
    let evil = dir.join("evil.pth");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&evil).unwrap());
        z.start_file("evil/data.pkl", zip::write::SimpleFileOptions::default()).unwrap();
        std::io::Write::write_all(&mut z, b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.")
            .unwrap();
        z.finish().unwrap();
    }
    let e = err(&evil);
    assert!(e.contains("unsupported pickle content: os.system"), "{e}");
    // the legacy format, and something that is not a checkpoint at all
    let e = err(&fixture("legacy.pth"));
    assert!(e.contains("legacy format (before PyTorch 1.6)"), "{e}");
    let text = dir.join("notes.pth");
    std::fs::write(&text, "just text").unwrap();
    assert!(err(&text).ends_with("notes.pth: not a PyTorch checkpoint (not a zip archive)"));
    assert!(err(&dir.join("missing.pth")).contains("missing.pth: cannot read"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A module loads a `.pth` state dict by name through the renaming hook.
#[test]
fn modules_load_pth_checkpoints() {
    use jit_nn::layers::Conv2d;
    use jit_nn::ModuleExt;
    let conv = Conv2d::new(3, 4, 3, Conv2dOptions::default(), true).unwrap();
    // the checkpoint's conv has an f16 bias: loading casts it to the parameter's dtype
    let rename = |k: &str| k.strip_prefix("state_dict.conv.").map(String::from);
    let report = conv.load_pth(&fixture("checkpoint.pth"), true, &rename).unwrap();
    assert!(report.is_clean() && report.loaded == 2);
    let want: HashMap<String, Var> = pth::load(fixture("checkpoint.pth")).unwrap().into_iter().collect();
    assert_eq!(conv.weight.to_vec::<f32>().unwrap(), want["state_dict.conv.weight"].to_vec::<f32>().unwrap());
    assert_eq!(conv.bias.as_ref().unwrap().dtype(), DType::F32);
    let e = conv.load_pth(&fixture("checkpoint.pth"), true, &|k| Some(k.to_string())).unwrap_err().to_string();
    assert!(e.contains("checkpoint.pth: missing keys: bias, weight; unexpected keys:"), "{e}");
}

/// A checkpoint `{"w": tensor}` over one storage of four f32 values, with the view's
/// size and stride written into the pickle by hand (BININT1 or LONG1 integers).
fn view_checkpoint(path: &std::path::Path, size: &[i64], stride: &[i64]) {
    let int = |v: i64| -> Vec<u8> {
        let mut b = vec![0x8a, 8]; // LONG1, 8 bytes
        b.extend_from_slice(&v.to_le_bytes());
        b
    };
    let tuple = |vs: &[i64]| -> Vec<u8> {
        let mut b = vec![b'('];
        for &v in vs {
            b.extend(int(v));
        }
        b.push(b't');
        b
    };
    let mut p = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    p.extend_from_slice(
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ",
    );
    p.extend_from_slice(b"K\x00");
    p.extend(tuple(size));
    p.extend(tuple(stride));
    p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtRs.");
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    z.start_file("view/data.pkl", opts).unwrap();
    std::io::Write::write_all(&mut z, &p).unwrap();
    z.start_file("view/data/0", opts).unwrap();
    std::io::Write::write_all(&mut z, &[0u8; 16]).unwrap();
    z.finish().unwrap();
}

/// Views whose size and stride do not fit their storage are refused with the
/// numbers, before anything is allocated (a size of 2^40 once aborted the process
/// on an 8 TiB allocation; found by `malformed_files.rs`).
#[test]
fn views_past_their_storage_are_refused() {
    let dir = std::env::temp_dir().join(format!("jit-pth-views-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("view.pth");
    let load = |size: &[i64], stride: &[i64]| {
        view_checkpoint(&p, size, stride);
        pth::load(&p).map(|t| t.into_iter().map(|(k, v)| (k, v.to_vec::<f32>().unwrap())).collect::<Vec<_>>())
    };
    // the hand-written pickle itself is a valid checkpoint
    assert_eq!(load(&[2, 2], &[2, 1]).unwrap(), vec![("w".to_string(), vec![0.0; 4])]);
    assert_eq!(load(&[3, 2], &[0, 1]).unwrap()[0].1.len(), 6, "a broadcast view (stride 0) is read");
    let err = |size: &[i64], stride: &[i64]| load(size, stride).unwrap_err().to_string();
    let e = err(&[1 << 40], &[1]);
    assert!(e.contains("view.pth") && e.contains("reads element 1099511627775, past the end of its 4 elements"), "{e}");
    let e = err(&[1 << 62, 1 << 62], &[1, 1]);
    assert!(e.contains("view.pth") && e.contains("overflows"), "{e}");
    let e = err(&[1 << 60], &[0]);
    assert!(e.contains("view.pth") && e.contains("does not fit in memory"), "{e}");
    let e = err(&[2, 2], &[1]);
    assert!(e.contains("has size [2, 2] but stride [1] (one stride per dimension)"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
