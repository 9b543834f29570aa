//! Neural-network layer of the framework: the `Module` trait and PyTorch's layers
//! (`layers`), state dicts in `.safetensors` with strict / non-strict loading and a
//! renaming hook, PyTorch `.pth` checkpoints read without Python, optimizers and
//! learning-rate schedules, images as tensors, image-folder datasets and a threaded
//! loader, ONNX import (`onnx`), and mixed-precision training (`amp`: autocast and
//! a gradient scaler).
//!
//! It re-exports the operator prelude so that downstream crates already depend on
//! the final layering (`style-models` -> `jit-nn` -> `jit-ops` -> `jit-core` ->
//! `kernels`).

#![warn(missing_docs)]

pub mod amp;
pub mod data;
pub mod image_io;
pub mod layers;
pub mod module;
pub mod onnx;
pub mod optim;
pub mod pth;
pub mod safetensors_io;

pub use module::{LoadReport, Module, ModuleExt};
pub use onnx::OnnxModel;

pub use jit_ops::prelude;
