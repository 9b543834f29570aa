//! `Var`: a cheap, clonable handle on a node of the lazy graph.

use crate::autograd::{drop_iteratively, GradNode, Owned};
use crate::device::Device;
use crate::error::{Error, Result};
use kernels::{Buffer, DType, Distribution, Element, HostBuffer, MetaOp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static SEED: AtomicU64 = AtomicU64::new(0x5EED);
static SEED_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Sets the global seed. Every later `rand`/`randn` call without an explicit seed
/// draws a key from `(seed, call number)`, so a program is reproducible from here.
pub fn manual_seed(seed: u64) {
    SEED.store(seed, Ordering::SeqCst);
    SEED_COUNTER.store(0, Ordering::SeqCst);
}

fn next_seed() -> u64 {
    let n = SEED_COUNTER.fetch_add(1, Ordering::SeqCst);
    // splitmix64 of (seed, n): distinct, well-mixed keys for consecutive calls
    let mut z = SEED.load(Ordering::SeqCst) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) enum State {
    /// Not computed yet: the op and its inputs.
    Pending { op: MetaOp, inputs: Vec<Var> },
    /// Computed: the data. `op` is kept for display.
    Ready { data: Arc<Buffer>, op: &'static str },
}

pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    pub(crate) state: Mutex<State>,
    /// The autograd record: how to send a gradient back to the inputs (`None` when
    /// the value does not require a gradient).
    pub(crate) grad_fn: Mutex<Option<Arc<GradNode>>>,
    /// Bumped by [`Var::assign`]; saved values check it in backward.
    pub(crate) version: AtomicU64,
}

impl Node {
    /// Moves out everything this node keeps alive (inputs and autograd record).
    pub(crate) fn take_children(&mut self, out: &mut Vec<Owned>) {
        if let Ok(State::Pending { inputs, .. }) = self.state.get_mut() {
            out.extend(std::mem::take(inputs).into_iter().map(Owned::Var));
        }
        if let Some(g) = self.grad_fn.get_mut().ok().and_then(Option::take) {
            out.push(Owned::Grad(g));
        }
    }
}

impl Drop for Node {
    /// Drops the graph behind a node without recursion, so that dropping a very long
    /// unrealised chain (or its autograd record) cannot overflow the stack.
    fn drop(&mut self) {
        let mut stack = Vec::new();
        self.take_children(&mut stack);
        drop_iteratively(stack);
    }
}

/// A value in the lazy graph: shape, dtype, device, and either the op that will
/// compute it or its data.
#[derive(Clone)]
pub struct Var(pub(crate) Arc<Node>);

impl Var {
    pub(crate) fn new_node(shape: Vec<usize>, dtype: DType, device: Device, state: State) -> Var {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Var(Arc::new(Node {
            id,
            shape,
            dtype,
            device,
            state: Mutex::new(state),
            grad_fn: Mutex::new(None),
            version: AtomicU64::new(0),
        }))
    }

    /// A node computed by `op` from `inputs`. When gradients are enabled and an input
    /// requires one, the node records how to send its gradient back.
    pub(crate) fn pending(shape: Vec<usize>, dtype: DType, device: Device, op: MetaOp, inputs: Vec<Var>) -> Var {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Var(Arc::new_cyclic(|me| {
            let grad_fn = crate::autograd::record(id, &shape, dtype, &op, &inputs, me);
            Node {
                id,
                shape,
                dtype,
                device,
                state: Mutex::new(State::Pending { op, inputs }),
                grad_fn: Mutex::new(grad_fn),
                version: AtomicU64::new(0),
            }
        }))
    }

    /// A new node that computes nothing and records no gradient: the same data.
    pub(crate) fn alias_without_grad(&self) -> Var {
        let state = match &*self.state() {
            State::Ready { data, op } => State::Ready { data: data.clone(), op },
            State::Pending { .. } => State::Pending { op: MetaOp::Reshape, inputs: vec![self.clone()] },
        };
        Var::new_node(self.shape().to_vec(), self.dtype(), self.device(), state)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding it; the
        // state itself is always consistent (it is replaced whole).
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wraps host data of the given shape.
    pub fn from_host(data: HostBuffer, shape: &[usize]) -> Result<Var> {
        let n = crate::shape::numel(shape).unwrap_or(usize::MAX);
        if data.len() != n {
            return Err(Error::shape(
                "from_vec",
                format!("{} elements cannot have shape {shape:?} ({n} elements)", data.len()),
            ));
        }
        let dtype = data.dtype();
        let state = State::Ready { data: Arc::new(Buffer::new(data)), op: "array" };
        Ok(Var::new_node(shape.to_vec(), dtype, Device::Cpu, state))
    }

    /// A value from a vector and a shape.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Var> {
        Var::from_host(T::into_buffer(data), shape)
    }

    /// A value from a slice and a shape.
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Var> {
        Var::from_vec(data.to_vec(), shape)
    }

    /// A rank-0 value.
    pub fn scalar<T: Element>(v: T) -> Var {
        Var::new_node(
            vec![],
            T::DTYPE,
            Device::Cpu,
            State::Ready { data: Arc::new(Buffer::new(T::into_buffer(vec![v]))), op: "array" },
        )
    }

    /// Every element equal to `value` (rounded to `dtype`).
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Var {
        Var::pending(shape.to_vec(), dtype, Device::Cpu, MetaOp::Full { value }, vec![])
    }

    /// Zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Var {
        Var::full(shape, 0.0, dtype)
    }

    /// Ones.
    pub fn ones(shape: &[usize], dtype: DType) -> Var {
        Var::full(shape, 1.0, dtype)
    }

    /// `full` with this value's shape, dtype and device.
    pub fn full_like(&self, value: f64) -> Var {
        Var::pending(self.shape().to_vec(), self.dtype(), self.device(), MetaOp::Full { value }, vec![])
    }

    /// Zeros like this value.
    pub fn zeros_like(&self) -> Var {
        self.full_like(0.0)
    }

    /// Ones like this value.
    pub fn ones_like(&self) -> Var {
        self.full_like(1.0)
    }

    /// The index along `dim` at every position of `shape` (a generalised `arange`).
    pub fn index(shape: &[usize], dim: usize, dtype: DType) -> Result<Var> {
        if dim >= shape.len() {
            return Err(Error::Dim { op: "index".into(), dim: dim as isize, ndim: shape.len(), shape: shape.to_vec() });
        }
        Ok(Var::pending(shape.to_vec(), dtype, Device::Cpu, MetaOp::Index { dim }, vec![]))
    }

    /// `0, 1, ..., n-1` as i64.
    pub fn arange(n: usize) -> Var {
        Var::pending(vec![n], DType::I64, Device::Cpu, MetaOp::Index { dim: 0 }, vec![])
    }

    /// Random values from `dist` with an explicit Philox key. Element `k` (row-major)
    /// depends only on `seed` and `k`, identically on every backend.
    pub fn random(shape: &[usize], dist: Distribution, dtype: DType, seed: u64) -> Result<Var> {
        if !dtype.is_float() {
            return Err(Error::dtype("random", format!("random values need a floating-point dtype, got {dtype}")));
        }
        Ok(Var::pending(shape.to_vec(), dtype, Device::Cpu, MetaOp::Random { seed, dist }, vec![]))
    }

    /// Uniform on `[0, 1)`, keyed from the global seed (see [`manual_seed`]).
    pub fn rand(shape: &[usize], dtype: DType) -> Result<Var> {
        Var::random(shape, Distribution::Uniform { low: 0.0, high: 1.0 }, dtype, next_seed())
    }

    /// Standard normal, keyed from the global seed (see [`manual_seed`]).
    pub fn randn(shape: &[usize], dtype: DType) -> Result<Var> {
        Var::random(shape, Distribution::Normal { mean: 0.0, std: 1.0 }, dtype, next_seed())
    }

    /// Unique id of the node.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.0.device
    }

    /// Number of dims.
    pub fn ndim(&self) -> usize {
        self.0.shape.len()
    }

    /// Number of elements (`usize::MAX` when the product overflows; realising such
    /// a value is an error).
    pub fn numel(&self) -> usize {
        crate::shape::numel(self.shape()).unwrap_or(usize::MAX)
    }

    /// Size of dim `dim` (negative counts from the end).
    pub fn dim(&self, dim: isize) -> Result<usize> {
        Ok(self.0.shape[crate::shape::normalize_dim("dim", dim, self.shape())?])
    }

    /// True when the value has been computed.
    pub fn is_realized(&self) -> bool {
        matches!(*self.state(), State::Ready { .. })
    }

    /// The meta-op that computes this value, or `None` once it is computed.
    pub fn op(&self) -> Option<MetaOp> {
        match &*self.state() {
            State::Pending { op, .. } => Some(op.clone()),
            State::Ready { .. } => None,
        }
    }

    /// The inputs of the op (empty once computed: a realised node drops its inputs).
    pub fn inputs(&self) -> Vec<Var> {
        match &*self.state() {
            State::Pending { inputs, .. } => inputs.clone(),
            State::Ready { .. } => vec![],
        }
    }

    /// Name of the op that made this value.
    pub fn op_name(&self) -> &'static str {
        match &*self.state() {
            State::Pending { op, .. } => op.name(),
            State::Ready { op, .. } => op,
        }
    }

    /// True when both handles refer to the same node.
    pub fn same_node(&self, other: &Var) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
