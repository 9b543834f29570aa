//! Reverse-mode automatic differentiation over the meta-operators.
//!
//! Every node built while gradients are enabled and from an input that requires a
//! gradient carries a [`GradNode`]: the meta-op, a link to each input's record and
//! only the input values that the op's gradient rule reads (the rules, one per
//! meta-op, live in [`rules`]). Values the rules do not read are not kept, so the
//! forward graph behind them can be freed as usual.
//!
//! [`grad`] walks the records from the loss back to the requested values and builds
//! the backward graph out of meta-ops; it is lazy like every other graph, so it fuses
//! and compiles like forward code. Realise the loss and the gradients together (one
//! [`crate::realize`] call, as the optimizers do) and the forward values they share
//! are computed once.

mod rules;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::var::{Node, State, Var};
use kernels::{DType, MetaOp};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// True when new nodes record gradients on this thread (the default).
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// Turns gradient recording on or off for this thread; returns the previous setting.
pub fn set_grad_enabled(on: bool) -> bool {
    GRAD_ENABLED.with(|c| c.replace(on))
}

/// Runs `f` with gradient recording off on this thread (PyTorch's `torch.no_grad()`,
/// Jittor's `jt.no_grad()`): values built inside do not require gradients.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let _guard = GradMode::set(false);
    f()
}

/// A scope guard that sets gradient recording and restores the previous setting when
/// dropped.
#[must_use = "the setting is restored when the guard is dropped"]
pub struct GradMode {
    previous: bool,
}

impl GradMode {
    /// Sets recording to `on` until the guard is dropped.
    pub fn set(on: bool) -> GradMode {
        GradMode { previous: set_grad_enabled(on) }
    }
}

impl Drop for GradMode {
    fn drop(&mut self) {
        set_grad_enabled(self.previous);
    }
}

/// An input value kept for a gradient rule, with the version it had when it was used.
pub(crate) struct Saved {
    var: Var,
    version: u64,
}

/// One input of a recorded op.
pub(crate) struct Edge {
    /// The input's own record (`None`: it needs no gradient).
    node: Option<Arc<GradNode>>,
    shape: Vec<usize>,
    dtype: DType,
    /// The input value, when the rule reads it.
    saved: Option<Saved>,
}

pub(crate) enum GradKind {
    /// A value the user marked with `requires_grad_`; holds the accumulated gradient.
    Leaf { grad: Mutex<Option<Var>> },
    /// A value computed by `op`.
    Op { op: MetaOp, edges: Vec<Edge>, out: Weak<Node> },
    /// A value computed by a composite or extern op with its own rule (see
    /// [`custom_op`]).
    Custom { name: &'static str, edges: Vec<Edge>, saved: Vec<Saved>, backward: Arc<BackwardFn> },
}

/// The gradient rule of a [`custom_op`]: given the values its forward saved and the
/// gradient of its output, one gradient per input (`None` for inputs that take none).
/// Build the gradients from ops (they are recorded when higher-order gradients are
/// requested).
pub type BackwardFn = dyn Fn(&[Var], &Var) -> Result<Vec<Option<Var>>> + Send + Sync;

/// An op with its own gradient rule (PyTorch's `autograd.Function`, Jittor's
/// `Function`): `forward` computes the output from `inputs` with recording off and
/// returns it with the values `backward` will need; gradients then flow through
/// `backward` rather than through the ops `forward` used. Composite ops use it where
/// a closed-form gradient is cheaper than differentiating their parts, extern ops
/// (library calls) to register their rules.
pub fn custom_op(
    name: &'static str,
    inputs: &[Var],
    forward: impl FnOnce(&[Var]) -> Result<(Var, Vec<Var>)>,
    backward: Arc<BackwardFn>,
) -> Result<Var> {
    let track = is_grad_enabled() && inputs.iter().any(Var::requires_grad);
    let (value, saved) = no_grad(|| forward(inputs))?;
    if !track || !value.dtype().is_float() {
        return Ok(value);
    }
    let out = value.alias_without_grad();
    let edges = inputs
        .iter()
        .map(|x| Edge { node: x.grad_node(), shape: x.shape().to_vec(), dtype: x.dtype(), saved: None })
        .collect();
    let saved = saved.into_iter().map(|v| Saved { version: v.version(), var: v }).collect();
    *out.0.grad_fn.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(GradNode {
        id: out.id(),
        shape: out.shape().to_vec(),
        dtype: out.dtype(),
        device: out.device(),
        kind: GradKind::Custom { name, edges, saved, backward },
    }));
    Ok(out)
}

/// The autograd record of one node.
pub(crate) struct GradNode {
    id: u64,
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
    kind: GradKind,
}

/// Something a dropped node or record kept alive (see [`drop_iteratively`]).
pub(crate) enum Owned {
    Var(Var),
    Grad(Arc<GradNode>),
}

impl GradNode {
    fn edges(&self) -> &[Edge] {
        match &self.kind {
            GradKind::Op { edges, .. } | GradKind::Custom { edges, .. } => edges,
            GradKind::Leaf { .. } => &[],
        }
    }

    fn take_children(&mut self, out: &mut Vec<Owned>) {
        if let GradKind::Custom { saved, .. } = &mut self.kind {
            out.extend(std::mem::take(saved).into_iter().map(|s| Owned::Var(s.var)));
        }
        if let GradKind::Op { edges, .. } | GradKind::Custom { edges, .. } = &mut self.kind {
            for e in std::mem::take(edges) {
                if let Some(n) = e.node {
                    out.push(Owned::Grad(n));
                }
                if let Some(s) = e.saved {
                    out.push(Owned::Var(s.var));
                }
            }
        }
        if let GradKind::Leaf { grad } = &mut self.kind {
            if let Some(g) = grad.get_mut().ok().and_then(Option::take) {
                out.push(Owned::Var(g));
            }
        }
    }
}

impl Drop for GradNode {
    fn drop(&mut self) {
        let mut stack = Vec::new();
        self.take_children(&mut stack);
        drop_iteratively(stack);
    }
}

/// Drops graph nodes and autograd records with an explicit stack: a chain of a
/// million nodes must not overflow the thread's stack when its last handle goes.
pub(crate) fn drop_iteratively(mut stack: Vec<Owned>) {
    while let Some(item) = stack.pop() {
        match item {
            Owned::Var(v) => {
                if let Some(mut node) = Arc::into_inner(v.0) {
                    node.take_children(&mut stack);
                }
            }
            Owned::Grad(g) => {
                if let Some(mut g) = Arc::into_inner(g) {
                    g.take_children(&mut stack);
                }
            }
        }
    }
}

/// The record for a new node computed by `op` from `inputs`, or `None` when the node
/// needs no gradient (recording off, no input requires one, or the op or output
/// dtype is not differentiable).
pub(crate) fn record(
    id: u64,
    shape: &[usize],
    dtype: DType,
    op: &MetaOp,
    inputs: &[Var],
    me: &Weak<Node>,
) -> Option<Arc<GradNode>> {
    if inputs.is_empty() || !dtype.is_float() || !is_grad_enabled() {
        return None;
    }
    let links: Vec<Option<Arc<GradNode>>> = inputs.iter().map(Var::grad_node).collect();
    if links.iter().all(Option::is_none) || !rules::differentiable(op) {
        return None;
    }
    let saves = rules::saved_inputs(op, inputs.len());
    let edges = inputs
        .iter()
        .zip(links)
        .enumerate()
        .map(|(k, (x, node))| Edge {
            node,
            shape: x.shape().to_vec(),
            dtype: x.dtype(),
            saved: saves[k].then(|| Saved { var: x.clone(), version: x.version() }),
        })
        .collect();
    Some(Arc::new(GradNode {
        id,
        shape: shape.to_vec(),
        dtype,
        device: inputs[0].device(),
        kind: GradKind::Op { op: op.clone(), edges, out: me.clone() },
    }))
}

/// What a gradient rule sees of the node it differentiates.
pub(crate) struct Ctx<'a> {
    node: &'a GradNode,
    op: &'a MetaOp,
    edges: &'a [Edge],
    out: &'a Weak<Node>,
}

impl Ctx<'_> {
    /// Input `k` as it was when the op used it.
    pub(crate) fn input(&self, k: usize) -> Result<Var> {
        let Some(s) = &self.edges[k].saved else {
            return Err(internal(self.op, format!("input {k} was not saved for the gradient")));
        };
        check_version(self.op.name(), k, s)
    }

    /// The op's output: the node itself while it is alive, else recomputed from the
    /// saved inputs (rules that read the output save every input).
    pub(crate) fn output(&self) -> Result<Var> {
        if let Some(node) = self.out.upgrade() {
            return Ok(Var(node));
        }
        let inputs = (0..self.edges.len()).map(|k| self.input(k)).collect::<Result<Vec<_>>>()?;
        Ok(Var::pending(self.node.shape.clone(), self.node.dtype, self.node.device, self.op.clone(), inputs))
    }

    /// Shape of input `k`.
    pub(crate) fn in_shape(&self, k: usize) -> &[usize] {
        &self.edges[k].shape
    }

    /// Dtype of input `k`.
    pub(crate) fn in_dtype(&self, k: usize) -> DType {
        self.edges[k].dtype
    }

    /// True when input `k` needs a gradient from this node.
    pub(crate) fn wants(&self, k: usize) -> bool {
        self.edges[k].node.is_some()
    }
}

fn internal(op: &MetaOp, reason: String) -> Error {
    internal_named(op.name(), reason)
}

fn internal_named(name: &str, reason: String) -> Error {
    Error::Kernel(kernels::KernelError::Internal { op: format!("grad of {name}"), reason })
}

/// The saved value, or an error when [`Var::assign`] changed it after it was saved.
fn check_version(op: &str, k: usize, s: &Saved) -> Result<Var> {
    let now = s.var.version();
    if now != s.version {
        return Err(Error::argument(
            "grad",
            format!(
                "value {k} saved by {op} (shape {:?}) was changed by assign() after the op used it (version {} then, {now} now); compute the loss again after updating values",
                s.var.shape(),
                s.version
            ),
        ));
    }
    Ok(s.var.clone())
}

/// How [`grad_with`] differentiates.
#[derive(Clone, Default)]
pub struct GradOptions {
    /// The gradient of the output (its shape and dtype). Required when the output has
    /// more than one element; a one-element output defaults to 1.
    pub seed: Option<Var>,
    /// Record the backward graph itself, so that the gradients can be differentiated
    /// again (higher-order derivatives). Off by default.
    pub create_graph: bool,
}

/// Gradients of the scalar `loss` with respect to each of `params`, as lazy values
/// (realise them together with the loss).
///
/// Every parameter must require a gradient (see [`Var::requires_grad_`]); a parameter
/// that requires one but that the loss does not depend on gets zeros, as in Jittor
/// (PyTorch's `allow_unused=True, materialize_grads=True`).
pub fn grad(loss: &Var, params: &[Var]) -> Result<Vec<Var>> {
    grad_with(loss, params, GradOptions::default())
}

/// [`grad`] with a seed for non-scalar outputs and optional higher-order recording.
pub fn grad_with(output: &Var, params: &[Var], opts: GradOptions) -> Result<Vec<Var>> {
    for (k, p) in params.iter().enumerate() {
        if p.grad_node().is_none() {
            return Err(Error::argument(
                "grad",
                format!(
                    "parameter {k} (shape {:?}, {}) does not require a gradient; call requires_grad_(true) on it before computing the loss",
                    p.shape(),
                    p.dtype()
                ),
            ));
        }
    }
    let seed = seed_for(output, opts.seed)?;
    let targets: HashSet<u64> = params.iter().map(Var::id).collect();
    let mut found = run_backward(output, seed, &targets, opts.create_graph)?;
    Ok(params.iter().map(|p| found.remove(&p.id()).unwrap_or_else(|| p.zeros_like())).collect())
}

fn seed_for(output: &Var, seed: Option<Var>) -> Result<Var> {
    if output.grad_node().is_none() {
        return Err(Error::argument(
            "grad",
            format!(
                "the output (shape {:?}, {}) does not depend on any value that requires a gradient (was it built under no_grad, detached, or from values without requires_grad_(true)?)",
                output.shape(),
                output.dtype()
            ),
        ));
    }
    match seed {
        Some(s) => {
            if s.shape() != output.shape() {
                return Err(Error::shape(
                    "grad",
                    format!("the seed has shape {:?} but the output has shape {:?}", s.shape(), output.shape()),
                ));
            }
            Ok(s.cast(output.dtype()))
        }
        None if output.numel() == 1 => Ok(output.ones_like()),
        None => Err(Error::shape(
            "grad",
            format!(
                "the output has shape {:?}, not one element: reduce it to a scalar (sum, mean) or pass a seed of the same shape",
                output.shape()
            ),
        )),
    }
}

/// Walks the records behind `output` and returns the gradient of every record in
/// `targets` that the output depends on (`None` in `targets` means every leaf).
fn run_backward(output: &Var, seed: Var, targets: &HashSet<u64>, create_graph: bool) -> Result<HashMap<u64, Var>> {
    let _mode = GradMode::set(create_graph);
    let root = output.grad_node().expect("checked by seed_for");
    let order = topo_order(&root);
    // needed: the target itself or a record that leads to one.
    let mut needed: HashSet<u64> = HashSet::new();
    for g in &order {
        let leads = g.edges().iter().any(|e| e.node.as_ref().is_some_and(|n| needed.contains(&n.id)));
        if leads || targets.contains(&g.id) {
            needed.insert(g.id);
        }
    }
    let mut grads: HashMap<u64, Var> = HashMap::new();
    let mut found: HashMap<u64, Var> = HashMap::new();
    grads.insert(root.id, seed);
    for g in order.iter().rev() {
        if !needed.contains(&g.id) {
            continue;
        }
        let Some(dout) = grads.remove(&g.id) else { continue };
        if targets.contains(&g.id) {
            found.insert(g.id, dout.clone());
        }
        let edges = g.edges();
        if !edges.iter().any(|e| e.node.as_ref().is_some_and(|n| needed.contains(&n.id))) {
            continue;
        }
        let (name, dins) = match &g.kind {
            GradKind::Op { op, out, .. } => (op.name(), rules::backward(&Ctx { node: g, op, edges, out }, &dout)?),
            GradKind::Custom { name, saved, backward, .. } => {
                let vals =
                    saved.iter().enumerate().map(|(k, s)| check_version(name, k, s)).collect::<Result<Vec<_>>>()?;
                let dins = backward(&vals, &dout)?;
                if dins.len() != edges.len() {
                    return Err(internal_named(
                        name,
                        format!("the rule gave {} gradients for {} inputs", dins.len(), edges.len()),
                    ));
                }
                (*name, dins)
            }
            GradKind::Leaf { .. } => continue,
        };
        for (k, (e, din)) in edges.iter().zip(dins).enumerate() {
            let (Some(n), Some(din)) = (&e.node, din) else { continue };
            if !needed.contains(&n.id) {
                continue;
            }
            if din.shape() != e.shape.as_slice() || din.dtype() != e.dtype {
                return Err(internal_named(
                    name,
                    format!(
                        "the rule gave input {k} a gradient of shape {:?} ({}) for a value of shape {:?} ({})",
                        din.shape(),
                        din.dtype(),
                        e.shape,
                        e.dtype
                    ),
                ));
            }
            let din = match grads.remove(&n.id) {
                Some(acc) => acc.try_add(&din)?,
                None => din,
            };
            grads.insert(n.id, din);
        }
    }
    Ok(found)
}

/// Records reachable from `root`, inputs before consumers.
fn topo_order(root: &Arc<GradNode>) -> Vec<Arc<GradNode>> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<(Arc<GradNode>, bool)> = vec![(root.clone(), false)];
    while let Some((g, expanded)) = stack.pop() {
        if expanded {
            order.push(g);
            continue;
        }
        if !seen.insert(g.id) {
            continue;
        }
        stack.push((g.clone(), true));
        {
            for e in g.edges().iter().rev() {
                if let Some(n) = &e.node {
                    if !seen.contains(&n.id) {
                        stack.push((n.clone(), false));
                    }
                }
            }
        }
    }
    order
}

/// PyTorch's `loss.backward()`: adds the gradient of `loss` to the accumulated
/// gradient ([`Var::grad`]) of every leaf it depends on, and computes those
/// gradients (together with the loss) before returning. Call
/// [`Var::zero_grad`] (or an optimizer's `zero_grad`) between steps to start afresh.
pub fn backward(loss: &Var) -> Result<()> {
    let seed = seed_for(loss, None)?;
    let root = loss.grad_node().expect("checked by seed_for");
    let leaves: Vec<Arc<GradNode>> =
        topo_order(&root).into_iter().filter(|g| matches!(g.kind, GradKind::Leaf { .. })).collect();
    let targets: HashSet<u64> = leaves.iter().map(|g| g.id).collect();
    let mut found = run_backward(loss, seed, &targets, false)?;
    let mut new = Vec::new();
    for leaf in &leaves {
        let GradKind::Leaf { grad } = &leaf.kind else { continue };
        let Some(g) = found.remove(&leaf.id) else { continue };
        let mut slot = grad.lock().unwrap_or_else(|e| e.into_inner());
        let total = match slot.take() {
            Some(old) => old.try_add(&g)?,
            None => g,
        };
        new.push(total.clone());
        *slot = Some(total);
    }
    new.push(loss.clone());
    crate::realize(&new)
}

impl Var {
    /// The autograd record of this value, if it requires a gradient.
    pub(crate) fn grad_node(&self) -> Option<Arc<GradNode>> {
        self.0.grad_fn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many times [`Var::assign`] has replaced this value.
    pub fn version(&self) -> u64 {
        self.0.version.load(Ordering::Acquire)
    }

    /// True when gradients flow to or through this value.
    pub fn requires_grad(&self) -> bool {
        self.grad_node().is_some()
    }

    /// True for a value the user marked with `requires_grad_(true)` and for every
    /// value that does not require a gradient (PyTorch's definition).
    pub fn is_leaf(&self) -> bool {
        !matches!(
            self.grad_node().as_deref(),
            Some(GradNode { kind: GradKind::Op { .. } | GradKind::Custom { .. }, .. })
        )
    }

    /// Marks this value as a parameter whose gradient [`grad`] and [`backward`] can
    /// compute (or unmarks it). Only floating-point values can require gradients, and
    /// only a leaf can be unmarked. Returns the same value for chaining.
    pub fn requires_grad_(&self, on: bool) -> Result<Var> {
        let mut slot = self.0.grad_fn.lock().unwrap_or_else(|e| e.into_inner());
        match (&*slot, on) {
            (Some(_), true) | (None, false) => {}
            (None, true) => {
                if !self.dtype().is_float() {
                    return Err(Error::dtype(
                        "requires_grad_",
                        format!("only floating-point values can require gradients, got {}", self.dtype()),
                    ));
                }
                *slot = Some(Arc::new(GradNode {
                    id: self.id(),
                    shape: self.shape().to_vec(),
                    dtype: self.dtype(),
                    device: self.device(),
                    kind: GradKind::Leaf { grad: Mutex::new(None) },
                }));
            }
            (Some(g), false) => {
                if !matches!(g.kind, GradKind::Leaf { .. }) {
                    return Err(Error::argument(
                        "requires_grad_",
                        format!(
                            "this value (shape {:?}) is computed from values that require gradients; use detach() to get a copy without one",
                            self.shape()
                        ),
                    ));
                }
                *slot = None;
            }
        }
        drop(slot);
        Ok(self.clone())
    }

    /// The same data without gradient history: gradients do not flow through the
    /// result (PyTorch's `detach`).
    pub fn detach(&self) -> Var {
        self.alias_without_grad()
    }

    /// Jittor's name for [`Var::detach`].
    pub fn stop_grad(&self) -> Var {
        self.detach()
    }

    /// The gradient accumulated by [`backward`] on this leaf, if any.
    pub fn grad(&self) -> Option<Var> {
        match self.grad_node().as_deref() {
            Some(GradNode { kind: GradKind::Leaf { grad }, .. }) => {
                grad.lock().unwrap_or_else(|e| e.into_inner()).clone()
            }
            _ => None,
        }
    }

    /// Replaces the accumulated gradient of this leaf (`None` clears it). The
    /// gradient must have this value's shape and dtype.
    pub fn set_grad(&self, g: Option<Var>) -> Result<()> {
        let node = self.grad_node();
        let Some(GradNode { kind: GradKind::Leaf { grad }, .. }) = node.as_deref() else {
            return Err(Error::argument(
                "set_grad",
                format!("only a leaf that requires a gradient holds one (shape {:?})", self.shape()),
            ));
        };
        if let Some(g) = &g {
            if g.shape() != self.shape() || g.dtype() != self.dtype() {
                return Err(Error::shape(
                    "set_grad",
                    format!(
                        "a gradient of shape {:?} ({}) does not fit a value of shape {:?} ({})",
                        g.shape(),
                        g.dtype(),
                        self.shape(),
                        self.dtype()
                    ),
                ));
            }
        }
        *grad.lock().unwrap_or_else(|e| e.into_inner()) = g.map(|g| g.detach());
        Ok(())
    }

    /// Clears the accumulated gradient (a no-op on values that hold none).
    pub fn zero_grad(&self) {
        if let Some(GradNode { kind: GradKind::Leaf { grad }, .. }) = self.grad_node().as_deref() {
            *grad.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Replaces this value's data with `value`'s, computing `value` first: how
    /// optimizers update parameters in place. Shapes and dtypes must match. The node
    /// keeps its identity (and, for a leaf, `requires_grad` and its gradient);
    /// a value computed from it earlier and not yet realised will see the new data, and
    /// a gradient that needs the old data reports the change instead of using it.
    pub fn assign(&self, value: &Var) -> Result<()> {
        if value.shape() != self.shape() || value.dtype() != self.dtype() {
            return Err(Error::shape(
                "assign",
                format!(
                    "cannot assign a value of shape {:?} ({}) to one of shape {:?} ({})",
                    value.shape(),
                    value.dtype(),
                    self.shape(),
                    self.dtype()
                ),
            ));
        }
        if value.device() != self.device() {
            return Err(Error::Device {
                op: "assign".into(),
                msg: format!("the value is on {} but the target is on {}", value.device(), self.device()),
            });
        }
        if value.same_node(self) {
            return Ok(());
        }
        value.sync()?;
        let data = match &*value.state() {
            State::Ready { data, .. } => data.clone(),
            State::Pending { op, .. } => {
                return Err(internal(op, "value still pending after realisation".into()));
            }
        };
        *self.state() = State::Ready { data, op: "assign" };
        self.0.version.fetch_add(1, Ordering::AcqRel);
        let mut slot = self.0.grad_fn.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(slot.as_deref(), None | Some(GradNode { kind: GradKind::Leaf { .. }, .. })) {
            *slot = None;
        }
        Ok(())
    }
}
