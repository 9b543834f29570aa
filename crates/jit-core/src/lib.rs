//! The lazy graph.
//!
//! A [`Var`] is a cheap handle on a node of a graph of meta-operators. Building a
//! graph checks shapes, dtypes and devices at once (errors name the op and the
//! shapes) and computes nothing; [`Var::sync`], [`realize`], [`Var::to_vec`] and
//! [`Var::item`] walk the needed sub-graph and run it. A realised node drops its
//! inputs, so the graph behind it can be freed.
//!
//! ```
//! use jit_core::Var;
//! let x = Var::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
//! let y = (&x * 2.0 + 1.0).exp();
//! let v = y.to_vec::<f32>().unwrap();
//! assert!((v[0] - 3f32.exp()).abs() < 1e-5);
//! ```

#![warn(missing_docs)]

mod arith;
mod autograd;
mod device;
mod display;
mod error;
pub mod flags;
mod meta;
mod planner;
mod realize;
mod shape;
mod var;

pub use arith::Operand;
pub use autograd::{
    backward, custom_op, grad, grad_with, is_grad_enabled, no_grad, set_grad_enabled, BackwardFn, GradMode, GradOptions,
};
pub use device::Device;
pub use error::{Error, Result};
pub use flags::{flags, row_groups, set_flags, set_row_groups, with_flags, with_row_groups, Backend, Flags};
pub use half::{bf16, f16};
pub use kernels::cache::CacheStats;
pub use kernels::conv2d::Conv2dSpec;
pub use kernels::conv_direct::DIRECT_MAX_PAIRS;
pub use kernels::cuda::dnn::usable as cudnn_usable;
pub use kernels::cuda::{probe as cuda_probe, CudaInfo};
pub use kernels::host_pool::{
    memory_limit as host_memory_limit, set_memory_limit as set_host_memory_limit, system_available_bytes,
};
pub use kernels::{
    BinaryOp, ConvPass, DType, Distribution, Element, ExternOp, HostBuffer, IndexExpr, MetaOp, ReduceOp, UnaryOp,
};
pub use realize::{
    capture_kernels, extern_calls, kernel_launches, live_buffers, live_bytes, planned_externs, planned_kernel_ir,
    planned_kernels, realize, row_groups_run, sync_all, CapturedKernel,
};
pub use shape::{broadcast_shapes, normalize_dim, normalize_dims, numel};
pub use var::{manual_seed, Var};

/// Counters of the CPU backend's compiled-kernel cache.
pub fn cpu_cache_stats() -> CacheStats {
    kernels::cpu::cache().stats()
}
