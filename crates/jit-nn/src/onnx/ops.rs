//! ONNX operators lowered onto the framework's operators. Each arm of [`eval`]
//! follows the operator's definition in the ONNX specification (opset 7 to 21);
//! attributes are checked by name at import ([`check_node`]) and by value here.

use super::proto::{attribute_type as at, AttributeProto, NodeProto};
use super::tensor::{dtype_of, elem_of, int_range, to_value};
use super::Value;
use crate::prelude::*;
use jit_core::{broadcast_shapes, IndexExpr as E};

/// The operators the importer understands.
pub const SUPPORTED_OPS: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Cos",
    "CumSum",
    "DepthToSpace",
    "DequantizeLinear",
    "Div",
    "Dropout",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mish",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pad",
    "Pow",
    "PRelu",
    "QuantizeLinear",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "Round",
    "ScatterElements",
    "Selu",
    "Shape",
    "Sigmoid",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
];

/// The attributes each operator accepts (any other is refused at import).
fn known_attributes(op: &str) -> Option<&'static [&'static str]> {
    Some(match op {
        "Abs" | "Add" | "And" | "Ceil" | "Cos" | "Div" | "Equal" | "Erf" | "Exp" | "Floor" | "Greater"
        | "GreaterOrEqual" | "HardSwish" | "Identity" | "Less" | "LessOrEqual" | "Log" | "MatMul" | "Max" | "Mean"
        | "Min" | "Mul" | "Neg" | "Not" | "Or" | "Pow" | "PRelu" | "Reciprocal" | "Relu" | "Round" | "Sigmoid"
        | "Sin" | "Size" | "Softplus" | "Sqrt" | "Sub" | "Sum" | "Tanh" | "Tile" | "Where" | "Expand"
        | "GlobalAveragePool" | "GlobalMaxPool" | "Mish" | "Softsign" => &[],
        "ArgMax" | "ArgMin" => &["axis", "keepdims", "select_last_index"],
        "AveragePool" => {
            &["auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads", "strides"]
        }
        "BatchNormalization" => &["epsilon", "momentum", "training_mode", "spatial"],
        "Cast" => &["to", "saturate", "round_mode"],
        "Clip" => &["min", "max"],
        "Concat" => &["axis"],
        "Constant" => &[
            "value",
            "value_float",
            "value_floats",
            "value_int",
            "value_ints",
            "value_string",
            "value_strings",
            "sparse_value",
        ],
        "ConstantOfShape" => &["value"],
        "Conv" => &["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"],
        "ConvTranspose" => {
            &["auto_pad", "dilations", "group", "kernel_shape", "output_padding", "output_shape", "pads", "strides"]
        }
        "DepthToSpace" => &["blocksize", "mode"],
        "SpaceToDepth" => &["blocksize"],
        "DequantizeLinear" => &["axis", "block_size"],
        "QuantizeLinear" => &["axis", "block_size", "saturate", "output_dtype"],
        "Dropout" => &["ratio", "seed"],
        "Elu" | "Celu" | "ThresholdedRelu" => &["alpha"],
        "Selu" => &["alpha", "gamma"],
        "Flatten" => &["axis"],
        "Gather" | "GatherElements" => &["axis"],
        "CumSum" => &["exclusive", "reverse"],
        "Trilu" => &["upper"],
        "TopK" => &["axis", "largest", "sorted"],
        "ScatterElements" => &["axis", "reduction"],
        "Gelu" => &["approximate"],
        "Gemm" => &["alpha", "beta", "transA", "transB"],
        "HardSigmoid" => &["alpha", "beta"],
        "InstanceNormalization" => &["epsilon"],
        "LayerNormalization" => &["axis", "epsilon", "stash_type"],
        "LeakyRelu" => &["alpha"],
        "LogSoftmax" | "Softmax" => &["axis"],
        "MaxPool" => &["auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"],
        "Pad" => &["mode", "pads", "value"],
        "ReduceL1" | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceMax" | "ReduceMean" | "ReduceMin"
        | "ReduceProd" | "ReduceSum" | "ReduceSumSquare" => &["axes", "keepdims", "noop_with_empty_axes"],
        "Reshape" => &["allowzero"],
        "Resize" => &[
            "antialias",
            "axes",
            "coordinate_transformation_mode",
            "cubic_coeff_a",
            "exclude_outside",
            "extrapolation_value",
            "keep_aspect_ratio_policy",
            "mode",
            "nearest_mode",
        ],
        "Shape" => &["start", "end"],
        "Slice" => &["starts", "ends", "axes"],
        "Split" => &["axis", "split", "num_outputs"],
        "Squeeze" | "Unsqueeze" => &["axes"],
        "Transpose" => &["perm"],
        _ => return None,
    })
}

/// String attributes whose values are checked at import: (op, attribute, allowed).
const STRING_VALUES: &[(&str, &str, &[&str])] = &[
    ("Pad", "mode", &["constant", "reflect", "edge"]),
    ("Resize", "mode", &["nearest", "linear", "bilinear"]),
    (
        "Resize",
        "coordinate_transformation_mode",
        &["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"],
    ),
    ("Resize", "nearest_mode", &["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]),
    ("Resize", "keep_aspect_ratio_policy", &["stretch"]),
    ("Conv", "auto_pad", &["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
    ("ConvTranspose", "auto_pad", &["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
    ("MaxPool", "auto_pad", &["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
    ("AveragePool", "auto_pad", &["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
    ("Gelu", "approximate", &["none", "tanh"]),
    ("DepthToSpace", "mode", &["DCR", "CRD"]),
    ("ScatterElements", "reduction", &["none", "add", "mul", "max", "min"]),
];

/// Integer attributes that must have one value: (op, attribute, the value).
const INT_VALUES: &[(&str, &str, i64)] = &[
    ("BatchNormalization", "training_mode", 0),
    ("BatchNormalization", "spatial", 1),
    ("Resize", "antialias", 0),
    ("MaxPool", "storage_order", 0),
    ("ArgMax", "select_last_index", 0),
    ("ArgMin", "select_last_index", 0),
    ("QuantizeLinear", "block_size", 0),
    ("DequantizeLinear", "block_size", 0),
];

/// `node "name" (Op)`, or the first output's name when the node has none.
pub(crate) fn describe(node: &NodeProto) -> String {
    let name = if !node.name.is_empty() { node.name.as_str() } else { node.output.first().map_or("?", String::as_str) };
    format!("node {name:?} ({})", node.op_type)
}

fn attr_type_name(t: i32) -> &'static str {
    match t {
        at::FLOAT => "float",
        at::INT => "int",
        at::STRING => "string",
        at::TENSOR => "tensor",
        at::GRAPH => "graph",
        at::FLOATS => "floats",
        at::INTS => "ints",
        at::STRINGS => "strings",
        at::TENSORS => "tensors",
        at::GRAPHS => "graphs",
        at::SPARSE_TENSOR | at::SPARSE_TENSORS => "sparse tensor",
        _ => "undefined",
    }
}

/// Import-time checks: the operator is supported, and every attribute is one it
/// knows, with a supported value where that is decidable without shapes.
pub(crate) fn check_node(node: &NodeProto, _opset: i64) -> Result<()> {
    let d = describe(node);
    let Some(known) = known_attributes(&node.op_type) else {
        return Err(Error::argument(
            &d,
            format!("operator {} is not supported (supported: {})", node.op_type, SUPPORTED_OPS.join(", ")),
        ));
    };
    for a in &node.attribute {
        if !known.contains(&a.name.as_str()) {
            return Err(Error::argument(&d, format!("attribute {:?} of {} is not supported", a.name, node.op_type)));
        }
        if !a.ref_attr_name.is_empty() {
            return Err(Error::argument(
                &d,
                format!("attribute {:?} refers to a function attribute, which is not supported", a.name),
            ));
        }
        if matches!(a.r#type, at::GRAPH | at::GRAPHS | at::SPARSE_TENSOR | at::SPARSE_TENSORS) {
            return Err(Error::argument(
                &d,
                format!("attribute {:?} holds a {}, which is not supported", a.name, attr_type_name(a.r#type)),
            ));
        }
        for &(op, name, allowed) in STRING_VALUES {
            if op == node.op_type && name == a.name {
                let v = String::from_utf8_lossy(&a.s);
                if !allowed.contains(&v.as_ref()) {
                    return Err(Error::argument(
                        &d,
                        format!("attribute {name:?} = {v:?} is not supported (supported: {})", allowed.join(", ")),
                    ));
                }
            }
        }
        for &(op, name, want) in INT_VALUES {
            if op == node.op_type && name == a.name && a.i != want {
                return Err(Error::argument(
                    &d,
                    format!("attribute {name:?} = {} is not supported (only {want})", a.i),
                ));
            }
        }
    }
    Ok(())
}

/// Operators whose output is known when the graph is built even if their input is
/// not (shapes are static per call).
pub(crate) fn shape_only(op: &str) -> bool {
    matches!(op, "Shape" | "Size")
}

/// A node being evaluated: its proto, the opset and its inputs.
struct Ctx<'a> {
    node: &'a NodeProto,
    opset: i64,
    ins: &'a [Option<Value>],
}

fn out(var: Var) -> Value {
    let elem = elem_of(var.dtype());
    Value { var, constant: false, elem }
}

fn uz(v: &[usize]) -> Vec<isize> {
    v.iter().map(|&n| n as isize).collect()
}

impl Ctx<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::argument(&describe(self.node), msg)
    }

    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn typed(&self, name: &str, want: i32) -> Result<Option<&AttributeProto>> {
        match self.attr(name) {
            Some(a) if a.r#type != want && a.r#type != at::UNDEFINED => Err(self.err(format!(
                "attribute {name:?} has type {}, expected {}",
                attr_type_name(a.r#type),
                attr_type_name(want)
            ))),
            other => Ok(other),
        }
    }

    fn int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.typed(name, at::INT)?.map_or(default, |a| a.i))
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        Ok(self.typed(name, at::INTS)?.map(|a| a.ints.clone()))
    }

    fn float(&self, name: &str, default: f32) -> Result<f32> {
        Ok(self.typed(name, at::FLOAT)?.map_or(default, |a| a.f))
    }

    fn string(&self, name: &str, default: &str) -> Result<String> {
        Ok(self.typed(name, at::STRING)?.map_or(default.to_string(), |a| String::from_utf8_lossy(&a.s).into_owned()))
    }

    fn opt(&self, i: usize) -> Option<&Value> {
        self.ins.get(i).and_then(Option::as_ref)
    }

    fn val(&self, i: usize) -> Result<&Value> {
        self.opt(i).ok_or_else(|| self.err(format!("input {i} is required")))
    }

    fn x(&self, i: usize) -> Result<&Var> {
        Ok(&self.val(i)?.var)
    }

    fn n_inputs(&self) -> usize {
        self.ins.len()
    }

    /// The contents of input `i` as integers, which must be known when the graph
    /// is built. `None` when the input is absent or empty-named.
    fn host_ints(&self, i: usize, what: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.opt(i) else { return Ok(None) };
        if !v.constant {
            return Err(self.err(format!(
                "input {i} ({what}) depends on the graph's inputs; it must be a constant or computed from shapes"
            )));
        }
        if v.var.dtype().is_float() {
            return Err(self.err(format!("input {i} ({what}) must be integer, got {}", v.var.dtype())));
        }
        Ok(Some(v.var.cast(DType::I64).to_vec::<i64>()?))
    }

    fn host_floats(&self, i: usize, what: &str) -> Result<Option<Vec<f64>>> {
        let Some(v) = self.opt(i) else { return Ok(None) };
        if !v.constant {
            return Err(self.err(format!("input {i} ({what}) depends on the graph's inputs; it must be a constant")));
        }
        Ok(Some(v.var.to_vec_f64()?))
    }

    /// A scalar input known at build time, if it is.
    fn const_scalar(&self, i: usize) -> Result<Option<f64>> {
        match self.opt(i) {
            Some(v) if v.constant && v.var.numel() == 1 => Ok(Some(v.var.to_vec_f64()?[0])),
            _ => Ok(None),
        }
    }

    fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        if axis < -r || axis >= r {
            return Err(self.err(format!("axis {axis} is out of range for rank {rank}")));
        }
        Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
    }

    /// The size of axis `a` of `x`; an error (not a panic) where `x` has no such
    /// axis. [`Ctx::axis`] already checks named axes; a Slice without `axes` names
    /// axes 0.. of as many as it has starts, unchecked.
    fn size(&self, x: &Var, a: usize) -> Result<usize> {
        x.shape().get(a).copied().ok_or_else(|| {
            self.err(format!("axis {a} is out of range for the input of shape {:?} (rank {})", x.shape(), x.ndim()))
        })
    }
}

/// Evaluates one node on its inputs (absent optional inputs are `None`).
pub(crate) fn eval(node: &NodeProto, opset: i64, ins: &[Option<Value>]) -> Result<Vec<Value>> {
    let c = Ctx { node, opset, ins };
    let one = |v: Var| Ok(vec![out(v)]);
    match node.op_type.as_str() {
        // ---- element-wise ----
        "Add" => one(c.x(0)?.try_add(c.x(1)?)?),
        "Sub" => one(c.x(0)?.try_sub(c.x(1)?)?),
        "Mul" => one(c.x(0)?.try_mul(c.x(1)?)?),
        "Div" => one(div(c.x(0)?, c.x(1)?)?),
        "Pow" => one(pow(&c)?),
        "Max" | "Min" | "Sum" | "Mean" => one(variadic(&c)?),
        "Equal" => one(c.x(0)?.eq(c.x(1)?)?),
        "Less" => one(c.x(0)?.lt(c.x(1)?)?),
        "LessOrEqual" => one(c.x(0)?.le(c.x(1)?)?),
        "Greater" => one(c.x(0)?.gt(c.x(1)?)?),
        "GreaterOrEqual" => one(c.x(0)?.ge(c.x(1)?)?),
        "And" => one(c.x(0)?.logical_and(c.x(1)?)?),
        "Or" => one(c.x(0)?.logical_or(c.x(1)?)?),
        "Not" => one(c.x(0)?.logical_not()),
        "Where" => one(Var::where_(&c.x(0)?.cast(DType::Bool), c.x(1)?, c.x(2)?)?),
        "Relu" => one(c.x(0)?.relu()?),
        "Sigmoid" => one(c.x(0)?.sigmoid()),
        "Tanh" => one(c.x(0)?.tanh()),
        "Erf" => one(c.x(0)?.erf()),
        "Sqrt" => one(c.x(0)?.sqrt()),
        "Reciprocal" => one(c.x(0)?.recip()),
        "Exp" => one(c.x(0)?.exp()),
        "Log" => one(c.x(0)?.log()),
        "Sin" => one(c.x(0)?.sin()),
        "Cos" => one(c.x(0)?.cos()),
        "Neg" => one(c.x(0)?.try_neg()?),
        "Abs" => one(c.x(0)?.abs()),
        "Floor" => one(c.x(0)?.floor()),
        "Ceil" => one(c.x(0)?.try_neg()?.floor().try_neg()?),
        "Round" => one(c.x(0)?.round()),
        "Identity" => Ok(vec![c.val(0)?.clone()]),
        "Dropout" => {
            // inference: the identity, and an all-true mask when asked for
            let x = c.val(0)?.clone();
            let mut outs = vec![x.clone()];
            if node.output.len() > 1 {
                outs.push(out(Var::full(x.var.shape(), 1.0, DType::Bool)));
            }
            Ok(outs)
        }
        "LeakyRelu" => one(c.x(0)?.leaky_relu(c.float("alpha", 0.01)? as f64)?),
        "PRelu" => {
            let x = c.x(0)?;
            one(Var::where_(&x.lt(0.0)?, x.try_mul(c.x(1)?)?, x)?)
        }
        "Elu" => {
            let x = c.x(0)?;
            one(x.elu(c.float("alpha", 1.0)? as f64)?)
        }
        "HardSigmoid" => {
            let (a, b) = (c.float("alpha", 0.2)? as f64, c.float("beta", 0.5)? as f64);
            one(c.x(0)?.try_mul(a)?.try_add(b)?.clamp(Some(0.0), Some(1.0))?)
        }
        "HardSwish" => one(c.x(0)?.hardswish()?),
        "Mish" => one(c.x(0)?.mish()?),
        "Softsign" => {
            let x = c.x(0)?;
            one(x.try_div(&x.abs().try_add(1.0)?)?)
        }
        "Selu" => {
            // the spec's defaults, as f32
            let a = c.float("alpha", 1.673_263_2)? as f64;
            let g = c.float("gamma", 1.050_701)? as f64;
            one(c.x(0)?.elu(a)?.try_mul(g)?)
        }
        "Celu" => {
            let a = c.float("alpha", 1.0)? as f64;
            // alpha * elu(x / alpha), the spec's max(0, x) + min(0, alpha (exp(x / alpha) - 1))
            // for the positive alphas it is used with
            if !(a > 0.0 && a.is_finite()) {
                return Err(c.err(format!("alpha must be positive and finite, got {a}")));
            }
            let x = c.x(0)?;
            one(x.try_div(a)?.elu(1.0)?.try_mul(a)?)
        }
        "ThresholdedRelu" => {
            let x = c.x(0)?;
            one(Var::where_(&x.gt(c.float("alpha", 1.0)? as f64)?, x, 0.0)?)
        }
        "Softplus" => {
            // ONNX's Softplus has no threshold
            one(c.x(0)?.softplus(1.0, f64::INFINITY)?)
        }
        "Gelu" => {
            let x = c.x(0)?;
            one(if c.string("approximate", "none")? == "tanh" { x.gelu_tanh()? } else { x.gelu()? })
        }
        "Clip" => one(clip(&c)?),
        "Cast" => {
            let to = c.int("to", 0)? as i32;
            let Some(d) = dtype_of(to) else {
                return Err(c.err(format!("cast to {} is not supported", super::proto::data_type::name(to))));
            };
            let x = c.x(0)?;
            let var = if d == DType::I32 || d == DType::I64 || d == DType::U8 {
                // ONNX truncates floats toward zero
                if x.dtype().is_float() {
                    Var::where_(&x.lt(0.0)?, x.try_neg()?.floor().try_neg()?, x.floor())?.cast(d)
                } else {
                    x.cast(d)
                }
            } else {
                x.cast(d)
            };
            Ok(vec![Value { var, constant: false, elem: to }])
        }
        // ---- constants and shapes ----
        "Constant" => constant(&c),
        "ConstantOfShape" => {
            let shape = c.host_ints(0, "shape")?.unwrap_or_default();
            let shape = to_usize(&c, &shape, "shape")?;
            let (value, elem) = match c.typed("value", at::TENSOR)?.and_then(|a| a.t.as_ref()) {
                Some(t) => {
                    let v = to_value(t, None).map_err(|e| c.err(format!("attribute \"value\": {e}")))?;
                    if v.var.numel() != 1 {
                        return Err(c.err("attribute \"value\" must hold one element"));
                    }
                    (v.var.to_vec_f64()?[0], v.elem)
                }
                None => (0.0, super::proto::data_type::FLOAT),
            };
            let d = dtype_of(elem).unwrap_or(DType::F32);
            Ok(vec![Value { var: Var::full(&shape, value, d), constant: false, elem }])
        }
        "Shape" => {
            let x = c.x(0)?;
            let r = x.ndim() as i64;
            let norm = |v: i64| if v < 0 { (v + r).clamp(0, r) } else { v.clamp(0, r) };
            let s = norm(c.int("start", 0)?) as usize;
            let e = norm(c.int("end", r)?) as usize;
            let dims: Vec<i64> = x.shape()[s..e.max(s)].iter().map(|&n| n as i64).collect();
            let n = dims.len();
            one(Var::from_vec(dims, &[n])?)
        }
        "Size" => one(Var::scalar(c.x(0)?.numel() as i64)),
        "Reshape" => {
            let x = c.x(0)?;
            let shape = c.host_ints(1, "shape")?.ok_or_else(|| c.err("input 1 (shape) is required"))?;
            let allowzero = c.int("allowzero", 0)? != 0;
            let mut target = Vec::with_capacity(shape.len());
            for (k, &s) in shape.iter().enumerate() {
                target.push(match s {
                    0 if !allowzero => *x.shape().get(k).ok_or_else(|| {
                        c.err(format!(
                            "shape {shape:?} copies dim {k} (0) but the input {:?} has rank {}",
                            x.shape(),
                            x.ndim()
                        ))
                    })? as isize,
                    s if s >= -1 => s as isize,
                    s => return Err(c.err(format!("shape {shape:?} has the invalid entry {s}"))),
                });
            }
            one(x.reshape(&target)?)
        }
        "Flatten" => {
            let x = c.x(0)?;
            let r = x.ndim();
            let a = c.int("axis", 1)?;
            let a = if a < 0 { a + r as i64 } else { a };
            if !(0..=r as i64).contains(&a) {
                return Err(c.err(format!("axis {a} is out of range for rank {r}")));
            }
            let lead: usize = x.shape()[..a as usize].iter().product();
            let rest: usize = x.shape()[a as usize..].iter().product();
            one(x.reshape(&[lead as isize, rest as isize])?)
        }
        "DepthToSpace" | "SpaceToDepth" => one(depth_space(&c, &node.op_type)?),
        "Transpose" => {
            let x = c.x(0)?;
            let perm: Vec<isize> = match c.ints("perm")? {
                Some(p) => p.iter().map(|&v| v as isize).collect(),
                None => (0..x.ndim() as isize).rev().collect(),
            };
            one(x.permute(&perm)?)
        }
        "Squeeze" => {
            let x = c.x(0)?;
            let axes = match c.ints("axes")? {
                Some(a) => Some(a),
                None => c.host_ints(1, "axes")?,
            };
            let keep: Vec<isize> = match axes {
                None => x.shape().iter().filter(|&&n| n != 1).map(|&n| n as isize).collect(),
                Some(axes) => {
                    let axes: Vec<usize> = axes.iter().map(|&a| c.axis(a, x.ndim())).collect::<Result<_>>()?;
                    for &a in &axes {
                        if x.shape()[a] != 1 {
                            return Err(c.err(format!(
                                "cannot squeeze axis {a} of size {} (shape {:?})",
                                x.shape()[a],
                                x.shape()
                            )));
                        }
                    }
                    x.shape().iter().enumerate().filter(|(k, _)| !axes.contains(k)).map(|(_, &n)| n as isize).collect()
                }
            };
            one(x.reshape(&keep)?)
        }
        "Unsqueeze" => {
            let x = c.x(0)?;
            let axes = match c.ints("axes")? {
                Some(a) => a,
                None => c.host_ints(1, "axes")?.ok_or_else(|| c.err("axes are required"))?,
            };
            let r = x.ndim() + axes.len();
            let mut axes: Vec<usize> = axes.iter().map(|&a| c.axis(a, r)).collect::<Result<_>>()?;
            axes.sort_unstable();
            axes.dedup();
            let mut shape = Vec::with_capacity(r);
            let mut src = x.shape().iter();
            for k in 0..r {
                shape.push(if axes.contains(&k) { 1 } else { *src.next().unwrap_or(&1) as isize });
            }
            one(x.reshape(&shape)?)
        }
        "Concat" => {
            let vars: Vec<Var> = (0..c.n_inputs()).filter_map(|i| c.opt(i).map(|v| v.var.clone())).collect();
            let first = vars.first().ok_or_else(|| c.err("needs at least one input"))?;
            let a = c.axis(c.int("axis", 0)?, first.ndim())?;
            // ONNX allows empty pieces; they add nothing
            let vars: Vec<Var> =
                vars.iter().filter(|v| v.numel() > 0 || v.shape().get(a) != Some(&0)).cloned().collect();
            let elem = c.val(0)?.elem;
            let var = if vars.len() == 1 { vars[0].clone() } else { cat(&vars, a as isize)? };
            Ok(vec![Value { var, constant: false, elem }])
        }
        "Slice" => {
            let mut v = c.val(0)?.clone();
            v.var = slice(&c)?;
            Ok(vec![v])
        }
        "Gather" => one(gather(&c)?),
        "GatherElements" => {
            let x = c.x(0)?;
            let a = c.axis(c.int("axis", 0)?, x.ndim())?;
            one(x.gather(a as isize, &wrapped_index(c.x(1)?, x.shape()[a])?)?)
        }
        "ScatterElements" => {
            let x = c.x(0)?;
            let a = c.axis(c.int("axis", 0)?, x.ndim())?;
            let index = wrapped_index(c.x(1)?, x.shape()[a])?;
            let updates = c.x(2)?.cast(x.dtype());
            let (mode, keep) = match c.string("reduction", "none")?.as_str() {
                "add" => (ScatterReduce::Sum, true),
                "mul" => (ScatterReduce::Prod, true),
                "max" => (ScatterReduce::Amax, true),
                "min" => (ScatterReduce::Amin, true),
                // replaced where an update lands (several updates at one place,
                // which ONNX leaves undefined, are summed)
                _ => (ScatterReduce::Sum, false),
            };
            one(x.scatter_reduce(a as isize, &index, &updates, mode, keep)?)
        }
        "Expand" => {
            let x = c.x(0)?;
            let shape = c.host_ints(1, "shape")?.ok_or_else(|| c.err("input 1 (shape) is required"))?;
            let shape = to_usize(&c, &shape, "shape")?;
            let target = broadcast_shapes("Expand", x.shape(), &shape)?;
            one(x.expand(&uz(&target))?)
        }
        "CumSum" => {
            let x = c.x(0)?;
            let axis = match c.host_ints(1, "axis")?.as_deref() {
                Some([a]) => c.axis(*a, x.ndim())?,
                _ => return Err(c.err("input 1 (axis) must hold one integer")),
            };
            let a = axis as isize;
            let (exclusive, reverse) = (c.int("exclusive", 0)? != 0, c.int("reverse", 0)? != 0);
            let mut y = if reverse { x.flip(&[a])? } else { x.clone() };
            y = y.cumsum(a)?.cast(x.dtype());
            if exclusive {
                // each position without its own value: the running sum one step back
                let mut exprs: Vec<E> = (0..y.ndim()).map(E::idx).collect();
                exprs[axis] = E::idx(axis) - 1;
                y = y.reindex(y.shape(), exprs, 0.0, vec![])?;
            }
            one(if reverse { y.flip(&[a])? } else { y })
        }
        "TopK" => {
            let x = c.x(0)?;
            let a = c.axis(c.int("axis", -1)?, x.ndim())?;
            let k = match c.host_ints(1, "K")?.as_deref() {
                Some([k]) if *k >= 0 => *k as usize,
                _ => return Err(c.err("input 1 (K) must hold one non-negative integer")),
            };
            // sorted = 0 allows any order; the sorted one is an allowed order
            let (v, i) = x.topk(k, a as isize, c.int("largest", 1)? != 0)?;
            Ok(vec![out(v), out(i)])
        }
        "Trilu" => {
            let x = c.x(0)?;
            let k = match c.host_ints(1, "k")?.as_deref() {
                None => 0,
                Some([k]) => *k,
                Some(_) => return Err(c.err("input 1 (k) must hold one integer")),
            };
            one(if c.int("upper", 1)? != 0 { x.triu(k)? } else { x.tril(k)? })
        }
        "Tile" => {
            let reps = c.host_ints(1, "repeats")?.ok_or_else(|| c.err("input 1 (repeats) is required"))?;
            one(c.x(0)?.repeat(&to_usize(&c, &reps, "repeats")?)?)
        }
        "Split" => split(&c),
        "Pad" => {
            let mut v = c.val(0)?.clone();
            v.var = pad(&c)?;
            Ok(vec![v])
        }
        // ---- reductions ----
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2"
        | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" => one(reduce(&c)?),
        "ArgMax" | "ArgMin" => {
            let x = c.x(0)?;
            let a = c.axis(c.int("axis", 0)?, x.ndim())? as isize;
            let keep = c.int("keepdims", 1)? != 0;
            one(if node.op_type == "ArgMax" { x.argmax(a, keep)? } else { x.argmin(a, keep)? })
        }
        // ---- networks ----
        "Conv" => one(conv(&c)?),
        "ConvTranspose" => one(conv_transpose(&c)?),
        "MaxPool" | "AveragePool" => one(pool(&c)?),
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = c.x(0)?;
            if x.ndim() < 3 {
                return Err(c.err(format!("input must be [N, C, spatial..], got {:?}", x.shape())));
            }
            let dims: Vec<isize> = (2..x.ndim() as isize).collect();
            one(if node.op_type == "GlobalAveragePool" { x.mean(&dims, true)? } else { x.max(&dims, true)? })
        }
        "BatchNormalization" => {
            let x = c.x(0)?;
            if x.ndim() < 2 {
                return Err(c.err(format!("input must be [N, C, ..], got {:?}", x.shape())));
            }
            if node.output.len() > 1 {
                return Err(c.err("training outputs (running mean and variance) are not supported"));
            }
            let eps = c.float("epsilon", 1e-5)? as f64;
            let mut shape = vec![1isize; x.ndim()];
            shape[1] = -1;
            let pc = |i: usize| -> Result<Var> { c.x(i)?.reshape(&shape) };
            let (scale, bias, mean, var) = (pc(1)?, pc(2)?, pc(3)?, pc(4)?);
            let y = x.try_sub(&mean)?.try_div(var.try_add(eps)?.sqrt())?.try_mul(&scale)?.try_add(&bias)?;
            one(y)
        }
        "InstanceNormalization" => {
            let eps = c.float("epsilon", 1e-5)? as f64;
            one(instance_norm(c.x(0)?, None, Some(c.x(1)?), Some(c.x(2)?), true, eps)?)
        }
        "LayerNormalization" => {
            if node.output.len() > 1 {
                return Err(c.err("the Mean and InvStdDev outputs are not supported"));
            }
            let x = c.x(0)?;
            let a = c.axis(c.int("axis", -1)?, x.ndim())?;
            let eps = c.float("epsilon", 1e-5)? as f64;
            let mut y = layer_norm(x, &x.shape()[a..], None, None, eps)?;
            y = y.try_mul(c.x(1)?)?;
            if let Some(b) = c.opt(2) {
                y = y.try_add(&b.var)?;
            }
            one(y)
        }
        "Gemm" => {
            let (mut a, mut b) = (c.x(0)?.clone(), c.x(1)?.clone());
            if a.ndim() != 2 || b.ndim() != 2 {
                return Err(c.err(format!("A and B must be matrices, got {:?} and {:?}", a.shape(), b.shape())));
            }
            if c.int("transA", 0)? != 0 {
                a = a.transpose(0, 1)?;
            }
            if c.int("transB", 0)? != 0 {
                b = b.transpose(0, 1)?;
            }
            let mut y = matmul(&a, &b)?;
            let alpha = c.float("alpha", 1.0)? as f64;
            if alpha != 1.0 {
                y = y.try_mul(alpha)?;
            }
            if let Some(cv) = c.opt(2) {
                let beta = c.float("beta", 1.0)? as f64;
                let cv = if beta != 1.0 { cv.var.try_mul(beta)? } else { cv.var.clone() };
                y = y.try_add(&cv)?;
            }
            one(y)
        }
        "MatMul" => one(matmul(c.x(0)?, c.x(1)?)?),
        "Softmax" | "LogSoftmax" => {
            let x = c.x(0)?;
            let log = node.op_type == "LogSoftmax";
            let f = |v: &Var, a: isize| if log { v.log_softmax(a) } else { v.softmax(a) };
            if c.opset >= 13 {
                let a = c.axis(c.int("axis", -1)?, x.ndim())?;
                one(f(x, a as isize)?)
            } else {
                // opset < 13: coerce to 2-D at `axis` and normalise each row
                let a = c.axis(c.int("axis", 1)?, x.ndim())?;
                let lead: usize = x.shape()[..a].iter().product();
                let y = f(&x.reshape(&[lead as isize, -1])?, 1)?;
                one(y.reshape(&uz(x.shape()))?)
            }
        }
        "Resize" => one(resize(&c)?),
        "QuantizeLinear" => quantize(&c),
        "DequantizeLinear" => {
            let x = c.x(0)?;
            let axis = c.int("axis", 1)?;
            let scale = per_axis(&c, c.x(1)?, x, axis)?;
            let mut y = x.cast(scale.dtype());
            if let Some(zp) = c.opt(2) {
                y = y.try_sub(per_axis(&c, &zp.var, x, axis)?.cast(scale.dtype()))?;
            }
            one(y.try_mul(&scale)?)
        }
        other => Err(c.err(format!("operator {other} is not supported"))),
    }
}

fn to_usize(c: &Ctx, v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter().map(|&n| usize::try_from(n).map_err(|_| c.err(format!("{what} {v:?} has a negative entry")))).collect()
}

/// ONNX `Div`: true division for floats, truncation toward zero for integers.
fn div(a: &Var, b: &Var) -> Result<Var> {
    if a.dtype().is_float() || b.dtype().is_float() {
        return a.try_div(b);
    }
    let q = a.cast(DType::F64).try_div(b.cast(DType::F64))?;
    let t = Var::where_(&q.lt(0.0)?, q.try_neg()?.floor().try_neg()?, q.floor())?;
    Ok(t.cast(a.dtype()))
}

fn pow(c: &Ctx) -> Result<Var> {
    let x = c.x(0)?;
    let y = match c.const_scalar(1)? {
        Some(1.0) => x.clone(),
        Some(2.0) => x.try_mul(x)?,
        Some(3.0) => x.try_mul(x)?.try_mul(x)?,
        Some(e) if e == 0.5 && x.dtype().is_float() => x.sqrt(),
        _ => x.pow(c.x(1)?)?,
    };
    // the result has the base's type
    Ok(if y.dtype() != x.dtype() { y.cast(x.dtype()) } else { y })
}

fn variadic(c: &Ctx) -> Result<Var> {
    let vars: Vec<&Var> = (0..c.n_inputs()).filter_map(|i| c.opt(i).map(|v| &v.var)).collect();
    let mut acc = (*vars.first().ok_or_else(|| c.err("needs at least one input"))?).clone();
    for v in &vars[1..] {
        acc = match c.node.op_type.as_str() {
            "Max" => acc.maximum(*v)?,
            "Min" => acc.minimum(*v)?,
            _ => acc.try_add(*v)?,
        };
    }
    if c.node.op_type == "Mean" {
        acc = acc.try_div(vars.len() as f64)?;
    }
    Ok(acc)
}

fn clip(c: &Ctx) -> Result<Var> {
    let x = c.x(0)?;
    if c.opset < 11 {
        let lo = c.float("min", f32::MIN)? as f64;
        let hi = c.float("max", f32::MAX)? as f64;
        return x.clamp(Some(lo), Some(hi));
    }
    let mut y = x.clone();
    for (i, is_min) in [(1, true), (2, false)] {
        if c.opt(i).is_none() {
            continue;
        }
        y = match c.const_scalar(i)? {
            Some(v) if is_min => y.clamp(Some(v), None)?,
            Some(v) => y.clamp(None, Some(v))?,
            None if is_min => y.maximum(c.x(i)?)?,
            None => y.minimum(c.x(i)?)?,
        };
    }
    Ok(y)
}

fn constant(c: &Ctx) -> Result<Vec<Value>> {
    let a = c.node.attribute.first().ok_or_else(|| c.err("needs a value attribute"))?;
    let v = match a.name.as_str() {
        "value" => {
            let t = a.t.as_ref().ok_or_else(|| c.err("attribute \"value\" holds no tensor"))?;
            to_value(t, None).map_err(|e| c.err(format!("attribute \"value\": {e}")))?
        }
        "value_float" => out(Var::scalar(a.f)),
        "value_floats" => out(Var::from_vec(a.floats.clone(), &[a.floats.len()])?),
        "value_int" => out(Var::scalar(a.i)),
        "value_ints" => out(Var::from_vec(a.ints.clone(), &[a.ints.len()])?),
        other => return Err(c.err(format!("attribute {other:?} is not supported (strings and sparse tensors)"))),
    };
    Ok(vec![v])
}

fn slice(c: &Ctx) -> Result<Var> {
    let x = c.x(0)?;
    let r = x.ndim();
    let (starts, ends, axes, steps) = if c.opset < 10 {
        (
            c.ints("starts")?.ok_or_else(|| c.err("attribute \"starts\" is required"))?,
            c.ints("ends")?.ok_or_else(|| c.err("attribute \"ends\" is required"))?,
            c.ints("axes")?,
            None,
        )
    } else {
        (
            c.host_ints(1, "starts")?.ok_or_else(|| c.err("input 1 (starts) is required"))?,
            c.host_ints(2, "ends")?.ok_or_else(|| c.err("input 2 (ends) is required"))?,
            c.host_ints(3, "axes")?,
            c.host_ints(4, "steps")?,
        )
    };
    let n = starts.len();
    if ends.len() != n || axes.as_ref().is_some_and(|a| a.len() != n) || steps.as_ref().is_some_and(|s| s.len() != n) {
        return Err(
            c.err(format!("starts {starts:?}, ends {ends:?}, axes {axes:?} and steps {steps:?} differ in length"))
        );
    }
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&a| c.axis(a, r)).collect::<Result<_>>()?,
        None => (0..n).collect(),
    };
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    let mut shape = x.shape().to_vec();
    let mut exprs: Vec<E> = (0..r).map(E::idx).collect();
    for k in 0..n {
        let (a, step) = (axes[k], steps[k]);
        if step == 0 {
            return Err(c.err("a step of 0 is not allowed"));
        }
        let dim = c.size(x, a)? as i64;
        let fix = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (mut s, mut e) = (fix(starts[k]), fix(ends[k]));
        if step > 0 {
            s = s.clamp(0, dim);
            e = e.clamp(0, dim);
        } else {
            s = s.clamp(0, (dim - 1).max(0));
            e = e.clamp(-1, dim - 1);
        }
        // in i128: a step of i64::MIN or near i64::MAX must not overflow
        let (s128, e128, step128) = (i128::from(s), i128::from(e), i128::from(step));
        let len = if step > 0 {
            (e128 - s128 + step128 - 1).div_euclid(step128)
        } else {
            (s128 - e128 - step128 - 1).div_euclid(-step128)
        };
        shape[a] = len.max(0) as usize;
        // at most one element when |step| >= dim: the step is then never taken
        exprs[a] = E::idx(a) * if len > 1 { step } else { 1 } + s;
    }
    x.reindex(&shape, exprs, 0.0, vec![])
}

fn gather(c: &Ctx) -> Result<Var> {
    let x = c.x(0)?;
    let iv = c.val(1)?;
    let a = c.axis(c.int("axis", 0)?, x.ndim())?;
    let dim = x.shape()[a] as i64;
    let mut out_shape: Vec<usize> = x.shape()[..a].to_vec();
    out_shape.extend(iv.var.shape());
    out_shape.extend(&x.shape()[a + 1..]);
    if iv.constant {
        let idx = c.host_ints(1, "indices")?.unwrap_or_default();
        let mut fixed = Vec::with_capacity(idx.len());
        for &i in &idx {
            let j = if i < 0 { i + dim } else { i };
            if !(0..dim).contains(&j) {
                return Err(c.err(format!("index {i} is out of range for axis {a} of size {dim}")));
            }
            fixed.push(j);
        }
        // an arithmetic progression is a strided view
        let step = if fixed.len() > 1 { fixed[1] - fixed[0] } else { 1 };
        if !fixed.is_empty() && fixed.windows(2).all(|w| w[1] - w[0] == step) {
            let mut shape = x.shape().to_vec();
            shape[a] = fixed.len();
            let mut exprs: Vec<E> = (0..x.ndim()).map(E::idx).collect();
            exprs[a] = E::idx(a) * step + fixed[0];
            let y = x.reindex(&shape, exprs, 0.0, vec![])?;
            return y.reshape(&uz(&out_shape));
        }
        let n = fixed.len();
        let index = Var::from_vec(fixed, &[n])?;
        return x.index_select(a as isize, &index)?.reshape(&uz(&out_shape));
    }
    let flat = iv.var.reshape(&[-1])?.cast(DType::I64);
    let flat = Var::where_(&flat.lt(0i64)?, flat.try_add(dim)?, &flat)?;
    x.index_select(a as isize, &flat)?.reshape(&uz(&out_shape))
}

/// ONNX element indices: negative ones count from the end of the axis of `size`.
fn wrapped_index(index: &Var, size: usize) -> Result<Var> {
    let i = index.cast(DType::I64);
    Var::where_(&i.lt(0i64)?, i.try_add(size as i64)?, &i)
}

fn split(c: &Ctx) -> Result<Vec<Value>> {
    let x = c.x(0)?;
    let a = c.axis(c.int("axis", 0)?, x.ndim())?;
    let dim = x.shape()[a];
    let parts = c.node.output.len();
    let sizes: Vec<usize> = match c.ints("split")? {
        Some(s) => to_usize(c, &s, "split")?,
        None => match c.host_ints(1, "split")? {
            Some(s) => to_usize(c, &s, "split")?,
            None => {
                let chunk = dim.div_ceil(parts.max(1));
                (0..parts).map(|k| chunk.min(dim.saturating_sub(k * chunk))).collect()
            }
        },
    };
    if sizes.iter().sum::<usize>() != dim || sizes.len() != parts {
        return Err(c.err(format!("split sizes {sizes:?} do not cover axis {a} of size {dim} in {parts} outputs")));
    }
    Ok(x.split_sizes(&sizes, a as isize)?.into_iter().map(out).collect())
}

fn pad(c: &Ctx) -> Result<Var> {
    let x = c.x(0)?;
    let r = x.ndim();
    let mode = c.string("mode", "constant")?;
    let (pads, value) = if c.opset < 11 {
        (c.ints("pads")?.ok_or_else(|| c.err("attribute \"pads\" is required"))?, c.float("value", 0.0)? as f64)
    } else {
        let pads = c.host_ints(1, "pads")?.ok_or_else(|| c.err("input 1 (pads) is required"))?;
        let value = match c.opt(2) {
            Some(_) => c.const_scalar(2)?.ok_or_else(|| c.err("input 2 (constant_value) must be a constant scalar"))?,
            None => 0.0,
        };
        (pads, value)
    };
    let axes: Vec<usize> = match c.host_ints(3, "axes")? {
        Some(a) => a.iter().map(|&a| c.axis(a, r)).collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(c.err(format!("pads {pads:?} must hold 2 values per padded axis ({} axes)", axes.len())));
    }
    let mut lo = vec![0i64; r];
    let mut hi = vec![0i64; r];
    for (k, &a) in axes.iter().enumerate() {
        lo[a] = pads[k];
        hi[a] = pads[k + axes.len()];
    }
    // negative pads crop
    let mut y = x.clone();
    for a in 0..r {
        let (l, h) = (lo[a].min(0).unsigned_abs() as usize, hi[a].min(0).unsigned_abs() as usize);
        if l > 0 || h > 0 {
            let n = y.shape()[a];
            if l.saturating_add(h) > n {
                return Err(c.err(format!("negative pads {pads:?} crop more than axis {a} of size {n}")));
            }
            y = y.narrow(a as isize, l, n - l - h)?;
        }
    }
    let last = match (0..r).rev().find(|&a| lo[a] > 0 || hi[a] > 0) {
        Some(a) => a,
        None => return Ok(y),
    };
    let first = (0..r).find(|&a| lo[a] > 0 || hi[a] > 0).unwrap_or(last);
    let mut torch_pads = Vec::new();
    for a in (first..r).rev() {
        torch_pads.push(lo[a].max(0) as usize);
        torch_pads.push(hi[a].max(0) as usize);
    }
    let m = match mode.as_str() {
        "constant" => PadMode::Constant(value),
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Replicate,
        other => return Err(c.err(format!("attribute \"mode\" = {other:?} is not supported"))),
    };
    y.pad(&torch_pads, m)
}

fn reduce(c: &Ctx) -> Result<Var> {
    let op = c.node.op_type.as_str();
    let x = c.x(0)?;
    // axes: an attribute before opset 13 (ReduceSum) / 18 (the others), else input 1
    let axes = match c.ints("axes")? {
        Some(a) => Some(a),
        None => c.host_ints(1, "axes")?,
    };
    let keep = c.int("keepdims", 1)? != 0;
    let axes: Vec<isize> = match axes {
        Some(a) if !a.is_empty() => {
            a.iter().map(|&a| c.axis(a, x.ndim()).map(|v| v as isize)).collect::<Result<_>>()?
        }
        _ => {
            if c.int("noop_with_empty_axes", 0)? != 0 {
                return Ok(x.clone());
            }
            (0..x.ndim() as isize).collect()
        }
    };
    if axes.is_empty() {
        return Ok(x.clone());
    }
    match op {
        "ReduceMean" => x.mean(&axes, keep),
        "ReduceSum" => x.sum(&axes, keep),
        "ReduceMax" => x.max(&axes, keep),
        "ReduceMin" => x.min(&axes, keep),
        "ReduceProd" => x.prod(&axes, keep),
        "ReduceSumSquare" => x.try_mul(x)?.sum(&axes, keep),
        "ReduceL1" => x.abs().sum(&axes, keep),
        "ReduceLogSum" => Ok(x.sum(&axes, keep)?.log()),
        "ReduceLogSumExp" => x.logsumexp(&axes, keep),
        _ => Ok(x.try_mul(x)?.sum(&axes, keep)?.sqrt()),
    }
}

/// Per-axis (begin, end) padding from `pads`/`auto_pad` for the spatial dims.
/// Splits `total` padding between the two sides as `auto_pad` says: the odd one
/// goes after for SAME_UPPER, before otherwise.
fn same_pads(auto: &str, total: usize) -> (usize, usize) {
    if auto == "SAME_UPPER" {
        (total / 2, total - total / 2)
    } else {
        (total - total / 2, total / 2)
    }
}

fn spatial_pads(
    c: &Ctx,
    input: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> Result<Vec<(usize, usize)>> {
    let n = input.len();
    let auto = c.string("auto_pad", "NOTSET")?;
    match auto.as_str() {
        "SAME_UPPER" | "SAME_LOWER" => (0..n)
            .map(|k| {
                // (ceil(input / stride) - 1) * stride + (kernel - 1) * dilation + 1 - input
                let span = || {
                    let keff = kernel[k].checked_sub(1)?.checked_mul(dilations[k])?.checked_add(1)?;
                    input[k].div_ceil(strides[k]).checked_sub(1)?.checked_mul(strides[k])?.checked_add(keff)
                };
                let total = span().map(|t| t.saturating_sub(input[k])).ok_or_else(|| {
                    c.err(format!(
                        "auto_pad {auto}: kernel {kernel:?}, strides {strides:?} and dilations {dilations:?} \
                         do not fit the input {input:?}"
                    ))
                })?;
                Ok(same_pads(&auto, total))
            })
            .collect(),
        "VALID" => Ok(vec![(0, 0); n]),
        _ => {
            let pads = c.ints("pads")?.unwrap_or_else(|| vec![0; 2 * n]);
            if pads.len() != 2 * n || pads.iter().any(|&p| p < 0) {
                return Err(c.err(format!("attribute \"pads\" = {pads:?} must hold {} non-negative values", 2 * n)));
            }
            Ok((0..n).map(|k| (pads[k] as usize, pads[k + n] as usize)).collect())
        }
    }
}

fn attr_usizes(c: &Ctx, name: &str, n: usize, default: usize) -> Result<Vec<usize>> {
    match c.ints(name)? {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n && v.iter().all(|&s| s > 0) => Ok(v.iter().map(|&s| s as usize).collect()),
        Some(v) => Err(c.err(format!("attribute {name:?} = {v:?} must hold {n} positive values"))),
    }
}

fn conv(c: &Ctx) -> Result<Var> {
    let (x, w) = (c.x(0)?, c.x(1)?);
    let b = c.opt(2).map(|v| &v.var);
    let one_d = x.ndim() == 3;
    if !(x.ndim() == 4 || one_d) || w.ndim() != x.ndim() {
        return Err(c.err(format!(
            "only 1-D and 2-D convolutions are supported: input {:?}, weight {:?}",
            x.shape(),
            w.shape()
        )));
    }
    let (x, w) = if one_d { (x.unsqueeze(2)?, w.unsqueeze(2)?) } else { (x.clone(), w.clone()) };
    let expand = |v: Vec<usize>, d: usize| if one_d { vec![d, v[0]] } else { v };
    let nd = if one_d { 1 } else { 2 };
    let kernel: Vec<usize> = w.shape()[4 - nd..].to_vec();
    if let Some(k) = c.ints("kernel_shape")? {
        let k: Vec<usize> = k.iter().map(|&v| v.max(0) as usize).collect();
        if k != kernel {
            return Err(c.err(format!("attribute \"kernel_shape\" = {k:?} does not match the weight {:?}", w.shape())));
        }
    }
    let strides = attr_usizes(c, "strides", nd, 1)?;
    let dilations = attr_usizes(c, "dilations", nd, 1)?;
    let groups = c.int("group", 1)?;
    if groups < 1 {
        return Err(c.err(format!("attribute \"group\" = {groups} must be positive")));
    }
    let input: Vec<usize> = x.shape()[4 - nd..].to_vec();
    let pads = spatial_pads(c, &input, &kernel, &strides, &dilations)?;
    let (strides, dilations) = (expand(strides, 1), expand(dilations, 1));
    let pads = if one_d { vec![(0, 0), pads[0]] } else { pads };
    let symmetric = pads.iter().all(|&(l, h)| l == h);
    let (x, padding) = if symmetric {
        (x, [pads[0].0, pads[1].0])
    } else {
        (x.pad(&[pads[1].0, pads[1].1, pads[0].0, pads[0].1], PadMode::Constant(0.0))?, [0, 0])
    };
    let o = Conv2dOptions {
        stride: [strides[0], strides[1]],
        padding,
        dilation: [dilations[0], dilations[1]],
        groups: groups as usize,
        padding_mode: ConvPadding::Zeros,
    };
    let y = conv2d(&x, &w, b, &o)?;
    if one_d {
        y.squeeze(2)
    } else {
        Ok(y)
    }
}

fn conv_transpose(c: &Ctx) -> Result<Var> {
    let (x, w) = (c.x(0)?, c.x(1)?);
    if x.ndim() != 4 || w.ndim() != 4 {
        return Err(c.err(format!(
            "only 2-D transposed convolutions are supported: input {:?}, weight {:?}",
            x.shape(),
            w.shape()
        )));
    }
    let kernel = [w.shape()[2], w.shape()[3]];
    let strides = attr_usizes(c, "strides", 2, 1)?;
    let dilations = attr_usizes(c, "dilations", 2, 1)?;
    let out_pad = match c.ints("output_padding")? {
        Some(v) if v.len() == 2 && v.iter().all(|&p| p >= 0) => vec![v[0] as usize, v[1] as usize],
        Some(v) => return Err(c.err(format!("attribute \"output_padding\" = {v:?} must hold 2 non-negative values"))),
        None => vec![0, 0],
    };
    let auto = c.string("auto_pad", "NOTSET")?;
    // the unpadded output size: (input - 1) * stride + (kernel - 1) * dilation + output_padding + 1
    let full = |k: usize| -> Result<usize> {
        let f = || {
            let span = kernel[k].checked_sub(1)?.checked_mul(dilations[k])?;
            x.shape()[2 + k].checked_sub(1)?.checked_mul(strides[k])?.checked_add(span)?.checked_add(out_pad[k] + 1)
        };
        f().ok_or_else(|| {
            c.err(format!(
                "input {:?}, weight {:?}, strides {strides:?}, dilations {dilations:?} and output_padding {out_pad:?} \
                 give no output size",
                x.shape(),
                w.shape()
            ))
        })
    };
    let pads: Vec<(usize, usize)> = if let Some(os) = c.ints("output_shape")? {
        if os.len() < 2 {
            return Err(c.err(format!("attribute \"output_shape\" = {os:?} must hold the 2 spatial sizes")));
        }
        let os: Vec<i64> = os[os.len() - 2..].to_vec();
        let fulls = [full(0)?, full(1)?];
        if (0..2).any(|k| os[k] < 1 || os[k] as u64 > fulls[k] as u64) {
            return Err(c.err(format!(
                "attribute \"output_shape\" = {os:?}: each size must be 1 to the unpadded output {fulls:?} \
                 (a larger output needs output_padding)"
            )));
        }
        (0..2).map(|k| same_pads(&auto, fulls[k] - os[k] as usize)).collect()
    } else if auto == "SAME_UPPER" || auto == "SAME_LOWER" {
        (0..2)
            .map(|k| Ok(same_pads(&auto, full(k)?.saturating_sub(x.shape()[2 + k].saturating_mul(strides[k])))))
            .collect::<Result<_>>()?
    } else {
        spatial_pads(c, &x.shape()[2..], &kernel, &strides, &dilations)?
    };
    if pads.iter().any(|&(l, h)| l != h) {
        return Err(c.err(format!("attribute \"pads\": asymmetric padding {pads:?} is not supported")));
    }
    let o = ConvTranspose2dOptions {
        stride: [strides[0], strides[1]],
        padding: [pads[0].0, pads[1].0],
        output_padding: [out_pad[0], out_pad[1]],
        dilation: [dilations[0], dilations[1]],
        groups: c.int("group", 1)?.max(1) as usize,
    };
    conv_transpose2d(x, w, c.opt(2).map(|v| &v.var), &o)
}

fn pool(c: &Ctx) -> Result<Var> {
    let x = c.x(0)?;
    if x.ndim() != 4 {
        return Err(c.err(format!("only 2-D pooling on [N, C, H, W] is supported, got {:?}", x.shape())));
    }
    if c.node.output.len() > 1 {
        return Err(c.err("the Indices output of MaxPool is not supported"));
    }
    let kernel = attr_usizes(c, "kernel_shape", 2, 0)?;
    if kernel.contains(&0) {
        return Err(c.err("attribute \"kernel_shape\" is required"));
    }
    let strides = attr_usizes(c, "strides", 2, 1)?;
    let dilations = attr_usizes(c, "dilations", 2, 1)?;
    let pads = spatial_pads(c, &x.shape()[2..], &kernel, &strides, &dilations)?;
    if pads.iter().any(|&(l, h)| l != h) {
        return Err(c.err(format!("attribute \"pads\": asymmetric padding {pads:?} is not supported")));
    }
    let o = Pool2dOptions {
        kernel: [kernel[0], kernel[1]],
        stride: [strides[0], strides[1]],
        padding: [pads[0].0, pads[1].0],
        dilation: [dilations[0], dilations[1]],
        ceil_mode: c.int("ceil_mode", 0)? != 0,
    };
    if c.node.op_type == "MaxPool" {
        max_pool2d(x, &o)
    } else {
        if dilations != [1, 1] {
            return Err(c.err(format!("attribute \"dilations\" = {dilations:?} is not supported for AveragePool")));
        }
        avg_pool2d(x, &o, c.int("count_include_pad", 0)? != 0, None)
    }
}

/// `scale` (a scalar or one value per entry of `axis`) shaped to broadcast against `x`.
fn per_axis(c: &Ctx, scale: &Var, x: &Var, axis: i64) -> Result<Var> {
    if scale.numel() == 1 {
        return scale.reshape(&[]);
    }
    let a = c.axis(axis, x.ndim())?;
    if scale.ndim() != 1 || scale.shape()[0] != x.shape()[a] {
        return Err(c.err(format!(
            "per-axis scale or zero point of shape {:?} must have {} values for axis {a} of the input {:?}",
            scale.shape(),
            x.shape()[a],
            x.shape()
        )));
    }
    let mut shape = vec![1isize; x.ndim()];
    shape[a] = -1;
    scale.reshape(&shape)
}

fn quantize(c: &Ctx) -> Result<Vec<Value>> {
    use super::proto::data_type as dt;
    let x = c.x(0)?;
    let axis = c.int("axis", 1)?;
    let scale = per_axis(c, c.x(1)?, x, axis)?;
    let zp = c.opt(2);
    let elem = match (zp, c.int("output_dtype", 0)? as i32) {
        (Some(z), _) => z.elem,
        (None, 0) => dt::UINT8,
        (None, t) => t,
    };
    let Some((lo, hi)) = int_range(elem) else {
        return Err(c.err(format!("quantising to {} is not supported", dt::name(elem))));
    };
    // y = saturate(round_half_even(x / scale) + zero_point), in the scale's precision
    let xf = x.cast(scale.dtype());
    let mut q = xf.try_div(&scale)?.round();
    if let Some(z) = zp {
        q = q.try_add(per_axis(c, &z.var, x, axis)?.cast(scale.dtype()))?;
    }
    let q = q.clamp(Some(lo), Some(hi))?;
    let d = dtype_of(elem).unwrap_or(DType::I32);
    Ok(vec![Value { var: q.cast(d), constant: false, elem }])
}

/// Source index along one axis for each output index, as ONNX nearest resizing
/// computes it (f32 coordinates, then the rounding mode, clamped).
fn nearest_table(len_in: usize, len_out: usize, scale: f32, transform: &str, mode: &str) -> Vec<i64> {
    (0..len_out)
        .map(|i| {
            let fi = i as f32;
            let x = match transform {
                "asymmetric" => fi / scale,
                "pytorch_half_pixel" if len_out <= 1 => 0.0,
                "half_pixel" | "pytorch_half_pixel" => (fi + 0.5) / scale - 0.5,
                "tf_half_pixel_for_nn" => (fi + 0.5) / scale,
                _ => {
                    if len_out == 1 {
                        0.0
                    } else {
                        fi * (len_in as f32 - 1.0) / (len_out as f32 - 1.0)
                    }
                }
            };
            let fl = x.floor();
            let v = match mode {
                "floor" => fl,
                "ceil" => x.ceil(),
                "round_prefer_ceil" => {
                    if x - fl == 0.5 {
                        fl + 1.0
                    } else {
                        x.round()
                    }
                }
                _ => {
                    if x - fl == 0.5 {
                        fl
                    } else {
                        x.round()
                    }
                }
            };
            (v as i64).clamp(0, len_in as i64 - 1)
        })
        .collect()
}

/// An index expression `clamp(floor((p i + q) / r), 0, len_in - 1)` that reproduces
/// `table`, searched over `q` for the ratios `p / r` the resize can have.
fn affine_floor(table: &[i64], len_in: usize, ratios: &[(i64, i64)], axis: usize) -> Option<E> {
    let top = len_in as i64 - 1;
    // lowest terms first: a scale of 2 becomes `floor(i / 2)`, a literal divisor
    // (a shift) that does not depend on the image size
    let gcd = |mut a: i64, mut b: i64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a.max(1)
    };
    let reduced: Vec<(i64, i64)> =
        ratios.iter().filter(|(p, r)| *p > 0 && *r > 0).map(|&(p, r)| (p / gcd(p, r), r / gcd(p, r))).collect();
    for &(p, r) in reduced.iter().chain(ratios) {
        if p <= 0 || r <= 0 {
            continue;
        }
        let (mut qlo, mut qhi) = (i64::MIN / 4, i64::MAX / 4);
        for (i, &t) in table.iter().enumerate() {
            let pi = p.checked_mul(i as i64)?;
            // t <= (p i + q) / r < t + 1, where clamping only bounds one side
            if t > 0 {
                qlo = qlo.max(r * t - pi);
            }
            if t < top {
                qhi = qhi.min(r * (t + 1) - pi - 1);
            }
        }
        if qlo <= qhi {
            let q = if qlo <= 0 && 0 <= qhi {
                0
            } else if qlo > i64::MIN / 4 {
                qlo
            } else {
                qhi
            };
            let bare = (E::idx(axis) * p + q).floor_div(r);
            // the clamp only where the table needs it
            for e in [bare.clone(), bare.clamp(0, top)] {
                if table.iter().enumerate().all(|(i, &t)| e.eval(&idx_at(axis, i)) == t) {
                    return Some(e);
                }
            }
        }
    }
    None
}

fn idx_at(axis: usize, i: usize) -> Vec<i64> {
    let mut v = vec![0; axis + 1];
    v[axis] = i as i64;
    v
}

/// `p / r` with `p / r == 1 / scale` exactly for an f32 scale (a dyadic rational).
fn inverse_ratio(scale: f32) -> Option<(i64, i64)> {
    if !(scale.is_finite() && scale > 0.0) {
        return None;
    }
    let mut m = scale as f64;
    let mut den: i64 = 1;
    while m.fract() != 0.0 && den < (1 << 30) {
        m *= 2.0;
        den *= 2;
    }
    if m.fract() != 0.0 || m > (1u64 << 40) as f64 {
        return None;
    }
    Some((den, m as i64))
}

fn resize(c: &Ctx) -> Result<Var> {
    let x = c.x(0)?;
    let r = x.ndim();
    let mode = c.string("mode", "nearest")?;
    let transform =
        c.string("coordinate_transformation_mode", if c.opset < 11 { "asymmetric" } else { "half_pixel" })?;
    let nearest = c.string("nearest_mode", if c.opset < 11 { "floor" } else { "round_prefer_floor" })?;
    let (scales_in, sizes_in) = if c.opset < 11 {
        (c.host_floats(1, "scales")?, None)
    } else {
        (c.host_floats(2, "scales")?.filter(|s| !s.is_empty()), c.host_ints(3, "sizes")?.filter(|s| !s.is_empty()))
    };
    let axes: Vec<usize> = match c.ints("axes")? {
        Some(a) => a.iter().map(|&a| c.axis(a, r)).collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    let mut out_shape = x.shape().to_vec();
    let mut scales = vec![1f32; r];
    match (&scales_in, &sizes_in) {
        (_, Some(sz)) => {
            if sz.len() != axes.len() {
                return Err(c.err(format!("sizes {sz:?} must have one entry per axis ({} axes)", axes.len())));
            }
            for (k, &a) in axes.iter().enumerate() {
                out_shape[a] = usize::try_from(sz[k]).map_err(|_| c.err(format!("negative size in {sz:?}")))?;
                scales[a] = out_shape[a] as f32 / x.shape()[a] as f32;
            }
        }
        (Some(sc), None) => {
            if sc.len() != axes.len() {
                return Err(c.err(format!("scales {sc:?} must have one entry per axis ({} axes)", axes.len())));
            }
            for (k, &a) in axes.iter().enumerate() {
                let s = sc[k] as f32;
                if !(s > 0.0 && s.is_finite()) {
                    return Err(c.err(format!("scales {sc:?} must be positive and finite")));
                }
                scales[a] = s;
                out_shape[a] = (x.shape()[a] as f32 * s).floor() as usize;
            }
        }
        (None, None) => return Err(c.err("needs scales or sizes")),
    }
    // the nearest-neighbour tables hold one entry per output position of an axis
    if out_shape.iter().any(|&n| n > i32::MAX as usize) {
        return Err(c.err(format!(
            "the output size {out_shape:?} (from {:?}) is too large: at most {} per axis",
            x.shape(),
            i32::MAX
        )));
    }
    let changed: Vec<usize> = (0..r).filter(|&a| out_shape[a] != x.shape()[a] || scales[a] != 1.0).collect();
    if changed.is_empty() {
        return Ok(x.clone());
    }
    if mode == "nearest" {
        let mut y = x.clone();
        let mut exprs: Vec<E> = (0..r).map(E::idx).collect();
        let mut gathers = vec![];
        for &a in &changed {
            let (li, lo) = (x.shape()[a], out_shape[a]);
            let table = nearest_table(li, lo, scales[a], &transform, &nearest);
            let mut ratios = vec![(2 * li as i64, 2 * lo as i64)];
            if let Some((p, q)) = inverse_ratio(scales[a]) {
                ratios.push((2 * p, 2 * q));
            }
            match affine_floor(&table, li, &ratios, a) {
                Some(e) => exprs[a] = e,
                None => gathers.push((a, table)),
            }
        }
        let mut mid = x.shape().to_vec();
        for &a in &changed {
            if !gathers.iter().any(|(g, _)| *g == a) {
                mid[a] = out_shape[a];
            }
        }
        y = y.reindex(&mid, exprs, 0.0, vec![])?;
        for (a, table) in gathers {
            let n = table.len();
            y = y.index_select(a as isize, &Var::from_vec(table, &[n])?)?;
        }
        return Ok(y);
    }
    // linear: the last two dims of an NCHW value, with PyTorch's bilinear rules
    if r != 4 || changed.iter().any(|&a| a < 2) {
        return Err(c.err(format!(
            "attribute \"mode\" = {mode:?}: only the last two dims of a 4-D input can be resized (from {:?} to {out_shape:?})",
            x.shape()
        )));
    }
    let align = match transform.as_str() {
        "align_corners" => true,
        "half_pixel" | "pytorch_half_pixel" => false,
        other => {
            return Err(c.err(format!(
                "attribute \"coordinate_transformation_mode\" = {other:?} is not supported with linear resizing"
            )))
        }
    };
    if !align {
        for a in 2..4 {
            if scales[a] != out_shape[a] as f32 / x.shape()[a] as f32 {
                return Err(c.err(format!(
                    "linear resizing by scale {} that does not give a whole size ({} -> {}) is not supported",
                    scales[a],
                    x.shape()[a],
                    out_shape[a]
                )));
            }
        }
    }
    upsample_bilinear2d(x, Resize::Size([out_shape[2], out_shape[3]]), align)
}

/// `DepthToSpace` (modes DCR and CRD, the latter PyTorch's `pixel_shuffle`) and
/// `SpaceToDepth` on `[N, C, H, W]`.
fn depth_space(c: &Ctx, op: &str) -> Result<Var> {
    let x = c.x(0)?;
    let Some(b) = c.typed("blocksize", at::INT)?.map(|a| a.i) else {
        return Err(c.err("the attribute blocksize is required"));
    };
    let [n, ch, h, w] = match *x.shape() {
        [n, ch, h, w] => [n, ch, h, w],
        _ => return Err(c.err(format!("the input must be 4-D, got shape {:?}", x.shape()))),
    };
    if b < 1 || b > i32::MAX as i64 {
        return Err(c.err(format!("blocksize {b} must be between 1 and {}", i32::MAX)));
    }
    let b = b as usize;
    if op == "SpaceToDepth" {
        if h % b != 0 || w % b != 0 {
            return Err(c.err(format!("the input {:?} is not divisible into {b}x{b} blocks", x.shape())));
        }
        // [n, c, h/b, b, w/b, b] -> [n, b, b, c, h/b, w/b]
        let blocks = x.reshape(&uz(&[n, ch, h / b, b, w / b, b]))?.permute(&[0, 3, 5, 1, 2, 4])?;
        return blocks.reshape(&uz(&[n, ch * b * b, h / b, w / b]));
    }
    if ch % (b * b) != 0 {
        return Err(c.err(format!("the {ch} channels of {:?} are not divisible by blocksize² = {}", x.shape(), b * b)));
    }
    if c.string("mode", "DCR")? == "CRD" {
        return pixel_shuffle(x, b);
    }
    // DCR: channel (i b + j) C' + c' -> [n, c', h b + i, w b + j]
    let blocks = x.reshape(&uz(&[n, b, b, ch / (b * b), h, w]))?.permute(&[0, 3, 4, 1, 5, 2])?;
    blocks.reshape(&uz(&[n, ch / (b * b), h * b, w * b]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_operator_has_its_attributes_listed_once_and_in_order() {
        for op in SUPPORTED_OPS {
            assert!(known_attributes(op).is_some(), "{op} is listed as supported but has no attribute list");
        }
        for w in SUPPORTED_OPS.windows(2) {
            assert!(w[0].to_lowercase() < w[1].to_lowercase(), "SUPPORTED_OPS out of order at {} / {}", w[0], w[1]);
        }
    }
}
