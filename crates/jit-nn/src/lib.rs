//! Neural-network layer of the framework: modules, layers, losses, optimizers, state
//! dicts, ONNX import, datasets and image I/O (planned; see the project's issues).
//!
//! Until those land it re-exports the operator prelude so that downstream crates
//! already depend on the final layering (`style-models` -> `jit-nn` -> `jit-ops` ->
//! `jit-core` -> `kernels`).

#![warn(missing_docs)]

pub use jit_ops::prelude;
