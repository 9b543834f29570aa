//! Style-transfer networks (VGG19 encoder, AdaIN, Gatys, MCCNet, SANet, the
//! pretrained ONNX style models) and the `stylize` program will live here; they build
//! on `jit-nn`. Nothing is implemented in this crate yet.

#![warn(missing_docs)]

pub use jit_nn::prelude;
