//! The ONNX importer on small graphs built here (no external files): each
//! operator against a direct computation with the framework's own ops or against
//! values worked out by hand from the ONNX specification, plus the error paths.

use jit_nn::onnx::proto::{
    attribute_type as at, data_type as dt, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
};
use jit_nn::onnx::OnnxModel;
use jit_nn::prelude::*;
use prost::Message;

fn vi(name: &str, elem: i32, dims: &[&str]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d.parse::<i64>() {
            Ok(n) => Dimension { dim_value: Some(n), ..Default::default() },
            Err(_) => Dimension { dim_param: Some(d.to_string()), ..Default::default() },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: elem, shape: Some(TensorShapeProto { dim }) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: dt::FLOAT,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: dt::INT64,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn i8_tensor(name: &str, dims: &[i64], v: &[i8]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: dt::INT8,
        raw_data: v.iter().map(|&x| x as u8).collect(),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::INTS, ints: v.to_vec(), ..Default::default() }
}
fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::INT, i: v, ..Default::default() }
}
fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::FLOAT, f: v, ..Default::default() }
}
fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::STRING, s: v.as_bytes().to_vec(), ..Default::default() }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("{op}_0"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

struct G {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    opset: i64,
}

impl G {
    fn new(inputs: Vec<ValueInfoProto>, outputs: &[&str]) -> G {
        G { nodes: vec![], inits: vec![], inputs, outputs: outputs.iter().map(|o| vi(o, 0, &[])).collect(), opset: 17 }
    }
    fn n(mut self, n: NodeProto) -> G {
        self.nodes.push(n);
        self
    }
    fn init(mut self, t: TensorProto) -> G {
        self.inits.push(t);
        self
    }
    fn opset(mut self, v: i64) -> G {
        self.opset = v;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: self.opset }],
            producer_name: "onnx_import test".into(),
            graph: Some(GraphProto {
                node: self.nodes.clone(),
                name: "g".into(),
                initializer: self.inits.clone(),
                input: self.inputs.clone(),
                output: self.outputs.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
    fn model(&self) -> OnnxModel {
        OnnxModel::from_bytes(&self.bytes(), "test.onnx").expect("import")
    }
    fn err(&self) -> String {
        OnnxModel::from_bytes(&self.bytes(), "test.onnx").expect_err("import must fail").to_string()
    }
}

fn rand(shape: &[usize], seed: u64) -> Var {
    Var::random(shape, jit_core::Distribution::Normal { mean: 0.0, std: 1.0 }, DType::F32, seed).unwrap()
}

fn close(a: &Var, b: &Var, tol: f64) {
    assert_eq!(a.shape(), b.shape(), "shapes");
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {k}: {x} vs {y}");
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn conv_with_asymmetric_pads_groups_and_bias() {
    let s = seed();
    let g = G::new(vec![vi("x", dt::FLOAT, &["1", "4", "h", "w"])], &["y"])
        .init(f32_tensor("w", &[6, 2, 3, 3], &rand(&[6, 2, 3, 3], s).to_vec::<f32>().unwrap()))
        .init(f32_tensor("b", &[6], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
        .n(node(
            "Conv",
            &["x", "w", "b"],
            &["y"],
            vec![ints("pads", &[1, 0, 2, 1]), int("group", 2), ints("strides", &[2, 1])],
        ));
    let m = g.model();
    for (h, w) in [(7, 9), (10, 5)] {
        let x = rand(&[1, 4, h, w], s + 1);
        let y = m.run(&[("x", x.clone())]).unwrap().remove(0);
        let wt = rand(&[6, 2, 3, 3], s);
        let b = Var::from_vec(vec![0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6], &[6]).unwrap();
        let xp = x.pad(&[0, 1, 1, 2], PadMode::Constant(0.0)).unwrap();
        let o = Conv2dOptions { stride: [2, 1], groups: 2, ..Default::default() };
        close(&y, &conv2d(&xp, &wt, Some(&b), &o).unwrap(), 1e-5);
    }
}

#[test]
fn pytorch_style_reflect_pad_subgraph_is_folded_at_import() {
    // the shape arithmetic torch.onnx emits for F.pad(x, (2, 2, 1, 1), "reflect")
    let g = G::new(vec![vi("x", dt::FLOAT, &["1", "1", "h", "w"])], &["y"])
        .init(i64_tensor("p", &[2, 2, 1, 1]))
        .init(i64_tensor("four", &[4]))
        .init(i64_tensor("shape2", &[-1, 2]))
        .init(i64_tensor("start", &[-1]))
        .init(i64_tensor("end", &[-9223372036854775807]))
        .init(i64_tensor("axes", &[0]))
        .init(i64_tensor("step", &[-1]))
        .init(i64_tensor("flat", &[-1]))
        .n(node("ConstantOfShape", &["four"], &["zeros"], vec![]))
        .n(node("Concat", &["p", "zeros"], &["cat"], vec![int("axis", 0)]))
        .n(node("Reshape", &["cat", "shape2"], &["r"], vec![]))
        .n(node("Slice", &["r", "start", "end", "axes", "step"], &["rev"], vec![]))
        .n(node("Transpose", &["rev"], &["t"], vec![ints("perm", &[1, 0])]))
        .n(node("Reshape", &["t", "flat"], &["pads"], vec![]))
        .n(node("Cast", &["pads"], &["pads64"], vec![int("to", dt::INT64 as i64)]))
        .n(node("Pad", &["x", "pads64"], &["y"], vec![string("mode", "reflect")]));
    let m = g.model();
    assert_eq!(m.runtime_nodes(), 1, "only the Pad runs per call");
    assert_eq!(m.folded_nodes(), 7);
    let x = rand(&[1, 1, 5, 6], seed());
    let y = m.run(&[("x", x.clone())]).unwrap().remove(0);
    close(&y, &x.pad(&[2, 2, 1, 1], PadMode::Reflect).unwrap(), 0.0);
}

#[test]
fn pad_edge_negative_and_constant_value() {
    let g = G::new(vec![vi("x", dt::FLOAT, &["2", "3"])], &["y", "z"])
        .init(i64_tensor("p1", &[0, 1, 0, -1]))
        .init(i64_tensor("p2", &[1, 0, 0, 2]))
        .init(f32_tensor("v", &[], &[7.0]))
        .n(node("Pad", &["x", "p1"], &["y"], vec![string("mode", "edge")]))
        .n(node("Pad", &["x", "p2", "v"], &["z"], vec![]));
    let x = Var::from_vec((0..6).map(|v| v as f32).collect(), &[2, 3]).unwrap();
    let out = g.model().run(&[("x", x)]).unwrap();
    // pads [dim0 begin, dim1 begin, dim0 end, dim1 end] = [0, 1, 0, -1]: edge
    // column added in front (repeating column 0), last column cropped
    assert_eq!(out[0].shape(), &[2, 3]);
    assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![0., 0., 1., 3., 3., 4.]);
    // constant 7: one row in front, two columns at the end
    assert_eq!(out[1].shape(), &[3, 5]);
    assert_eq!(out[1].to_vec::<f32>().unwrap(), vec![7., 7., 7., 7., 7., 0., 1., 2., 7., 7., 3., 4., 5., 7., 7.]);
}

#[test]
fn resize_nearest_modes_follow_the_spec() {
    // 1-D rows of 3 resized to 7 (scale 7/3): source indices worked out by hand
    let cases: [(&str, &str, [f32; 7]); 3] = [
        ("asymmetric", "floor", [0., 0., 0., 1., 1., 2., 2.]),
        ("half_pixel", "round_prefer_floor", [0., 0., 1., 1., 1., 2., 2.]),
        // x = i * 2 / 6: 1/3 -> 0, 2/3 -> 1, 5/3 -> 2
        ("align_corners", "round_prefer_ceil", [0., 0., 1., 1., 1., 2., 2.]),
    ];
    for (transform, nearest, want) in cases {
        let g = G::new(vec![vi("x", dt::FLOAT, &["1", "1", "1", "3"])], &["y"])
            .init(i64_tensor("sizes", &[1, 1, 1, 7]))
            .n(node(
                "Resize",
                &["x", "", "", "sizes"],
                &["y"],
                vec![
                    string("mode", "nearest"),
                    string("coordinate_transformation_mode", transform),
                    string("nearest_mode", nearest),
                ],
            ));
        let x = Var::from_vec(vec![0f32, 1., 2.], &[1, 1, 1, 3]).unwrap();
        let y = g.model().run(&[("x", x)]).unwrap().remove(0);
        assert_eq!(y.to_vec::<f32>().unwrap(), want.to_vec(), "{transform} {nearest}");
    }
    // scale 2, asymmetric floor (the style models): each pixel repeated
    let g = G::new(vec![vi("x", dt::FLOAT, &["1", "2", "h", "w"])], &["y"])
        .init(f32_tensor("scales", &[4], &[1., 1., 2., 2.]))
        .n(node(
            "Resize",
            &["x", "", "scales"],
            &["y"],
            vec![
                string("mode", "nearest"),
                string("coordinate_transformation_mode", "asymmetric"),
                string("nearest_mode", "floor"),
            ],
        ));
    let x = rand(&[1, 2, 3, 5], seed());
    let y = g.model().run(&[("x", x.clone())]).unwrap().remove(0);
    close(&y, &x.upsample_nearest2d(2).unwrap(), 0.0);
}

#[test]
fn resize_linear_matches_bilinear_upsampling() {
    let g = G::new(vec![vi("x", dt::FLOAT, &["1", "2", "h", "w"])], &["y"])
        .init(i64_tensor("sizes", &[1, 2, 9, 4]))
        .n(node("Resize", &["x", "", "", "sizes"], &["y"], vec![string("mode", "linear")]));
    let x = rand(&[1, 2, 5, 7], seed());
    let y = g.model().run(&[("x", x.clone())]).unwrap().remove(0);
    close(&y, &upsample_bilinear2d(&x, Resize::Size([9, 4]), false).unwrap(), 1e-6);
}

#[test]
fn quantize_dequantize_round_half_to_even_and_saturate() {
    // per-tensor int8 with zero point 1, scale 0.5: x / 0.5 = 2x
    let g = G::new(vec![vi("x", dt::FLOAT, &["8"])], &["q", "d"])
        .init(f32_tensor("s", &[], &[0.5]))
        .init(i8_tensor("z", &[], &[1]))
        .n(node("QuantizeLinear", &["x", "s", "z"], &["q"], vec![]))
        .n(node("DequantizeLinear", &["q", "s", "z"], &["d"], vec![]));
    let x = Var::from_vec(vec![0.25f32, 0.75, -0.25, -0.75, 1.0, 100.0, -100.0, 0.0], &[8]).unwrap();
    let out = g.model().run(&[("x", x)]).unwrap();
    // 2x = 0.5 -> 0 (even), 1.5 -> 2, -0.5 -> 0, -1.5 -> -2, then + 1 and saturate
    assert_eq!(out[0].cast(DType::I64).to_vec::<i64>().unwrap(), vec![1, 3, 1, -1, 3, 127, -128, 1]);
    assert_eq!(out[1].to_vec::<f32>().unwrap(), vec![0.0, 1.0, 0.0, -1.0, 1.0, 63.0, -64.5, 0.0]);
    // per-axis weights (int8 initializer) are dequantised once at import
    let g = G::new(vec![vi("x", dt::FLOAT, &["2", "2"])], &["y"])
        .init(i8_tensor("w", &[2, 2], &[1, -2, 3, 127]))
        .init(f32_tensor("ws", &[2], &[0.5, 0.25]))
        .init(i8_tensor("wz", &[2], &[0, 1]))
        .n(node("DequantizeLinear", &["w", "ws", "wz"], &["wd"], vec![int("axis", 0)]))
        .n(node("Add", &["x", "wd"], &["y"], vec![]));
    let m = g.model();
    assert_eq!(m.runtime_nodes(), 1);
    let y = m.run(&[("x", Var::zeros(&[2, 2], DType::F32))]).unwrap().remove(0);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.5, -1.0, 0.5, 31.5]);
}

#[test]
fn shape_ops_gather_slice_squeeze_and_runtime_shape() {
    let g = G::new(vec![vi("x", dt::FLOAT, &["n", "3", "4"])], &["a", "b", "c", "d"])
        .init(i64_tensor("idx", &[2, 0]))
        .init(i64_tensor("st", &[3]))
        .init(i64_tensor("en", &[0]))
        .init(i64_tensor("ax", &[2]))
        .init(i64_tensor("sp", &[-2]))
        .init(i64_tensor("zero", &[0]))
        .init(i64_tensor("two_six", &[2, 6]))
        .n(node("Gather", &["x", "idx"], &["a"], vec![int("axis", 2)]))
        .n(node("Slice", &["x", "st", "en", "ax", "sp"], &["b"], vec![]))
        .n(node("Shape", &["x"], &["s"], vec![]))
        .n(node("Gather", &["s", "zero"], &["n"], vec![]))
        .n(node("Concat", &["n", "two_six"], &["newshape"], vec![int("axis", 0)]))
        .n(node("Reshape", &["x", "newshape"], &["r"], vec![]))
        .n(node("Flatten", &["r"], &["c"], vec![int("axis", 1)]))
        .n(node("Unsqueeze", &["x", "zero"], &["u"], vec![]))
        .n(node("Squeeze", &["u", "zero"], &["d"], vec![]));
    let m = g.model();
    for n in [1usize, 2] {
        let x = Var::from_vec((0..n * 12).map(|v| v as f32).collect(), &[n, 3, 4]).unwrap();
        let out = m.run(&[("x", x.clone())]).unwrap();
        let xs = x.to_vec::<f32>().unwrap();
        let a = out[0].to_vec::<f32>().unwrap();
        assert_eq!(out[0].shape(), &[n, 3, 2]);
        assert_eq!(&a[..4], &[xs[2], xs[0], xs[6], xs[4]]);
        // columns 3, 1 (start 3, step -2, end 0 exclusive)
        assert_eq!(out[1].shape(), &[n, 3, 2]);
        assert_eq!(&out[1].to_vec::<f32>().unwrap()[..2], &[xs[3], xs[1]]);
        // [n, 2, 6] reshaped from the runtime Shape, flattened to [n, 12]
        assert_eq!(out[2].shape(), &[n, 12]);
        assert_eq!(out[3].shape(), &[n, 3, 4]);
    }
}

#[test]
fn gemm_matmul_softmax_and_norms() {
    let s = seed();
    let g = G::new(
        vec![vi("a", dt::FLOAT, &["3", "4"]), vi("x", dt::FLOAT, &["2", "3", "5", "5"])],
        &["g", "s11", "s13", "bn", "inn"],
    )
    .init(f32_tensor("b", &[5, 4], &rand(&[5, 4], s).to_vec::<f32>().unwrap()))
    .init(f32_tensor("c", &[5], &[1., 2., 3., 4., 5.]))
    .init(f32_tensor("sc", &[3], &[1., 2., 3.]))
    .init(f32_tensor("bi", &[3], &[0.5, 0., -0.5]))
    .init(f32_tensor("mu", &[3], &[0.1, 0.2, 0.3]))
    .init(f32_tensor("va", &[3], &[1., 4., 9.]))
    .n(node("Gemm", &["a", "b", "c"], &["g"], vec![int("transB", 1), float("alpha", 2.0), float("beta", 0.5)]))
    .n(node("Softmax", &["x"], &["s13"], vec![int("axis", 1)]))
    .n(node("BatchNormalization", &["x", "sc", "bi", "mu", "va"], &["bn"], vec![float("epsilon", 1e-3)]))
    .n(node("InstanceNormalization", &["x", "sc", "bi"], &["inn"], vec![]))
    .n(node("Identity", &["s13"], &["s11"], vec![]));
    let m = g.model();
    let a = rand(&[3, 4], s + 1);
    let x = rand(&[2, 3, 5, 5], s + 2);
    let out = m.run(&[("a", a.clone()), ("x", x.clone())]).unwrap();
    let b = rand(&[5, 4], s);
    let c = Var::from_vec(vec![1f32, 2., 3., 4., 5.], &[5]).unwrap();
    let want = matmul(&a, &b.transpose(0, 1).unwrap())
        .unwrap()
        .try_mul(2.0)
        .unwrap()
        .try_add(c.try_mul(0.5).unwrap())
        .unwrap();
    close(&out[0], &want, 1e-5);
    close(&out[2], &x.softmax(1).unwrap(), 1e-6);
    let sc = Var::from_vec(vec![1f32, 2., 3.], &[3]).unwrap();
    let bi = Var::from_vec(vec![0.5f32, 0., -0.5], &[3]).unwrap();
    let mu = Var::from_vec(vec![0.1f32, 0.2, 0.3], &[3]).unwrap();
    let va = Var::from_vec(vec![1f32, 4., 9.], &[3]).unwrap();
    let bn =
        batch_norm(&x, Some(RunningStats { mean: &mu, var: &va, momentum: 0.1 }), Some(&sc), Some(&bi), false, 1e-3)
            .unwrap();
    close(&out[3], &bn, 1e-5);
    close(&out[4], &instance_norm(&x, None, Some(&sc), Some(&bi), true, 1e-5).unwrap(), 1e-5);
    // opset 11 softmax flattens from the axis: normalises over C*H*W together
    let g11 = G::new(vec![vi("x", dt::FLOAT, &["2", "3", "5", "5"])], &["y"]).opset(11).n(node(
        "Softmax",
        &["x"],
        &["y"],
        vec![],
    ));
    let y = g11.model().run(&[("x", x.clone())]).unwrap().remove(0);
    let want = x.reshape(&[2, 75]).unwrap().softmax(1).unwrap().reshape(&[2, 3, 5, 5]).unwrap();
    close(&y, &want, 1e-6);
}

#[test]
fn unsupported_operator_attribute_and_value_are_named() {
    let x = || vec![vi("x", dt::FLOAT, &["4"])];
    let e = G::new(x(), &["y"]).n(node("NonMaxSuppression", &["x"], &["y"], vec![])).err();
    assert!(e.contains("NonMaxSuppression_0") && e.contains("operator NonMaxSuppression is not supported"), "{e}");
    let e = G::new(x(), &["y"]).n(node("Relu", &["x"], &["y"], vec![int("fancy", 1)])).err();
    assert!(e.contains("Relu_0") && e.contains("attribute \"fancy\""), "{e}");
    let e = G::new(x(), &["y"]).n(node("Pad", &["x"], &["y"], vec![string("mode", "wrap")])).err();
    assert!(e.contains("Pad_0") && e.contains("\"mode\" = \"wrap\""), "{e}");
    let e = G::new(x(), &["y"]).n(node("Relu", &["nope"], &["y"], vec![])).err();
    assert!(e.contains("\"nope\" is not produced"), "{e}");
}

#[test]
fn bad_inputs_and_files_give_one_clear_error() {
    let g = G::new(vec![vi("x", dt::FLOAT, &["1", "3", "h", "w"]), vi("y", dt::FLOAT, &["1", "3", "h", "w"])], &["z"])
        .n(node("Add", &["x", "y"], &["z"], vec![]));
    let m = g.model();
    let a = Var::zeros(&[1, 3, 4, 5], DType::F32);
    let e = m.run(&[("x", a.clone())]).unwrap_err().to_string();
    assert!(e.contains("input \"y\" is missing") && e.contains("[1, 3, h, w]"), "{e}");
    let e = m.run(&[("x", a.clone()), ("y", Var::zeros(&[1, 3, 4, 6], DType::F32))]).unwrap_err().to_string();
    assert!(e.contains("w = 6 here but w = 5"), "{e}");
    let e = m.run(&[("x", a.clone()), ("y", Var::zeros(&[1, 2, 4, 5], DType::F32))]).unwrap_err().to_string();
    assert!(e.contains("dim 1 must be 3"), "{e}");
    let e = m.run(&[("x", a.clone()), ("y", a.clone()), ("q", a.clone())]).unwrap_err().to_string();
    assert!(e.contains("no input \"q\""), "{e}");
    // truncated and non-ONNX files
    let bytes = g.bytes();
    let e = OnnxModel::from_bytes(&bytes[..bytes.len() / 2], "cut.onnx").unwrap_err().to_string();
    assert!(e.starts_with("cut.onnx:") && e.contains("truncated"), "{e}");
    let dir = std::env::temp_dir().join(format!("onnx-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = OnnxModel::load(dir.join("missing.onnx")).unwrap_err().to_string();
    assert!(e.contains("missing.onnx") && e.contains("cannot read"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
    // an initializer whose data does not fit its shape
    let e = G::new(vec![vi("x", dt::FLOAT, &["2"])], &["y"])
        .init(f32_tensor("w", &[3], &[1.0, 2.0]))
        .n(node("Add", &["x", "w"], &["y"], vec![]))
        .err();
    assert!(e.contains("initializer \"w\"") && e.contains("does not fit shape [3]"), "{e}");
    // dims whose product overflows (once a panic; found by malformed_files.rs), and
    // a huge shape with a few bytes of data
    let e = G::new(vec![vi("x", dt::FLOAT, &["2"])], &["y"])
        .init(f32_tensor("w", &[4, i64::MAX], &[1.0, 2.0]))
        .n(node("Add", &["x", "w"], &["y"], vec![]))
        .err();
    assert!(e.contains("initializer \"w\"") && e.contains("more elements than this machine can address"), "{e}");
    let e = G::new(vec![vi("x", dt::FLOAT, &["2"])], &["y"])
        .init(f32_tensor("w", &[1 << 62, 2], &[1.0, 2.0]))
        .n(node("Add", &["x", "w"], &["y"], vec![]))
        .err();
    assert!(e.contains("raw data of 8 bytes does not fit shape [4611686018427387904, 2]"), "{e}");
}

#[test]
fn pools_and_conv_transpose_match_the_framework_ops() {
    let s = seed();
    let x = rand(&[2, 3, 9, 8], s);
    let wt = rand(&[3, 2, 3, 3], s + 1);
    let g = G::new(vec![vi("x", dt::FLOAT, &["n", "3", "h", "w"])], &["mp", "ap", "api", "ct", "gap"])
        .init(f32_tensor("wt", &[3, 2, 3, 3], &wt.to_vec::<f32>().unwrap()))
        .n(node(
            "MaxPool",
            &["x"],
            &["mp"],
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
                int("ceil_mode", 1),
            ],
        ))
        .n(node(
            "AveragePool",
            &["x"],
            &["ap"],
            vec![ints("kernel_shape", &[2, 3]), ints("strides", &[2, 1]), ints("pads", &[1, 1, 1, 1])],
        ))
        .n(node(
            "AveragePool",
            &["x"],
            &["api"],
            vec![
                ints("kernel_shape", &[2, 3]),
                ints("strides", &[2, 1]),
                ints("pads", &[1, 1, 1, 1]),
                int("count_include_pad", 1),
            ],
        ))
        .n(node(
            "ConvTranspose",
            &["x", "wt"],
            &["ct"],
            vec![ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1]), ints("output_padding", &[1, 0])],
        ))
        .n(node("GlobalAveragePool", &["x"], &["gap"], vec![]));
    let out = g.model().run(&[("x", x.clone())]).unwrap();
    let mp = Pool2dOptions { kernel: [3, 3], stride: [2, 2], padding: [1, 1], dilation: [1, 1], ceil_mode: true };
    close(&out[0], &max_pool2d(&x, &mp).unwrap(), 0.0);
    let ap = Pool2dOptions { kernel: [2, 3], stride: [2, 1], padding: [1, 1], dilation: [1, 1], ceil_mode: false };
    close(&out[1], &avg_pool2d(&x, &ap, false, None).unwrap(), 1e-6);
    close(&out[2], &avg_pool2d(&x, &ap, true, None).unwrap(), 1e-6);
    let o = ConvTranspose2dOptions { stride: [2, 2], padding: [1, 1], output_padding: [1, 0], ..Default::default() };
    let want = conv_transpose2d(&x, &wt, None, &o).unwrap();
    assert_eq!(want.shape(), &[2, 2, 18, 15]);
    close(&out[3], &want, 1e-5);
    close(&out[4], &x.mean(&[2, 3], true).unwrap(), 1e-6);
}

#[test]
fn elementwise_and_selection_operators() {
    let s = seed();
    let x = rand(&[2, 3, 4], s);
    let y = rand(&[3, 1], s + 1);
    let z = rand(&[4], s + 2);
    let g = G::new(
        vec![vi("x", dt::FLOAT, &["2", "3", "4"]), vi("y", dt::FLOAT, &["3", "1"]), vi("z", dt::FLOAT, &["4"])],
        &["lr", "th", "er", "mn", "mx", "wh", "ex", "tl", "am", "mm"],
    )
    .init(i64_tensor("shape", &[2, 2, 3, 4]))
    .init(i64_tensor("reps", &[1, 2, 1]))
    .init(f32_tensor("m", &[4, 2], &[1.0, 0.5, -1.0, 2.0, 0.25, 0.0, 3.0, -2.0]))
    .n(node("LeakyRelu", &["x"], &["lr"], vec![float("alpha", 0.1)]))
    .n(node("Tanh", &["x"], &["th"], vec![]))
    .n(node("Erf", &["x"], &["er"], vec![]))
    .n(node("Min", &["x", "y", "z"], &["mn"], vec![]))
    .n(node("Max", &["x", "y", "z"], &["mx"], vec![]))
    .n(node("Greater", &["x", "y"], &["gt"], vec![]))
    .n(node("Where", &["gt", "x", "z"], &["wh"], vec![]))
    .n(node("Expand", &["y", "shape"], &["ex"], vec![]))
    .n(node("Tile", &["x", "reps"], &["tl"], vec![]))
    .n(node("ArgMax", &["x"], &["am"], vec![int("axis", 1), int("keepdims", 0)]))
    .n(node("MatMul", &["x", "m"], &["mm"], vec![]));
    let out = g.model().run(&[("x", x.clone()), ("y", y.clone()), ("z", z.clone())]).unwrap();
    close(&out[0], &x.leaky_relu(0.1).unwrap(), 1e-6);
    close(&out[1], &x.tanh(), 1e-6);
    let erf: Vec<f64> = x.to_vec_f64().unwrap().iter().map(|v| integration_tests::erf_ref(*v)).collect();
    close(&out[2], &Var::from_vec(erf.iter().map(|v| *v as f32).collect(), &[2, 3, 4]).unwrap(), 1e-6);
    close(&out[3], &x.minimum(&y).unwrap().minimum(&z).unwrap(), 0.0);
    close(&out[4], &x.maximum(&y).unwrap().maximum(&z).unwrap(), 0.0);
    close(&out[5], &Var::where_(&x.gt(&y).unwrap(), &x, &z).unwrap(), 0.0);
    close(&out[6], &y.expand(&[2, 2, 3, 4]).unwrap(), 0.0);
    assert_eq!(out[7].shape(), &[2, 6, 4]);
    close(&out[7], &x.repeat(&[1, 2, 1]).unwrap(), 0.0);
    assert_eq!(out[8].dtype(), DType::I64);
    assert_eq!(out[8].to_vec::<i64>().unwrap(), x.argmax(1, false).unwrap().to_vec::<i64>().unwrap());
    let m = Var::from_vec(vec![1.0f32, 0.5, -1.0, 2.0, 0.25, 0.0, 3.0, -2.0], &[4, 2]).unwrap();
    close(&out[9], &matmul(&x, &m).unwrap(), 1e-6);
}

#[test]
fn split_and_reductions_in_both_opset_forms() {
    let s = seed();
    let x = rand(&[2, 5, 3], s);
    // opset 13: Split sizes and ReduceSum axes as inputs, ReduceMean axes as attribute
    let g13 = G::new(vec![vi("x", dt::FLOAT, &["2", "5", "3"])], &["a", "b", "rs", "rm", "rx"])
        .opset(13)
        .init(i64_tensor("sizes", &[2, 3]))
        .init(i64_tensor("axes", &[0, 2]))
        .n(node("Split", &["x", "sizes"], &["a", "b"], vec![int("axis", 1)]))
        .n(node("ReduceSum", &["x", "axes"], &["rs"], vec![int("keepdims", 1)]))
        .n(node("ReduceMean", &["x"], &["rm"], vec![ints("axes", &[-1]), int("keepdims", 0)]))
        .n(node("ReduceMax", &["x"], &["rx"], vec![ints("axes", &[1])]));
    let out = g13.model().run(&[("x", x.clone())]).unwrap();
    close(&out[0], &x.narrow(1, 0, 2).unwrap(), 0.0);
    close(&out[1], &x.narrow(1, 2, 3).unwrap(), 0.0);
    close(&out[2], &x.sum(&[0, 2], true).unwrap(), 1e-6);
    close(&out[3], &x.mean(&[-1], false).unwrap(), 1e-6);
    close(&out[4], &x.max(&[1], true).unwrap(), 0.0);
    // opset 18: Split by num_outputs (uneven: 2, 2, 1), ReduceMean axes as an input
    let g18 = G::new(vec![vi("x", dt::FLOAT, &["2", "5", "3"])], &["p", "q", "r", "rm"])
        .opset(18)
        .init(i64_tensor("axes", &[1]))
        .n(node("Split", &["x"], &["p", "q", "r"], vec![int("axis", 1), int("num_outputs", 3)]))
        .n(node("ReduceMean", &["x", "axes"], &["rm"], vec![]));
    let out = g18.model().run(&[("x", x.clone())]).unwrap();
    let sizes: Vec<usize> = out[..3].iter().map(|v| v.shape()[1]).collect();
    assert_eq!(sizes, [2, 2, 1]);
    close(&out[2], &x.narrow(1, 4, 1).unwrap(), 0.0);
    close(&out[3], &x.mean(&[1], true).unwrap(), 1e-6);
}

/// An operator, its attributes, its input and the formula it computes.
type UnaryCase<'a> = (&'static str, Vec<AttributeProto>, &'a Var, fn(f64) -> f64);

/// Host values of `v` as f64.
fn host(v: &Var) -> Vec<f64> {
    v.to_vec_f64().unwrap()
}

#[test]
fn every_remaining_elementwise_operator_against_its_formula() {
    let s = seed();
    let x = rand(&[3, 4], s); // any sign
    let p = rand(&[3, 4], s + 1).abs().try_add(0.1).unwrap(); // positive
    let unary: Vec<UnaryCase> = vec![
        ("Abs", vec![], &x, f64::abs),
        ("Ceil", vec![], &x, f64::ceil),
        ("Floor", vec![], &x, f64::floor),
        ("Round", vec![], &x, |v| v.round_ties_even()),
        ("Cos", vec![], &x, f64::cos),
        ("Sin", vec![], &x, f64::sin),
        ("Exp", vec![], &x, f64::exp),
        ("Log", vec![], &p, f64::ln),
        ("Neg", vec![], &x, |v| -v),
        ("Reciprocal", vec![], &p, |v| 1.0 / v),
        ("Sigmoid", vec![], &x, |v| 1.0 / (1.0 + (-v).exp())),
        ("Softplus", vec![], &x, |v| v.exp().ln_1p()),
        ("Sqrt", vec![], &p, f64::sqrt),
        ("Elu", vec![float("alpha", 1.0)], &x, |v| if v > 0.0 { v } else { v.exp() - 1.0 }),
        ("HardSigmoid", vec![float("alpha", 0.2), float("beta", 0.5)], &x, |v| (0.2 * v + 0.5).clamp(0.0, 1.0)),
        ("HardSwish", vec![], &x, |v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
        ("Mish", vec![], &x, |v| v * v.exp().ln_1p().tanh()),
        ("Softsign", vec![], &x, |v| v / (1.0 + v.abs())),
        ("Selu", vec![float("alpha", 1.5), float("gamma", 1.1)], &x, |v| {
            1.1 * if v > 0.0 { v } else { 1.5 * (v.exp() - 1.0) }
        }),
        ("Selu", vec![], &x, |v| {
            let (a, g) = (1.673_263_192_176_818_8, 1.050_701_022_148_132_3); // the spec's f32 values
            g * if v > 0.0 { v } else { a * (v.exp() - 1.0) }
        }),
        ("Celu", vec![float("alpha", 0.5)], &x, |v| v.max(0.0) + (0.5 * ((v / 0.5).exp() - 1.0)).min(0.0)),
        ("ThresholdedRelu", vec![float("alpha", 0.3)], &x, |v| if v > 0.3 { v } else { 0.0 }),
        ("Dropout", vec![], &x, |v| v),
    ];
    for (op, attrs, input, f) in unary {
        let g = G::new(vec![vi("a", dt::FLOAT, &["3", "4"])], &["o"]).n(node(op, &["a"], &["o"], attrs));
        let got = host(&g.model().run(&[("a", input.clone())]).unwrap()[0]);
        for (k, (a, v)) in host(input).iter().zip(&got).enumerate() {
            let want = f(*a);
            assert!((v - want).abs() <= 2e-6 * (1.0 + want.abs()), "{op} element {k}: {v} vs {want} (input {a})");
        }
    }
    // Gelu (opset 20), exact and tanh forms
    for (approx, f) in [
        ("none", (|v: f64| 0.5 * v * (1.0 + integration_tests::erf_ref(v / 2f64.sqrt()))) as fn(f64) -> f64),
        ("tanh", |v: f64| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())),
    ] {
        let g = G::new(vec![vi("a", dt::FLOAT, &["3", "4"])], &["o"]).opset(20).n(node(
            "Gelu",
            &["a"],
            &["o"],
            vec![string("approximate", approx)],
        ));
        let got = host(&g.model().run(&[("a", x.clone())]).unwrap()[0]);
        for (a, v) in host(&x).iter().zip(&got) {
            assert!((v - f(*a)).abs() <= 2e-6 * (1.0 + v.abs()), "Gelu {approx}: {v} vs {}", f(*a));
        }
    }
    // binary and variadic arithmetic, Pow with a constant and a tensor exponent
    let g = G::new(
        vec![vi("a", dt::FLOAT, &["3", "4"]), vi("b", dt::FLOAT, &["3", "4"])],
        &["su", "mu", "di", "sm", "me", "pw", "pt"],
    )
    .init(f32_tensor("three", &[], &[3.0]))
    .n(node("Sub", &["a", "b"], &["su"], vec![]))
    .n(node("Mul", &["a", "b"], &["mu"], vec![]))
    .n(node("Div", &["a", "b"], &["di"], vec![]))
    .n(node("Sum", &["a", "b", "a"], &["sm"], vec![]))
    .n(node("Mean", &["a", "b", "b"], &["me"], vec![]))
    .n(node("Pow", &["a", "three"], &["pw"], vec![]))
    .n(node("Pow", &["b", "a"], &["pt"], vec![]));
    let out = g.model().run(&[("a", x.clone()), ("b", p.clone())]).unwrap();
    let (a, b) = (host(&x), host(&p));
    let forms: [fn(f64, f64) -> f64; 7] = [
        |a, b| a - b,
        |a, b| a * b,
        |a, b| a / b,
        |a, b| a + b + a,
        |a, b| (a + 2.0 * b) / 3.0,
        |a, _| a.powi(3),
        |a, b| b.powf(a),
    ];
    for (i, f) in forms.iter().enumerate() {
        for (k, v) in host(&out[i]).iter().enumerate() {
            let want = f(a[k], b[k]);
            assert!((v - want).abs() <= 3e-6 * (1.0 + want.abs()), "output {i} element {k}: {v} vs {want}");
        }
    }
}

#[test]
fn comparisons_logic_clip_prelu_and_size() {
    let s = seed();
    let x = rand(&[2, 3, 2], s);
    let y = x.try_mul(-1.0).unwrap().maximum(0.2).unwrap(); // equal to x in some places
    let g = G::new(
        vec![vi("x", dt::FLOAT, &["2", "3", "2"]), vi("y", dt::FLOAT, &["2", "3", "2"])],
        &["eq", "lt", "le", "ge", "an", "or", "no", "cl", "pr", "sz", "c"],
    )
    .init(f32_tensor("lo", &[], &[-0.5]))
    .init(f32_tensor("hi", &[], &[0.75]))
    .init(f32_tensor("slope", &[3, 1], &[0.1, 0.2, 0.3]))
    .n(node("Equal", &["x", "y"], &["eq"], vec![]))
    .n(node("Less", &["x", "y"], &["lt"], vec![]))
    .n(node("LessOrEqual", &["x", "y"], &["le"], vec![]))
    .n(node("GreaterOrEqual", &["x", "y"], &["ge"], vec![]))
    .n(node("And", &["lt", "ge"], &["an"], vec![]))
    .n(node("Or", &["lt", "eq"], &["or"], vec![]))
    .n(node("Not", &["le"], &["no"], vec![]))
    .n(node("Clip", &["x", "lo", "hi"], &["cl"], vec![]))
    .n(node("PRelu", &["x", "slope"], &["pr"], vec![]))
    .n(node("Size", &["x"], &["sz"], vec![]))
    .n(NodeProto {
        attribute: vec![AttributeProto {
            name: "value".into(),
            r#type: at::TENSOR,
            t: Some(f32_tensor("", &[2], &[1.5, -2.5])),
            ..Default::default()
        }],
        ..node("Constant", &[], &["c"], vec![])
    });
    let out = g.model().run(&[("x", x.clone()), ("y", y.clone())]).unwrap();
    let (a, b) = (host(&x), host(&y));
    let bools = |v: &Var| -> Vec<bool> { host(v).iter().map(|x| *x != 0.0).collect() };
    let cmp: [fn(f64, f64) -> bool; 7] = [
        |a, b| a == b,
        |a, b| a < b,
        |a, b| a <= b,
        |a, b| a >= b,
        |a, b| a < b && a >= b,
        |a, b| a <= b, // Or(Less, Equal)
        |a, b| a > b,
    ];
    for (i, f) in cmp.iter().enumerate() {
        assert_eq!(out[i].dtype(), DType::Bool, "output {i}");
        let want: Vec<bool> = a.iter().zip(&b).map(|(a, b)| f(*a, *b)).collect();
        assert_eq!(bools(&out[i]), want, "output {i}");
    }
    close(&out[7], &x.clamp(Some(-0.5), Some(0.75)).unwrap(), 0.0);
    let slope = [0.1, 0.2, 0.3];
    let pr: Vec<f32> =
        a.iter().enumerate().map(|(k, v)| if *v >= 0.0 { *v } else { v * slope[(k / 2) % 3] } as f32).collect();
    close(&out[8], &Var::from_vec(pr, &[2, 3, 2]).unwrap(), 1e-6);
    assert_eq!(out[9].to_vec::<i64>().unwrap(), vec![12]);
    assert_eq!(out[10].to_vec::<f32>().unwrap(), vec![1.5, -2.5]);
}

#[test]
fn remaining_reductions_layer_norm_log_softmax_and_global_max() {
    let s = seed();
    let x = rand(&[2, 3, 4, 5], s);
    let g = G::new(
        vec![vi("x", dt::FLOAT, &["2", "3", "4", "5"])],
        &["l2", "mn", "pd", "ss", "ln", "ls", "gm", "ai", "l1", "lse", "lsum"],
    )
    .init(f32_tensor("gamma", &[5], &[1.0, 0.5, 2.0, -1.0, 0.25]))
    .init(f32_tensor("beta", &[5], &[0.0, 0.1, -0.2, 0.3, 0.0]))
    .n(node("ReduceL2", &["x"], &["l2"], vec![ints("axes", &[3])]))
    .n(node("ReduceMin", &["x"], &["mn"], vec![ints("axes", &[1, 2]), int("keepdims", 0)]))
    .n(node("ReduceProd", &["x"], &["pd"], vec![ints("axes", &[1])]))
    .n(node("ReduceSumSquare", &["x"], &["ss"], vec![ints("axes", &[0])]))
    .n(node("LayerNormalization", &["x", "gamma", "beta"], &["ln"], vec![int("axis", -1), float("epsilon", 1e-5)]))
    .n(node("LogSoftmax", &["x"], &["ls"], vec![int("axis", 2)]))
    .n(node("GlobalMaxPool", &["x"], &["gm"], vec![]))
    .n(node("ArgMin", &["x"], &["ai"], vec![int("axis", 3), int("keepdims", 1)]))
    .n(node("ReduceL1", &["x"], &["l1"], vec![ints("axes", &[1, 3])]))
    .n(node("ReduceLogSumExp", &["x"], &["lse"], vec![ints("axes", &[2]), int("keepdims", 0)]))
    .n(node("ReduceLogSum", &["l1"], &["lsum"], vec![ints("axes", &[0])]));
    let out = g.model().run(&[("x", x.clone())]).unwrap();
    let sq = x.try_mul(&x).unwrap();
    close(&out[0], &sq.sum(&[3], true).unwrap().sqrt(), 1e-6);
    close(&out[1], &x.min(&[1, 2], false).unwrap(), 0.0);
    close(&out[2], &x.prod(&[1], true).unwrap(), 1e-6);
    close(&out[3], &sq.sum(&[0], true).unwrap(), 1e-6);
    let gamma = Var::from_vec(vec![1.0f32, 0.5, 2.0, -1.0, 0.25], &[5]).unwrap();
    let beta = Var::from_vec(vec![0.0f32, 0.1, -0.2, 0.3, 0.0], &[5]).unwrap();
    close(&out[4], &layer_norm(&x, &[5], Some(&gamma), Some(&beta), 1e-5).unwrap(), 1e-5);
    close(&out[5], &x.log_softmax(2).unwrap(), 1e-6);
    close(&out[6], &x.max(&[2, 3], true).unwrap(), 0.0);
    assert_eq!(out[7].to_vec::<i64>().unwrap(), x.argmin(3, true).unwrap().to_vec::<i64>().unwrap());
    // against f64 loops
    let xs = host(&x);
    let at = |i: usize, j: usize, k: usize, l: usize| xs[((i * 3 + j) * 4 + k) * 5 + l];
    let l1: Vec<f64> = (0..2 * 4)
        .map(|ik| (0..3).flat_map(|j| (0..5).map(move |l| (j, l))).map(|(j, l)| at(ik / 4, j, ik % 4, l).abs()).sum())
        .collect();
    assert_eq!(out[8].shape(), &[2, 1, 4, 1]);
    for (got, want) in host(&out[8]).iter().zip(&l1) {
        assert!((got - want).abs() <= 1e-5 * want, "ReduceL1: {got} vs {want}");
    }
    assert_eq!(out[9].shape(), &[2, 3, 5]);
    for (n, got) in host(&out[9]).iter().enumerate() {
        let (i, j, l) = (n / 15, n / 5 % 3, n % 5);
        let want = (0..4).map(|k| at(i, j, k, l).exp()).sum::<f64>().ln();
        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "ReduceLogSumExp: {got} vs {want}");
    }
    assert_eq!(out[10].shape(), &[1, 1, 4, 1]);
    for (k, got) in host(&out[10]).iter().enumerate() {
        let want = (l1[k] + l1[4 + k]).ln();
        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "ReduceLogSum: {got} vs {want}");
    }
}

/// Values a damaged model can hold where a real one never does: extreme slice
/// steps, axes of scalars, short `output_shape`, huge dilations and pads. Each once
/// panicked (found by `malformed_files.rs`); now a result or an error naming the
/// model and the node.
#[test]
fn extreme_attributes_and_constants_give_results_or_errors() {
    let x = rand(&[4, 5], seed());
    let run = |g: G, input: &Var| g.model().run(&[("x", input.clone())]).map_err(|e| e.to_string());
    let slice = |st: i64, en: i64, step: i64| {
        let g = G::new(vec![vi("x", dt::FLOAT, &["4", "5"])], &["y"])
            .init(i64_tensor("st", &[st]))
            .init(i64_tensor("en", &[en]))
            .init(i64_tensor("ax", &[0]))
            .init(i64_tensor("sp", &[step]))
            .n(node("Slice", &["x", "st", "en", "ax", "sp"], &["y"], vec![]));
        run(g, &x).unwrap().remove(0)
    };
    // a step of i64::MIN takes one row from the start, or none
    assert_eq!(slice(3, -10, i64::MIN).to_vec::<f32>().unwrap(), x.narrow(0, 3, 1).unwrap().to_vec::<f32>().unwrap());
    assert_eq!(slice(0, 4, i64::MIN).shape(), &[0, 5]);
    assert_eq!(slice(0, 4, i64::MAX).to_vec::<f32>().unwrap(), x.narrow(0, 0, 1).unwrap().to_vec::<f32>().unwrap());
    // a Slice naming more axes than the input has
    let g = G::new(vec![vi("x", dt::FLOAT, &["4", "5"])], &["y"])
        .init(i64_tensor("st", &[0, 0, 0]))
        .init(i64_tensor("en", &[1, 1, 1]))
        .n(node("Slice", &["x", "st", "en"], &["y"], vec![]));
    let e = run(g, &x).unwrap_err();
    assert!(e.contains("test.onnx") && e.contains("axis 2 is out of range for the input of shape [4, 5]"), "{e}");
    // axes of a scalar
    let s = Var::scalar(2.0f32);
    for op in ["Split", "Gather", "Softmax"] {
        let inputs: &[&str] = if op == "Gather" { &["x", "i"] } else { &["x"] };
        let g = G::new(vec![vi("x", dt::FLOAT, &[])], &["y"]).init(i64_tensor("i", &[0])).n(node(
            op,
            inputs,
            &["y"],
            vec![int("axis", 0)],
        ));
        let e = run(g, &s).unwrap_err();
        assert!(e.contains("test.onnx") && e.contains("axis 0 is out of range for rank 0"), "{op}: {e}");
    }
    // ConvTranspose with an output_shape of one value, Conv with a huge dilation
    let img = rand(&[1, 2, 6, 6], seed() + 1);
    let w = rand(&[2, 2, 3, 3], seed() + 2);
    let conv = |op: &str, attrs: Vec<AttributeProto>| {
        let g = G::new(vec![vi("x", dt::FLOAT, &["1", "2", "6", "6"])], &["y"])
            .init(f32_tensor("w", &[2, 2, 3, 3], &w.to_vec::<f32>().unwrap()))
            .n(node(op, &["x", "w"], &["y"], attrs));
        run(g, &img).map(|mut v| v.remove(0).shape().to_vec())
    };
    let e = conv("ConvTranspose", vec![ints("output_shape", &[5])]).unwrap_err();
    assert!(e.contains("\"output_shape\" = [5] must hold the 2 spatial sizes"), "{e}");
    assert_eq!(conv("ConvTranspose", vec![ints("output_shape", &[6, 8])]).unwrap(), vec![1, 2, 6, 8]);
    let e = conv("ConvTranspose", vec![ints("output_shape", &[8, 1 << 40])]).unwrap_err();
    assert!(e.contains("= [8, 1099511627776]: each size must be 1 to the unpadded output [8, 8]"), "{e}");
    let e = conv("Conv", vec![ints("dilations", &[1 << 40, 1])]).unwrap_err();
    assert!(e.contains("test.onnx") && e.contains("dilation [1099511627776, 1] is too large"), "{e}");
    let e = conv("Conv", vec![string("auto_pad", "SAME_UPPER"), ints("dilations", &[i64::MAX, 1])]).unwrap_err();
    assert!(e.contains("auto_pad SAME_UPPER") && e.contains("do not fit the input [6, 6]"), "{e}");
    // pads that crop everything twice over, or grow past i64
    let pad = |pads: &[i64]| {
        let g = G::new(vec![vi("x", dt::FLOAT, &["4", "5"])], &["y"]).init(i64_tensor("p", pads)).n(node(
            "Pad",
            &["x", "p"],
            &["y"],
            vec![],
        ));
        run(g, &x).unwrap_err()
    };
    let e = pad(&[0, i64::MIN, 0, i64::MIN]);
    assert!(e.contains("crop more than axis 1 of size 5"), "{e}");
    let e = pad(&[0, 1 << 62, 0, 1 << 62]);
    assert!(e.contains("test.onnx") && e.contains("is too large"), "{e}");
    // Resize to 2^40 columns (its index table, one i64 per output column, was
    // allocated before any size check: 8 TiB), or by an infinite scale
    let resize = |init: TensorProto, inputs: &[&str]| {
        let g = G::new(vec![vi("x", dt::FLOAT, &["4", "5"])], &["y"]).init(init);
        run(g.n(node("Resize", inputs, &["y"], vec![])), &x).unwrap_err()
    };
    let e = resize(i64_tensor("sz", &[4, 1 << 40]), &["x", "", "", "sz"]);
    assert!(e.contains("the output size [4, 1099511627776] (from [4, 5]) is too large"), "{e}");
    let e = resize(f32_tensor("sc", &[2], &[1.0, f32::INFINITY]), &["x", "", "sc"]);
    assert!(e.contains("scales [1.0, inf] must be positive and finite"), "{e}");
}

#[test]
fn depth_to_space_and_space_to_depth_match_onnxruntime() {
    // expected values: onnxruntime 1.x on these graphs (opset 13), inputs 0..48
    let iota = |shape: &[usize]| Var::from_vec((0..48).map(|v| v as f32).collect(), shape).unwrap();
    let dcr = [
        0, 12, 1, 13, 2, 14, 24, 36, 25, 37, 26, 38, 3, 15, 4, 16, 5, 17, 27, 39, 28, 40, 29, 41, 6, 18, 7, 19, 8, 20,
        30, 42, 31, 43, 32, 44, 9, 21, 10, 22, 11, 23, 33, 45, 34, 46, 35, 47,
    ];
    let crd = [
        0, 6, 1, 7, 2, 8, 12, 18, 13, 19, 14, 20, 3, 9, 4, 10, 5, 11, 15, 21, 16, 22, 17, 23, 24, 30, 25, 31, 26, 32,
        36, 42, 37, 43, 38, 44, 27, 33, 28, 34, 29, 35, 39, 45, 40, 46, 41, 47,
    ];
    let s2d = [
        0, 2, 4, 12, 14, 16, 24, 26, 28, 36, 38, 40, 1, 3, 5, 13, 15, 17, 25, 27, 29, 37, 39, 41, 6, 8, 10, 18, 20, 22,
        30, 32, 34, 42, 44, 46, 7, 9, 11, 19, 21, 23, 31, 33, 35, 43, 45, 47,
    ];
    let d2s = |mode: Option<&str>| {
        let mut attrs = vec![int("blocksize", 2)];
        attrs.extend(mode.map(|m| string("mode", m)));
        G::new(vec![vi("x", dt::FLOAT, &["1", "c", "h", "w"])], &["y"]).n(node("DepthToSpace", &["x"], &["y"], attrs))
    };
    let values = |v: &Var| v.to_vec::<f32>().unwrap().iter().map(|&f| f as i64).collect::<Vec<_>>();
    for (mode, want) in [(None, dcr), (Some("DCR"), dcr), (Some("CRD"), crd)] {
        let y = d2s(mode).model().run(&[("x", iota(&[1, 8, 2, 3]))]).unwrap().remove(0);
        assert_eq!(y.shape(), &[1, 2, 4, 6], "{mode:?}");
        assert_eq!(values(&y), want, "DepthToSpace {mode:?}");
    }
    let g = G::new(vec![vi("x", dt::FLOAT, &["1", "c", "h", "w"])], &["y"]).n(node(
        "SpaceToDepth",
        &["x"],
        &["y"],
        vec![int("blocksize", 2)],
    ));
    let y = g.model().run(&[("x", iota(&[1, 2, 4, 6]))]).unwrap().remove(0);
    assert_eq!(y.shape(), &[1, 8, 2, 3]);
    assert_eq!(values(&y), s2d);
    // SpaceToDepth undoes DepthToSpace in DCR mode
    let back = g.model().run(&[("x", Var::from_vec(dcr.iter().map(|&v| v as f32).collect(), &[1, 2, 4, 6]).unwrap())]);
    assert_eq!(values(&back.unwrap()[0]), (0..48).collect::<Vec<i64>>());
    // errors name the node and the shapes
    let e = g.model().run(&[("x", iota(&[1, 2, 3, 8]))]).unwrap_err().to_string();
    assert!(e.contains("SpaceToDepth_0") && e.contains("[1, 2, 3, 8] is not divisible into 2x2 blocks"), "{e}");
    let e = d2s(None).model().run(&[("x", iota(&[1, 6, 2, 4]))]).unwrap_err().to_string();
    assert!(
        e.contains("DepthToSpace_0")
            && e.contains("the 6 channels of [1, 6, 2, 4] are not divisible by blocksize² = 4"),
        "{e}"
    );
    let e = d2s(Some("XYZ")).err();
    assert!(e.contains("DepthToSpace_0") && e.contains("\"mode\" = \"XYZ\""), "{e}");
    let e = G::new(vec![vi("x", dt::FLOAT, &["1", "c", "h", "w"])], &["y"])
        .n(node("DepthToSpace", &["x"], &["y"], vec![]))
        .model()
        .run(&[("x", iota(&[1, 8, 2, 3]))])
        .unwrap_err()
        .to_string();
    assert!(e.contains("DepthToSpace_0") && e.contains("the attribute blocksize is required"), "{e}");
}

/// GatherElements and ScatterElements on the ONNX specification's examples, with
/// negative indices and every reduction.
#[test]
fn gather_and_scatter_elements_follow_the_spec() {
    let i64s = |name: &str, dims: &[i64], v: &[i64]| TensorProto { dims: dims.to_vec(), ..i64_tensor(name, v) };
    let g = G::new(vec![vi("x", dt::FLOAT, &["3", "3"])], &["a", "b", "c"])
        .init(i64s("i0", &[2, 3], &[1, 2, 0, 2, 0, 0]))
        .init(i64s("i1", &[2, 2], &[0, 0, -2, 0]))
        .init(i64s("s0", &[2, 3], &[1, 0, 2, 0, 2, 1]))
        .init(f32_tensor("u0", &[2, 3], &[1.0, 1.1, 1.2, 2.0, 2.1, 2.2]))
        .init(f32_tensor("zeros", &[3, 3], &[0.0; 9]))
        .n(node("GatherElements", &["x", "i0"], &["a"], vec![int("axis", 0)]))
        .n(node("GatherElements", &["x", "i1"], &["b"], vec![int("axis", 1)]))
        .n(node("ScatterElements", &["zeros", "s0", "u0"], &["c"], vec![int("axis", 0)]));
    let x = Var::from_vec((1..=9).map(|v| v as f32).collect(), &[3, 3]).unwrap();
    let out = g.model().run(&[("x", x)]).unwrap();
    assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![4.0, 8.0, 3.0, 7.0, 2.0, 3.0]);
    // picks from rows 0 and 1 (index -2 is column 1)
    assert_eq!(out[1].to_vec::<f32>().unwrap(), vec![1.0, 1.0, 5.0, 4.0]);
    assert_eq!(out[2].to_vec::<f32>().unwrap(), vec![2.0, 1.1, 0.0, 1.0, 0.0, 2.2, 0.0, 2.1, 1.2]);
    // data [[1, 2, 3, 4, 5]], indices [[1, -2]] (column 3) or the duplicate [[1, 1]]
    for (reduction, idx, want) in [
        ("none", [1i64, -2], [1.0f32, 1.1, 3.0, 2.1, 5.0]),
        ("add", [1, 1], [1.0, 5.2, 3.0, 4.0, 5.0]),
        ("mul", [1, 1], [1.0, 2.0 * 1.1 * 2.1, 3.0, 4.0, 5.0]),
        ("max", [1, 1], [1.0, 2.1, 3.0, 4.0, 5.0]),
        ("min", [1, 1], [1.0, 1.1, 3.0, 4.0, 5.0]),
    ] {
        let g = G::new(vec![vi("d", dt::FLOAT, &["1", "5"])], &["y"])
            .init(i64s("i", &[1, 2], &idx))
            .init(f32_tensor("u", &[1, 2], &[1.1, 2.1]))
            .n(node("ScatterElements", &["d", "i", "u"], &["y"], vec![int("axis", 1), string("reduction", reduction)]))
            .opset(18);
        let d = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0], &[1, 5]).unwrap();
        let y = g.model().run(&[("d", d)]).unwrap();
        assert_values_close_f32(&y[0].to_vec::<f32>().unwrap(), &want, reduction);
    }
    let bad = G::new(vec![vi("d", dt::FLOAT, &["1", "5"])], &["y"])
        .init(i64s("i", &[1, 2], &[1, 1]))
        .init(f32_tensor("u", &[1, 2], &[1.1, 2.1]))
        .n(node("ScatterElements", &["d", "i", "u"], &["y"], vec![string("reduction", "mean")]))
        .opset(18)
        .err();
    assert!(bad.contains("ScatterElements") && bad.contains("reduction") && bad.contains("mean"), "{bad}");
}

fn assert_values_close_f32(got: &[f32], want: &[f32], ctx: &str) {
    assert_eq!(got.len(), want.len(), "{ctx}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{ctx}: {got:?} vs {want:?}");
    }
}

/// CumSum (exclusive, reverse, integer dtype kept) and Trilu on the specification's
/// examples.
#[test]
fn cumsum_and_trilu_follow_the_spec() {
    let mut axis = i64_tensor("axis", &[0]);
    axis.dims = vec![];
    for (exclusive, reverse, want) in [
        (0, 0, [1.0f32, 3.0, 6.0, 10.0, 15.0]),
        (1, 0, [0.0, 1.0, 3.0, 6.0, 10.0]),
        (0, 1, [15.0, 14.0, 12.0, 9.0, 5.0]),
        (1, 1, [14.0, 12.0, 9.0, 5.0, 0.0]),
    ] {
        let g = G::new(vec![vi("x", dt::FLOAT, &["5"])], &["y"]).init(axis.clone()).n(node(
            "CumSum",
            &["x", "axis"],
            &["y"],
            vec![int("exclusive", exclusive), int("reverse", reverse)],
        ));
        let x = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0], &[5]).unwrap();
        let y = g.model().run(&[("x", x)]).unwrap();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), want.to_vec(), "exclusive {exclusive} reverse {reverse}");
    }
    let mut last = i64_tensor("axis", &[-1]);
    last.dims = vec![];
    let g = G::new(vec![vi("x", dt::INT64, &["2", "3"])], &["y"]).init(last).n(node(
        "CumSum",
        &["x", "axis"],
        &["y"],
        vec![],
    ));
    let y = g.model().run(&[("x", Var::from_vec(vec![1i64, 2, 3, 4, 5, 6], &[2, 3]).unwrap())]).unwrap();
    assert_eq!(y[0].dtype(), DType::I64);
    assert_eq!(y[0].to_vec::<i64>().unwrap(), vec![1, 3, 6, 4, 9, 15]);
    let mut k = i64_tensor("k", &[-1]);
    k.dims = vec![];
    for upper in [1, 0] {
        let g = G::new(vec![vi("x", dt::FLOAT, &["4", "5"])], &["a", "b"])
            .init(k.clone())
            .n(node("Trilu", &["x", "k"], &["a"], vec![int("upper", upper)]))
            .n(node("Trilu", &["x"], &["b"], vec![int("upper", upper)]));
        let x = Var::from_vec((0..20).map(|v| v as f32 + 1.0).collect(), &[4, 5]).unwrap();
        let out = g.model().run(&[("x", x)]).unwrap();
        for (o, k) in [(&out[0], -1i64), (&out[1], 0)] {
            let want: Vec<f32> = (0..20i64)
                .map(|p| {
                    let (i, j) = (p / 5, p % 5);
                    let keep = if upper == 1 { j - i >= k } else { j - i <= k };
                    if keep {
                        p as f32 + 1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            assert_eq!(o.to_vec::<f32>().unwrap(), want, "upper {upper} k {k}");
        }
    }
}

/// TopK on the specification's example (largest, then smallest), with its indices.
#[test]
fn topk_follows_the_spec() {
    for (largest, want_v, want_i) in [
        (1, vec![3.0f32, 2.0, 1.0, 7.0, 6.0, 5.0, 11.0, 10.0, 9.0], vec![3i64, 2, 1, 3, 2, 1, 3, 2, 1]),
        (0, vec![0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0], vec![0, 1, 2, 0, 1, 2, 0, 1, 2]),
    ] {
        let g = G::new(vec![vi("x", dt::FLOAT, &["3", "4"])], &["v", "i"]).init(i64_tensor("k", &[3])).n(node(
            "TopK",
            &["x", "k"],
            &["v", "i"],
            vec![int("axis", 1), int("largest", largest)],
        ));
        let x = Var::from_vec((0..12).map(|v| v as f32).collect(), &[3, 4]).unwrap();
        let out = g.model().run(&[("x", x)]).unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), want_v, "largest {largest}");
        assert_eq!(out[1].to_vec::<i64>().unwrap(), want_i, "largest {largest}");
    }
}
