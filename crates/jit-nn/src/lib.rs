//! Neural-network layer of the framework: optimizers and learning-rate schedules,
//! `.safetensors` files; modules, layers, losses, PyTorch state dicts, ONNX import,
//! datasets and image I/O are planned (see the project's issues).
//!
//! It re-exports the operator prelude so that downstream crates already depend on
//! the final layering (`style-models` -> `jit-nn` -> `jit-ops` -> `jit-core` ->
//! `kernels`).

#![warn(missing_docs)]

pub mod optim;
pub mod safetensors_io;

pub use jit_ops::prelude;
