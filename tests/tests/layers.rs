//! Modules and state dicts: a network of every layer, built here as PyTorch builds
//! it in `scripts/make_fixtures.py`, has PyTorch's parameter and buffer names and
//! shapes, loads PyTorch's state dict by name (strict), and gives PyTorch's output
//! (`tests/fixtures/layers.safetensors`). Also: slicing a Sequential, train/eval,
//! strict and non-strict loading reports, renaming, safetensors round trips.

use integration_tests::assert_values_close;
use jit_nn::layers::*;
use jit_nn::{Module, ModuleExt};
use jit_ops::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

struct Net {
    features: Sequential,
    head: Sequential,
}

impl Module for Net {
    fn forward(&self, x: &Var) -> Result<Var> {
        self.head.forward(&self.features.forward(x)?)
    }
    fn type_name(&self) -> &'static str {
        "Net"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("features".into(), &self.features), ("head".into(), &self.head)]
    }
}

fn net() -> Net {
    let a = |m: Arc<dyn Module>| m;
    let conv =
        |i, o, k, opts: Conv2dOptions, bias| Arc::new(Conv2d::new(i, o, k, opts, bias).unwrap()) as Arc<dyn Module>;
    let features = Sequential::new(vec![
        a(Arc::new(ReflectionPad2d { padding: [1, 1, 1, 1] })),
        conv(3, 8, 3, Conv2dOptions::default(), true),
        a(Arc::new(ReLU {})),
        conv(8, 8, 3, Conv2dOptions { groups: 2, ..Conv2dOptions::new(1, 1) }, false),
        a(Arc::new(BatchNorm2d::new(8).unwrap())),
        a(Arc::new(LeakyReLU { slope: 0.2 })),
        a(Arc::new(MaxPool2d { options: Pool2dOptions::new(2).ceil_mode(true) })),
        conv(8, 16, 3, Conv2dOptions::new(1, 1), true),
        a(Arc::new(InstanceNorm2d::new(16, true, false).unwrap())),
        a(Arc::new(Tanh {})),
        a(Arc::new(
            ConvTranspose2d::new(
                16,
                8,
                3,
                ConvTranspose2dOptions {
                    stride: [2, 2],
                    padding: [1, 1],
                    output_padding: [1, 1],
                    ..Default::default()
                },
                true,
            )
            .unwrap(),
        )),
        a(Arc::new(GroupNorm::new(2, 8).unwrap())),
        a(Arc::new(Sigmoid {})),
        a(Arc::new(Upsample { resize: Resize::Scale([2.0, 2.0]), mode: UpsampleMode::Nearest })),
        a(Arc::new(ZeroPad2d { padding: [1, 0, 0, 1] })),
        a(Arc::new(AvgPool2d { options: Pool2dOptions::new(3).stride(2).padding(1), count_include_pad: true })),
    ]);
    let head = Sequential::new(vec![
        a(Arc::new(AdaptiveAvgPool2d { size: [2, 2] })),
        a(Arc::new(Flatten {})),
        a(Arc::new(Linear::new(32, 10, true).unwrap())),
        a(Arc::new(Dropout::new(0.5).unwrap())),
        a(Arc::new(LayerNorm::new(&[10]).unwrap())),
    ]);
    Net { features, head }
}

fn fixture() -> HashMap<String, Var> {
    let path = integration_tests::fixture("layers.safetensors");
    jit_nn::safetensors_io::load(path).expect("fixture").0.into_iter().collect()
}

fn torch_state(f: &HashMap<String, Var>) -> Vec<(String, Var)> {
    let mut s: Vec<(String, Var)> =
        f.iter().filter_map(|(k, v)| k.strip_prefix("state.").map(|k| (k.to_string(), v.clone()))).collect();
    s.sort_by(|a, b| a.0.cmp(&b.0));
    s
}

#[test]
fn names_and_shapes_match_pytorch_and_outputs_agree() {
    let f = fixture();
    let torch = torch_state(&f);
    let model = net();
    let mut ours: Vec<(String, Vec<usize>)> =
        model.state_dict().into_iter().map(|(k, v)| (k, v.shape().to_vec())).collect();
    ours.sort();
    let theirs: Vec<(String, Vec<usize>)> = torch.iter().map(|(k, v)| (k.clone(), v.shape().to_vec())).collect();
    assert_eq!(ours, theirs, "state dict names and shapes");
    let report = model.load_state_dict(&torch, true).unwrap();
    assert!(report.is_clean() && report.loaded == torch.len(), "{}", report.describe());
    assert_eq!(model.features.get(4).unwrap().own_buffers()[2].1.item::<i64>().unwrap(), 7, "i64 buffer loaded");
    model.eval();
    let y = model.forward(&f["x"]).unwrap();
    assert_values_close(&y.to_vec_f64().unwrap(), &f["y"].to_vec_f64().unwrap(), 1e-5, 1e-5, "network output");
    // slicing keeps the weights (and PyTorch's names)
    let first = model.features.slice(0..3).unwrap();
    let names: Vec<String> = first.named_parameters().into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, vec!["1.weight", "1.bias"]);
    let ys = first.forward(&f["x"]).unwrap();
    assert_values_close(&ys.to_vec_f64().unwrap(), &f["y_slice"].to_vec_f64().unwrap(), 1e-5, 1e-5, "features[:3]");
    let rest = model.features.slice(3..16).unwrap();
    assert_eq!(rest.named_parameters()[0].0, "3.weight");
    assert!(model.features.slice(3..17).is_err());
}

#[test]
fn train_and_eval_switch_dropout_and_batch_statistics() {
    let model = net();
    let x = Var::randn(&[2, 3, 11, 9], DType::F32).unwrap();
    model.eval();
    let a = model.forward(&x).unwrap().to_vec::<f32>().unwrap();
    let b = model.forward(&x).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(a, b, "evaluation is deterministic");
    let bn = model.features.get(4).unwrap();
    let before = bn.own_buffers()[0].1.to_vec::<f32>().unwrap();
    model.train();
    let c = model.forward(&x).unwrap().to_vec::<f32>().unwrap();
    assert_ne!(a, c, "training uses batch statistics and dropout");
    let after = bn.own_buffers()[0].1.to_vec::<f32>().unwrap();
    assert_ne!(before, after, "running mean updated in training");
    assert_eq!(bn.own_buffers()[2].1.item::<i64>().unwrap(), 1, "num_batches_tracked counts");
    // parameters are what an optimizer needs, and they train
    let params = model.parameters();
    assert_eq!(params.len(), model.named_parameters().len());
    assert!(params.iter().all(Var::requires_grad));
}

#[test]
fn loading_reports_missing_unexpected_and_mismatched_keys() {
    let f = fixture();
    let mut torch = torch_state(&f);
    let model = net();
    // drop one key, add one, break one shape
    torch.retain(|(k, _)| k != "head.2.bias");
    torch.push(("head.9.weight".into(), Var::ones(&[3], DType::F32)));
    for (k, v) in torch.iter_mut() {
        if k == "features.1.weight" {
            *v = Var::ones(&[8, 3, 2, 2], DType::F32);
        }
    }
    let before = model.head.get(2).unwrap().own_params()[0].1.to_vec::<f32>().unwrap();
    let e = model.load_state_dict(&torch, true).unwrap_err().to_string();
    assert_eq!(
        e,
        "load_state_dict: missing keys: head.2.bias; unexpected keys: head.9.weight; size mismatch for features.1.weight: the checkpoint has shape [8, 3, 2, 2], the module [8, 3, 3, 3] (nothing was loaded)"
    );
    assert_eq!(
        model.head.get(2).unwrap().own_params()[0].1.to_vec::<f32>().unwrap(),
        before,
        "strict failure loads nothing"
    );
    let report = model.load_state_dict(&torch, false).unwrap();
    assert_eq!(report.missing, vec!["head.2.bias"]);
    assert_eq!(report.unexpected, vec!["head.9.weight"]);
    assert_eq!(report.mismatched.len(), 1);
    assert_eq!(report.loaded, torch.len() - 2);
    assert_ne!(
        model.head.get(2).unwrap().own_params()[0].1.to_vec::<f32>().unwrap(),
        before,
        "non-strict loads the rest"
    );
}

#[test]
fn safetensors_round_trip_with_renaming() {
    let dir = std::env::temp_dir().join(format!("jit-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("net.safetensors");
    let a = net();
    a.save_safetensors(&path).unwrap();
    let b = net();
    let report = b.load_safetensors(&path, true, &|k| Some(k.to_string())).unwrap();
    assert!(report.is_clean());
    for ((ka, va), (kb, vb)) in a.state_dict().iter().zip(b.state_dict().iter()) {
        assert_eq!(ka, kb);
        assert_eq!(va.to_vec_f64().unwrap(), vb.to_vec_f64().unwrap(), "{ka}");
    }
    // a checkpoint saved from a wrapper ("module." prefix, as DataParallel writes)
    let wrapped: Vec<(String, Var)> = a.state_dict().into_iter().map(|(k, v)| (format!("module.{k}"), v)).collect();
    jit_nn::safetensors_io::save(dir.join("wrapped.safetensors"), &wrapped, HashMap::new()).unwrap();
    let c = net();
    let e = c.load_safetensors(&dir.join("wrapped.safetensors"), true, &|k| Some(k.to_string())).unwrap_err();
    assert!(e.to_string().contains("wrapped.safetensors: missing keys: features.1.bias"), "{e}");
    let report = c
        .load_safetensors(&dir.join("wrapped.safetensors"), true, &|k| k.strip_prefix("module.").map(String::from))
        .unwrap();
    assert!(report.is_clean());
    // not a safetensors file
    std::fs::write(dir.join("bad.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......").unwrap();
    let e = c.load_safetensors(&dir.join("bad.safetensors"), true, &|k| Some(k.to_string())).unwrap_err().to_string();
    assert!(e.contains("bad.safetensors: not a valid safetensors file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn default_initialisation_follows_pytorch_bounds() {
    let conv = Conv2d::new(16, 32, 3, Conv2dOptions::default(), true).unwrap();
    let bound = 1.0 / (16.0f64 * 9.0).sqrt();
    let w = conv.weight.to_vec_f64().unwrap();
    assert!(w.iter().all(|v| v.abs() <= bound));
    assert!(w.iter().any(|v| v.abs() > 0.9 * bound), "spread over the whole range");
    let lin = Linear::new(50, 4, true).unwrap();
    assert!(lin.bias.unwrap().to_vec_f64().unwrap().iter().all(|v| v.abs() <= 1.0 / 50f64.sqrt()));
    let bn = BatchNorm2d::new(5).unwrap();
    assert_eq!(bn.weight.unwrap().to_vec::<f32>().unwrap(), vec![1.0; 5]);
    assert_eq!(bn.running_var.to_vec::<f32>().unwrap(), vec![1.0; 5]);
    assert!(Dropout::new(1.0).is_err());
    assert!(GroupNorm::new(3, 8).is_err());
}

#[test]
fn activation_window_and_shuffle_modules_run_their_ops() {
    let x = Var::rand(&[2, 8, 4, 6], DType::F32).unwrap();
    let o = FoldOptions::new(3).padding(1).stride(2);
    fn same(m: &(dyn Module + 'static), x: &Var, name: &str, want: Var) {
        assert_eq!(m.type_name(), name);
        assert!(m.named_parameters().is_empty(), "{name} has no parameters");
        let got = m.forward(x).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}");
        assert_eq!(got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap(), "{name}");
    }
    same(&PixelShuffle { upscale_factor: 2 }, &x, "PixelShuffle", pixel_shuffle(&x, 2).unwrap());
    same(&PixelUnshuffle { downscale_factor: 2 }, &x, "PixelUnshuffle", pixel_unshuffle(&x, 2).unwrap());
    same(&Unfold { options: o }, &x, "Unfold", unfold(&x, &o).unwrap());
    same(&GELU { tanh: true }, &x, "GELU", x.gelu_tanh().unwrap());
    same(&GELU { tanh: false }, &x, "GELU", x.gelu().unwrap());
    same(&SiLU {}, &x, "SiLU", x.silu().unwrap());
    same(&ELU { alpha: 0.5 }, &x, "ELU", x.elu(0.5).unwrap());
    same(&Softplus { beta: 2.0, threshold: 3.0 }, &x, "Softplus", x.softplus(2.0, 3.0).unwrap());
    same(&Hardsigmoid {}, &x, "Hardsigmoid", x.hardsigmoid().unwrap());
    same(&Hardswish {}, &x, "Hardswish", x.hardswish().unwrap());
    same(&Mish {}, &x, "Mish", x.mish().unwrap());
    // Fold reads columns: [2, 8 * 9, 2 * 3] are the windows of a 4x6 plane
    let cols = unfold(&x, &o).unwrap();
    let f = Fold { output_size: [4, 6], options: o };
    assert_eq!(f.type_name(), "Fold");
    assert_eq!(
        f.forward(&cols).unwrap().to_vec::<f32>().unwrap(),
        fold(&cols, [4, 6], &o).unwrap().to_vec::<f32>().unwrap()
    );
    assert!(f.forward(&x).unwrap_err().to_string().starts_with("fold: input must be 2-D or 3-D"));
}

/// `nn.Embedding`: PyTorch's initialisation (standard normal, zero padding row), a
/// forward pass of any index shape, and training through the scatter-add gradient:
/// a few Adam steps fit targets for the rows that are used, leave the others and
/// the padding row unchanged.
#[test]
fn embedding_initialises_looks_up_and_trains_only_the_rows_it_uses() {
    use jit_nn::optim::{Adam, Optimizer};
    let e = Embedding::new(300, 16, Some(7)).unwrap();
    assert_eq!(e.named_parameters().into_iter().map(|(n, _)| n).collect::<Vec<_>>(), vec!["weight"]);
    let w0 = e.weight.to_vec::<f32>().unwrap();
    assert!(w0[7 * 16..8 * 16].iter().all(|&v| v == 0.0), "the padding row starts at zero");
    let mean = w0.iter().map(|&v| f64::from(v)).sum::<f64>() / w0.len() as f64;
    let var = w0.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / w0.len() as f64;
    // 4800 samples: the mean's spread is 0.014, the variance's 0.02 (both bounds near 5 sigma)
    assert!(mean.abs() < 0.07 && (var - 1.0).abs() < 0.1, "standard normal: mean {mean}, variance {var}");
    let ids = Var::from_vec(vec![3i64, 250, 7, 3, 99, 7], &[2, 3]).unwrap();
    assert_eq!(e.forward(&ids).unwrap().shape(), &[2, 3, 16]);
    let target = Var::full(&[2, 3, 16], 0.5, DType::F32);
    let mut opt = Adam::new(vec![e.weight.clone()], 0.1).unwrap();
    let loss_of = |e: &Embedding| mse_loss(&e.forward(&ids).unwrap(), &target, Reduction::Mean).unwrap();
    let first = loss_of(&e).item::<f32>().unwrap();
    for _ in 0..20 {
        opt.step(&loss_of(&e)).unwrap();
    }
    let last = loss_of(&e).item::<f32>().unwrap();
    assert!(last < 0.2 * first, "the loss falls: {first} -> {last}");
    let w1 = e.weight.to_vec::<f32>().unwrap();
    for row in 0..300 {
        let changed = w0[row * 16..(row + 1) * 16] != w1[row * 16..(row + 1) * 16];
        assert_eq!(changed, [3, 250, 99].contains(&row), "row {row}");
    }
    assert!(Embedding::new(4, 2, Some(4)).is_err());
}
