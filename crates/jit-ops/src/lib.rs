//! User-level operators, each lowered onto the meta-ops of `jit-core`, with
//! PyTorch's names and semantics.
//!
//! * [`reduce`]: `sum`, `mean`, `max`, `min`, `prod`, `var`, `std`, `argmax`, `argmin`.
//! * [`shape`]: `view`, `flatten`, `squeeze`, `unsqueeze`, `transpose`, `permute`,
//!   `narrow`, `slice`, `pad`, `flip`, `expand`, `repeat`, `cat`, `stack`, `split`,
//!   `chunk`, `gather`, `index_select`, nearest upsampling.
//! * [`activation`]: `clamp`, `relu`, `leaky_relu`, `gelu`, `softmax`, `log_softmax`.
//! * [`linalg`]: `matmul` and `linear` lowered onto broadcast, multiply and sum.
//!
//! Import the [`prelude`] to get [`Var`] together with these methods.

#![warn(missing_docs)]

pub mod activation;
pub mod linalg;
pub mod reduce;
pub mod shape;

pub use activation::Activations;
pub use jit_core::{DType, Device, Error, Result, Var};
pub use linalg::{linear, matmul};
pub use reduce::ReduceOps;
pub use shape::{cat, stack, PadMode, ShapeOps};

/// Everything a user needs: `Var`, dtypes, devices, errors and every operator trait.
pub mod prelude {
    pub use crate::activation::Activations;
    pub use crate::linalg::{linear, matmul};
    pub use crate::reduce::ReduceOps;
    pub use crate::shape::{cat, stack, PadMode, ShapeOps};
    pub use jit_core::{bf16, f16, manual_seed, realize, DType, Device, Error, IndexExpr, Result, Var};
}
