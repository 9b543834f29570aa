//! Below the graph: data types, host buffers, index expressions, the meta-op
//! descriptors, the counter-based random generator and the backends that run them.
//!
//! Nothing in this crate knows about graphs. A backend receives one operation (or,
//! from the fusion planner, one fused kernel) together with its input buffers and
//! produces an output buffer.
//!
//! * [`dtype`]: the element types and their promotion rules.
//! * [`buffer`]: typed host storage with live-buffer accounting.
//! * [`host_pool`]: the caching allocator that reuses large released host buffers.
//! * [`expr`]: the typed index-expression AST used by `reindex`, `reindex_reduce`
//!   and the kernel IR.
//! * [`meta`]: the meta-operator descriptors.
//! * [`random`]: Philox-4x32-10, the same numbers on every backend.
//! * [`reference`](mod@reference): the oracle interpreter of single meta-ops, computing in f64 / i64.
//! * [`ir`]: the kernel IR, one fused loop nest, with its canonical text and hash.
//! * [`exec`]: a portable executor of the kernel IR (debugging, checking compilers).
//! * [`cpu`]: the Cranelift backend (native code, rayon, f32x4 loops).
//! * [`cache`]: the compiled-kernel cache and its counters.
//! * [`collapse`]: adjacent loop dims merged where every index expression allows.
//! * [`conv_direct`]: the direct convolution for inputs with few channels.
//! * [`scatter_split`]: which scatter kernels may run as concurrent rows.
//! * [`row_group`]: consecutive kernels run together a block of rows at a time.
//! * [`cuda`]: run-time discovery of the CUDA libraries, the CUDA C emitter, NVRTC
//!   and the driver runtime.

#![warn(missing_docs)]

pub mod buffer;
pub mod cache;
pub mod collapse;
pub mod conv2d;
pub mod conv_direct;
pub mod conv_winograd;
pub mod cpu;
pub mod cuda;
pub mod disk_cache;
pub mod dtype;
pub mod error;
pub mod exec;
pub mod expr;
pub mod extern_op;
pub mod host_pool;
pub mod ir;
pub mod meta;
pub mod random;
pub mod reference;
pub mod row_group;
pub mod scatter_split;

pub use buffer::{live_buffers, live_bytes, Buffer, Element, HostBuffer};
pub use dtype::DType;
pub use error::KernelError;
pub use expr::IndexExpr;
pub use extern_op::{ConvPass, ExternOp};
pub use meta::{BinaryOp, Distribution, MetaOp, ReduceOp, UnaryOp};
