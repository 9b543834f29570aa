//! User-level operators, each lowered onto the meta-ops of `jit-core`, with
//! PyTorch's names and semantics.
//!
//! * [`reduce`]: `sum`, `mean`, `max`, `min`, `prod`, `var`, `std`, `argmax`, `argmin`,
//!   `logsumexp`, `norm`.
//! * [`shape`]: `view`, `flatten`, `squeeze`, `unsqueeze`, `transpose`, `permute`,
//!   `narrow`, `slice`, `pad`, `flip`, `expand`, `repeat`, `cat`, `stack`, `split`,
//!   `chunk`, `gather`, `index_select`, `roll`, `tril`, `triu`, nearest upsampling.
//! * [`activation`]: `clamp`, `relu`, `leaky_relu`, `gelu`, `silu`, `elu`, `softplus`,
//!   `hardsigmoid`, `hardswish`, `mish`, `softmax`, `log_softmax`.
//! * [`indexing`]: `take_along_dim`, `scatter_add`, `scatter_reduce`, `index_add`,
//!   `masked_fill`, `one_hot`, `embedding` (on the `gather` and `scatter` meta-ops).
//! * [`scan`]: `cumsum`, `cumprod`, `cummax`, `cummin` (log-step scans).
//! * [`sort`](mod@sort): `sort`, `argsort`, `topk`, `median` (a bitonic network).
//! * [`similarity`]: `normalize`, `cosine_similarity`.
//! * [`finite`]: `isnan`, `isinf`, `isposinf`, `isneginf`, `isfinite`, `nan_to_num`.
//! * [`linalg`]: `matmul` and `linear` (gemm library, meta-op fallback).
//! * [`conv`]: `conv2d` (im2col reindex + gemm; zeros or reflect padding, stride,
//!   dilation, groups) and `conv_transpose2d`.
//! * [`fold`](mod@fold): `unfold` (im2col), `fold` (col2im), `pixel_shuffle`, `pixel_unshuffle`.
//! * [`pool`]: `max_pool2d`, `avg_pool2d`, `adaptive_avg_pool2d`, global pooling.
//! * [`norm`]: `batch_norm`, `instance_norm`, `layer_norm`, `group_norm`.
//! * [`upsample`]: bilinear resizing (nearest is in [`shape`]).
//! * [`grid_sample`](mod@grid_sample): `grid_sample` (bilinear or nearest; zeros,
//!   border or reflection padding) and `affine_grid`.
//! * [`loss`]: `mse_loss`, `l1_loss`, `smooth_l1_loss`, `huber_loss`, `nll_loss`,
//!   `cross_entropy`, `binary_cross_entropy` (and `_with_logits`), `kl_div`, `tv_loss`;
//!   `lerp`.
//! * [`autocast`](mod@autocast): automatic mixed precision (`torch.autocast`): matrix products and
//!   convolutions in f16 or bf16, reductions that need it in f32.
//!
//! Import the [`prelude`] to get [`Var`] together with these methods.

#![warn(missing_docs)]

pub mod activation;
pub mod autocast;
pub mod conv;
pub mod finite;
pub mod fold;
pub mod grid_sample;
pub mod indexing;
pub mod linalg;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod scan;
pub mod shape;
pub mod similarity;
pub mod sort;
pub mod upsample;

pub use activation::Activations;
pub use autocast::{autocast, autocast_dtype, autocast_off};
pub use conv::{
    conv2d, conv2d_library, conv_transpose2d, conv_transpose2d_library, Conv2dOptions, ConvPadding,
    ConvTranspose2dOptions,
};
pub use finite::FiniteOps;
pub use fold::{fold, pixel_shuffle, pixel_unshuffle, unfold, FoldOptions};
pub use grid_sample::{affine_grid, grid_sample, GridMode, GridPadding};
pub use indexing::{embedding, IndexOps, ScatterReduce};
pub use jit_core::{DType, Device, Error, Result, Var};
pub use linalg::{linear, matmul};
pub use loss::{
    binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, huber_loss, kl_div, l1_loss, lerp, mse_loss,
    nll_loss, smooth_l1_loss, tv_loss, KlReduction, Reduction,
};
pub use norm::{batch_norm, group_norm, instance_norm, layer_norm, RunningStats};
pub use pool::{adaptive_avg_pool2d, avg_pool2d, global_avg_pool2d, max_pool2d, Pool2dOptions};
pub use reduce::ReduceOps;
pub use scan::ScanOps;
pub use shape::{cat, stack, PadMode, ShapeOps};
pub use similarity::{cosine_similarity, normalize};
pub use sort::{set_sort_network, SortOps};
pub use upsample::{upsample_bilinear2d, Resize};

/// Everything a user needs: `Var`, dtypes, devices, errors and every operator trait.
pub mod prelude {
    pub use crate::activation::Activations;
    pub use crate::autocast::{autocast, autocast_dtype, autocast_off};
    pub use crate::conv::{
        conv2d, conv2d_library, conv_transpose2d, conv_transpose2d_library, Conv2dOptions, ConvPadding,
        ConvTranspose2dOptions,
    };
    pub use crate::finite::FiniteOps;
    pub use crate::fold::{fold, pixel_shuffle, pixel_unshuffle, unfold, FoldOptions};
    pub use crate::grid_sample::{affine_grid, grid_sample, GridMode, GridPadding};
    pub use crate::indexing::{embedding, IndexOps, ScatterReduce};
    pub use crate::linalg::{linear, matmul};
    pub use crate::loss::{
        binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, huber_loss, kl_div, l1_loss, lerp,
        mse_loss, nll_loss, smooth_l1_loss, tv_loss, KlReduction, Reduction,
    };
    pub use crate::norm::{batch_norm, group_norm, instance_norm, layer_norm, RunningStats};
    pub use crate::pool::{adaptive_avg_pool2d, avg_pool2d, global_avg_pool2d, max_pool2d, Pool2dOptions};
    pub use crate::reduce::ReduceOps;
    pub use crate::scan::ScanOps;
    pub use crate::shape::{cat, stack, PadMode, ShapeOps};
    pub use crate::similarity::{cosine_similarity, normalize};
    pub use crate::sort::SortOps;
    pub use crate::upsample::{upsample_bilinear2d, Resize};
    pub use jit_core::{bf16, f16, manual_seed, realize, DType, Device, Error, IndexExpr, Result, Var};
}
