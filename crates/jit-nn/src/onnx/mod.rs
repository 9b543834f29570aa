//! ONNX import: an `.onnx` file becomes a function from input [`Var`]s to output
//! `Var`s built from the framework's own operators, so an imported network fuses,
//! compiles and caches like hand-written code.
//!
//! * The protobuf is decoded with hand-written `prost` messages ([`proto`]); no
//!   `protoc` is needed at build time.
//! * At import, everything that does not depend on a graph input is evaluated once
//!   and kept as a constant: initializers, `Constant` nodes, the integer arithmetic
//!   that exporters emit for padding and reshaping, and int8 weights behind
//!   `DequantizeLinear`. [`OnnxModel::folded_nodes`] says how many nodes that was.
//! * Inputs may have symbolic dims (`[1, 3, "h", "w"]`): one import serves every
//!   size. A symbol must take the same value everywhere it appears in one call.
//!   `Shape` of a runtime value is known when the graph is built (shapes are static
//!   per call), so shape arithmetic on it is folded at run time as well.
//! * Operators: see [`SUPPORTED_OPS`]. An operator, attribute or attribute value
//!   that is not supported is an error naming the node, the operator and the
//!   attribute, raised at import for attributes and at the first run for
//!   values that depend on input shapes.
//! * Integer types: int8, int16 and uint16 tensors are held as `i32`, uint32 as
//!   `i64`; `QuantizeLinear` saturates to the range of its zero point's ONNX type,
//!   so quantise/dequantise pairs compute exactly what ONNX specifies.

pub mod proto;

mod ops;
mod tensor;

use crate::prelude::*;
use proto::{GraphProto, NodeProto, ValueInfoProto};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

pub use ops::SUPPORTED_OPS;

/// One dim of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named size bound when the model runs (`"h"`).
    Symbol(String),
    /// A dim the file leaves open.
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => write!(f, "{s}"),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Name, element type and dims of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    /// The value's name in the graph.
    pub name: String,
    /// The ONNX element type (see [`proto::data_type`]).
    pub elem_type: i32,
    /// The dims, empty when the file gives no shape.
    pub dims: Vec<Dim>,
}

impl ValueInfo {
    fn from_proto(v: &ValueInfoProto) -> ValueInfo {
        let tt = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        let elem_type = tt.map(|t| t.elem_type).unwrap_or(0);
        let dims = tt
            .and_then(|t| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match (d.dim_value, &d.dim_param) {
                        (Some(n), _) if n >= 0 => Dim::Fixed(n as usize),
                        (_, Some(p)) if !p.is_empty() => Dim::Symbol(p.clone()),
                        _ => Dim::Unknown,
                    })
                    .collect()
            })
            .unwrap_or_default();
        ValueInfo { name: v.name.clone(), elem_type, dims }
    }

    /// `name [1, 3, h, w] float`.
    pub fn describe(&self) -> String {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        format!("{} [{}] {}", self.name, dims.join(", "), proto::data_type::name(self.elem_type))
    }
}

/// A value during evaluation: the variable, whether it is known without the graph
/// inputs (so its contents may be read on the host), and its ONNX element type.
#[derive(Clone)]
pub(crate) struct Value {
    pub var: Var,
    pub constant: bool,
    pub elem: i32,
}

/// An imported ONNX model.
pub struct OnnxModel {
    source: String,
    opset: i64,
    producer: String,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    nodes: Vec<NodeProto>,
    consts: HashMap<String, Value>,
    folded: usize,
    total_nodes: usize,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("source", &self.source)
            .field("opset", &self.opset)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("nodes", &self.nodes.len())
            .field("folded", &self.folded)
            .finish()
    }
}

impl OnnxModel {
    /// Reads and imports an `.onnx` file.
    pub fn load(path: impl AsRef<Path>) -> Result<OnnxModel> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read the ONNX model: {e}")))?;
        Self::import(&bytes, &path.display().to_string(), path.parent().map(Path::to_path_buf))
    }

    /// Imports a model from the bytes of an `.onnx` file; `name` is used in errors.
    /// External tensor data cannot be resolved without a directory and is refused.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<OnnxModel> {
        Self::import(bytes, name, None)
    }

    fn import(bytes: &[u8], source: &str, dir: Option<PathBuf>) -> Result<OnnxModel> {
        let model = proto::decode_model(bytes).map_err(|e| {
            Error::file(source, format!("not an ONNX model (protobuf decoding failed: {e}); is the file truncated?"))
        })?;
        let Some(graph) = model.graph.as_ref() else {
            return Err(Error::file(source, "the ONNX model has no graph"));
        };
        let mut opset = None;
        for o in &model.opset_import {
            match o.domain.as_str() {
                "" | "ai.onnx" => opset = Some(o.version),
                "ai.onnx.ml" => {} // declared by converters; no node of ours uses it
                d => {
                    if graph.node.iter().any(|n| n.domain == d) {
                        return Err(Error::file(
                            source,
                            format!("operator set domain {d:?} (version {}) is not supported", o.version),
                        ));
                    }
                }
            }
        }
        let opset = opset.unwrap_or(1);
        if opset < 7 {
            return Err(Error::file(
                source,
                format!("opset {opset} is too old; this importer reads opset 7 and later (11+ recommended)"),
            ));
        }
        let mut m = OnnxModel {
            source: source.to_string(),
            opset,
            producer: format!("{} {}", model.producer_name, model.producer_version).trim().to_string(),
            inputs: vec![],
            outputs: graph.output.iter().map(ValueInfo::from_proto).collect(),
            nodes: vec![],
            consts: HashMap::new(),
            folded: 0,
            total_nodes: graph.node.len(),
        };
        m.import_graph(graph, dir.as_deref())?;
        Ok(m)
    }

    fn import_graph(&mut self, graph: &GraphProto, dir: Option<&Path>) -> Result<()> {
        for t in &graph.initializer {
            let v = tensor::to_value(t, dir)
                .map_err(|e| Error::file(&self.source, format!("initializer {:?}: {e}", t.name)))?;
            self.consts.insert(t.name.clone(), v);
        }
        // graph inputs that have an initializer of the same name are constants with
        // a default (IR < 4 lists every initializer as an input)
        self.inputs =
            graph.input.iter().filter(|i| !self.consts.contains_key(&i.name)).map(ValueInfo::from_proto).collect();
        for i in &self.inputs {
            if i.elem_type != 0 && tensor::dtype_of(i.elem_type).is_none() {
                return Err(Error::file(
                    &self.source,
                    format!(
                        "graph input {:?} has element type {}, which is not supported",
                        i.name,
                        proto::data_type::name(i.elem_type)
                    ),
                ));
            }
        }
        let mut defined: HashSet<String> = self.consts.keys().cloned().collect();
        defined.extend(self.inputs.iter().map(|i| i.name.clone()));
        for (k, node) in graph.node.iter().enumerate() {
            if !node.domain.is_empty() && node.domain != "ai.onnx" {
                return Err(self.node_error(node, format!("operator domain {:?} is not supported", node.domain)));
            }
            ops::check_node(node, self.opset).map_err(|e| self.wrap(node, e))?;
            for i in node.input.iter().filter(|i| !i.is_empty()) {
                if !defined.contains(i) {
                    return Err(self.node_error(
                        node,
                        format!("input {i:?} is not produced by an earlier node (node {k}; the graph must be sorted)"),
                    ));
                }
            }
            defined.extend(node.output.iter().cloned());
            let all_const = node.input.iter().all(|i| i.is_empty() || self.consts.contains_key(i));
            if all_const {
                let inputs: Vec<Option<Value>> =
                    node.input.iter().map(|i| if i.is_empty() { None } else { self.consts.get(i).cloned() }).collect();
                let outs = ops::eval(node, self.opset, &inputs).map_err(|e| self.wrap(node, e))?;
                let vars: Vec<Var> = outs.iter().map(|o| o.var.clone()).collect();
                realize(&vars).map_err(|e| self.wrap(node, e))?;
                for (name, mut v) in node.output.iter().zip(outs) {
                    v.constant = true;
                    self.consts.insert(name.clone(), v);
                }
                self.folded += 1;
            } else {
                self.nodes.push(node.clone());
            }
        }
        for o in &self.outputs {
            if !defined.contains(&o.name) {
                return Err(Error::file(&self.source, format!("graph output {:?} is never produced", o.name)));
            }
        }
        // keep only the constants that a remaining node or an output reads
        let mut used: HashSet<&str> = self.nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
        used.extend(self.outputs.iter().map(|o| o.name.as_str()));
        let keep: HashSet<String> = used.into_iter().map(str::to_string).collect();
        self.consts.retain(|k, _| keep.contains(k));
        Ok(())
    }

    fn node_error(&self, node: &NodeProto, msg: impl Into<String>) -> Error {
        Error::argument(&format!("{}: {}", self.source, ops::describe(node)), msg)
    }

    fn wrap(&self, node: &NodeProto, e: Error) -> Error {
        let prefix = format!("{}: {}", self.source, ops::describe(node));
        match e {
            Error::Argument { op, msg } if op.starts_with(&prefix) => Error::Argument { op, msg },
            Error::Argument { op, msg } if op == ops::describe(node) => Error::Argument { op: prefix, msg },
            other => Error::argument(&prefix, other.to_string()),
        }
    }

    /// The file (or name) the model came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The default-domain operator set version.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// `producer_name producer_version` from the file.
    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// The graph inputs the caller provides (initializers excluded).
    pub fn inputs(&self) -> &[ValueInfo] {
        &self.inputs
    }

    /// The graph outputs, in the order [`OnnxModel::run`] returns them.
    pub fn outputs(&self) -> &[ValueInfo] {
        &self.outputs
    }

    /// Nodes in the file.
    pub fn total_nodes(&self) -> usize {
        self.total_nodes
    }

    /// Nodes evaluated once at import because they do not depend on an input.
    pub fn folded_nodes(&self) -> usize {
        self.folded
    }

    /// Nodes evaluated on each call.
    pub fn runtime_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Operator types of the nodes evaluated on each call, with counts, sorted.
    pub fn runtime_op_counts(&self) -> Vec<(String, usize)> {
        let mut m: HashMap<&str, usize> = HashMap::new();
        for n in &self.nodes {
            *m.entry(n.op_type.as_str()).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = m.into_iter().map(|(k, c)| (k.to_string(), c)).collect();
        v.sort();
        v
    }

    /// Builds the outputs for `inputs` given by name (lazily: realise them to run).
    /// Every graph input must be given once, with its rank, its fixed dims and a
    /// consistent value for each symbolic dim; float inputs of another float type
    /// are cast.
    pub fn run(&self, inputs: &[(&str, Var)]) -> Result<Vec<Var>> {
        let names: Vec<&str> = self.outputs.iter().map(|o| o.name.as_str()).collect();
        self.run_values(inputs, &names)
    }

    /// Like [`OnnxModel::run`], but returns the values with the given names, which
    /// may be any node outputs (intermediate values), inputs or constants: for
    /// comparing a network layer by layer with another runtime.
    pub fn run_values(&self, inputs: &[(&str, Var)], names: &[&str]) -> Result<Vec<Var>> {
        let mut env: HashMap<&str, Value> = HashMap::new();
        for (k, v) in &self.consts {
            env.insert(k.as_str(), v.clone());
        }
        let mut symbols: HashMap<&str, (usize, &str)> = HashMap::new();
        for (name, _) in inputs {
            if !self.inputs.iter().any(|i| i.name == *name) {
                return Err(Error::argument(
                    &self.source,
                    format!("the model has no input {name:?}; its inputs are {}", self.describe_inputs()),
                ));
            }
        }
        for info in &self.inputs {
            let given: Vec<&Var> = inputs.iter().filter(|(n, _)| *n == info.name).map(|(_, v)| v).collect();
            let var = match given.as_slice() {
                [v] => (*v).clone(),
                [] => {
                    return Err(Error::argument(
                        &self.source,
                        format!("input {:?} is missing; the model takes {}", info.name, self.describe_inputs()),
                    ))
                }
                _ => return Err(Error::argument(&self.source, format!("input {:?} is given twice", info.name))),
            };
            self.check_input(info, &var, &mut symbols)?;
            let want = tensor::dtype_of(info.elem_type);
            let var = match want {
                Some(d) if d != var.dtype() && d.is_float() && var.dtype().is_float() => var.cast(d),
                Some(d) if d != var.dtype() => {
                    return Err(Error::dtype(
                        &self.source,
                        format!(
                            "input {:?} must be {} ({}), got {}",
                            info.name,
                            d,
                            proto::data_type::name(info.elem_type),
                            var.dtype()
                        ),
                    ))
                }
                _ => var,
            };
            let elem = if info.elem_type != 0 { info.elem_type } else { tensor::elem_of(var.dtype()) };
            env.insert(info.name.as_str(), Value { var, constant: false, elem });
        }
        for node in &self.nodes {
            let ins: Vec<Option<Value>> =
                node.input.iter().map(|i| if i.is_empty() { None } else { env.get(i.as_str()).cloned() }).collect();
            let constant = ins.iter().all(|v| v.as_ref().is_none_or(|v| v.constant)) || ops::shape_only(&node.op_type);
            let outs = ops::eval(node, self.opset, &ins).map_err(|e| self.wrap(node, e))?;
            for (name, mut v) in node.output.iter().zip(outs) {
                v.constant = constant;
                env.insert(name.as_str(), v);
            }
        }
        names
            .iter()
            .map(|n| {
                env.get(n).map(|v| v.var.clone()).ok_or_else(|| {
                    Error::argument(&self.source, format!("the graph has no value {n:?} (or it was folded away)"))
                })
            })
            .collect()
    }

    /// Runs with inputs given in the order of [`OnnxModel::inputs`].
    pub fn run_positional(&self, inputs: &[Var]) -> Result<Vec<Var>> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::argument(
                &self.source,
                format!("expected {} inputs ({}), got {}", self.inputs.len(), self.describe_inputs(), inputs.len()),
            ));
        }
        let named: Vec<(&str, Var)> = self.inputs.iter().map(|i| i.name.as_str()).zip(inputs.iter().cloned()).collect();
        self.run(&named)
    }

    fn describe_inputs(&self) -> String {
        self.inputs.iter().map(ValueInfo::describe).collect::<Vec<_>>().join(", ")
    }

    fn check_input<'a>(
        &'a self,
        info: &'a ValueInfo,
        var: &Var,
        symbols: &mut HashMap<&'a str, (usize, &'a str)>,
    ) -> Result<()> {
        if info.dims.is_empty() {
            return Ok(());
        }
        let bad = |why: String| {
            Error::shape(
                &self.source,
                format!(
                    "input {:?} has shape {:?}, but the model takes {}: {why}",
                    info.name,
                    var.shape(),
                    info.describe()
                ),
            )
        };
        if var.ndim() != info.dims.len() {
            return Err(bad(format!("rank {} instead of {}", var.ndim(), info.dims.len())));
        }
        for (k, (d, &n)) in info.dims.iter().zip(var.shape()).enumerate() {
            match d {
                Dim::Fixed(f) if *f != n => return Err(bad(format!("dim {k} must be {f}"))),
                Dim::Symbol(s) => {
                    if let Some(&(prev, who)) = symbols.get(s.as_str()) {
                        if prev != n {
                            return Err(bad(format!("{s} = {n} here but {s} = {prev} in input {who:?}")));
                        }
                    } else {
                        symbols.insert(s.as_str(), (n, info.name.as_str()));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
