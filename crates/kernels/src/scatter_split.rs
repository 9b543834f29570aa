//! Splitting a scatter kernel into rows that can run at the same time.
//!
//! A scatter kernel combines every position of its loop domain into an output
//! element chosen by an index expression, so two positions may hit the same
//! element and the kernel normally runs in one piece. Often they cannot: the
//! gradient of a reflection pad or of a nearest upsampling scatters each
//! `(batch, channel)` plane of its source into the same plane of its target. This
//! module proves that: it cuts the loop domain into rows (its leading dimensions)
//! and bounds every row's target offsets with interval arithmetic over the launch's
//! actual sizes; when the intervals of different rows do not overlap (for every
//! scatter output), the rows write disjoint elements and may run concurrently. Each
//! element still receives its contributions in the same order as in one piece, so
//! the results are bit-identical.

use crate::expr::IndexExpr;
use crate::ir::{Kernel, Launch, Store};

/// Most rows whose intervals are computed one by one (beyond that the kernel runs in
/// one piece).
pub const MAX_ROWS: usize = 1 << 16;

/// A split of a scatter kernel's loop domain (`launch.out_shape`, row-major) into
/// `rows` consecutive ranges of `row_len` positions whose scatter targets are
/// disjoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSplit {
    /// Number of rows: the product of the leading `depth` dimensions.
    pub rows: usize,
    /// Positions per row: the product of the remaining dimensions.
    pub row_len: usize,
}

/// A split into rows that scatter to disjoint elements: the coarsest with at least
/// `min_rows` rows, else the finest with fewer (but two or more); at most
/// [`MAX_ROWS`] rows. `None` when the kernel has no scatter output, its domain has
/// fewer than two rows, or interval arithmetic cannot separate its rows (kernels
/// whose scatters keep rows apart by construction need no proof, and split above
/// their last loop index). Dense outputs of the kernel need nothing: their
/// positions are distinct anyway.
pub fn row_split(kernel: &Kernel, launch: &Launch, min_rows: usize) -> Option<RowSplit> {
    // a data-dependent part `j * stride` (0 <= j < extent) is bounded as one more
    // loop index `i_extra` over 0..extent
    let extra = launch.out_shape.len() + launch.red_shape.len();
    if !kernel.has_scatter() {
        return None;
    }
    // scatters whose sources meet only along one loop index: rows that fix the
    // dims before it are apart by construction
    let line = line_dim(kernel);
    let apart = line.is_some();
    let mut offsets: Vec<IndexExpr> = vec![];
    let mut extent = 1;
    for o in &kernel.outputs {
        match &o.store {
            _ if apart => {}
            Store::Scatter { offset, at: None, .. } => offsets.push(offset.bind_args(&launch.args)),
            Store::Scatter { offset, at: Some(at), .. } => {
                let (_, n) = at.extent.bind_args(&launch.args).bounds(&[])?;
                extent = extent.max(n);
                offsets.push((offset.clone() + at.stride.clone() * IndexExpr::idx(extra)).bind_args(&launch.args));
            }
            Store::Dense => {}
        }
    }
    let shape = &launch.out_shape;
    // rows at each depth, up to the cap
    let mut rows_at = vec![];
    let mut rows = 1usize;
    let depths = line.map_or(shape.len(), |d| d.min(shape.len()));
    for &n in &shape[..depths] {
        rows = rows.saturating_mul(n);
        if rows > MAX_ROWS {
            break;
        }
        rows_at.push(rows);
    }
    // the first depth with enough rows (or the finest allowed), then coarser ones
    let first = rows_at.iter().position(|&r| r >= min_rows).unwrap_or(rows_at.len().saturating_sub(1));
    (0..rows_at.len().min(first + 1)).rev().map(|d| (d + 1, rows_at[d])).filter(|&(_, r)| r >= 2).find_map(
        |(depth, rows)| {
            (apart || disjoint_rows(&offsets, shape, &launch.red_shape, extent, depth, rows))
                .then(|| RowSplit { rows, row_len: shape[depth..].iter().product() })
        },
    )
}

/// The loop index along which every scatter output of `kernel` may meet (see
/// [`Store::Scatter`]'s `line`), when they all name the same one.
fn line_dim(kernel: &Kernel) -> Option<usize> {
    let mut line = None;
    for o in &kernel.outputs {
        match (&o.store, line) {
            (Store::Dense, _) => {}
            (Store::Scatter { line: Some(d), .. }, None) => line = Some(*d),
            (Store::Scatter { line: Some(d), .. }, Some(l)) if *d == l => {}
            _ => return None,
        }
    }
    line
}

/// True when, for every offset expression, the intervals of the `rows` rows (fixed
/// values of the leading `depth` indices, full ranges for the rest, `0..extent`
/// for the index after the loop indices) do not overlap.
fn disjoint_rows(
    offsets: &[IndexExpr],
    shape: &[usize],
    red: &[usize],
    extent: i64,
    depth: usize,
    rows: usize,
) -> bool {
    let mut ranges: Vec<(i64, i64)> = shape.iter().chain(red).map(|&n| (0, n as i64 - 1)).collect();
    ranges.push((0, (extent - 1).max(0)));
    offsets.iter().all(|offset| {
        let mut spans = Vec::with_capacity(rows);
        for r in 0..rows {
            let mut rest = r;
            for d in (0..depth).rev() {
                let i = (rest % shape[d]) as i64;
                rest /= shape[d];
                ranges[d] = (i, i);
            }
            match offset.bounds(&ranges) {
                Some(span) => spans.push(span),
                None => return false,
            }
        }
        spans.sort_unstable();
        spans.windows(2).all(|w| w[0].1 < w[1].0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::ir::{Inst, Output, Value};
    use crate::meta::ReduceOp;
    use IndexExpr as E;

    /// A kernel that scatter-adds its one input at `offset` over `shape`.
    fn scatter(offset: E, shape: &[usize], args: Vec<i64>) -> (Kernel, Launch) {
        let n_args = args.len();
        let body =
            vec![Value { inst: Inst::Load { input: 0, offset: E::c(0), guard: None, fill: 0.0 }, dtype: DType::F32 }];
        let store = Store::Scatter { op: ReduceOp::Sum, offset, guard: E::c(1), at: None, line: None };
        let kernel = Kernel {
            inputs: vec![DType::F32],
            out_rank: shape.len(),
            body,
            outputs: vec![Output { dtype: DType::F32, value: 0, store }],
            n_args,
            ..Kernel::default()
        };
        let launch = Launch {
            out_shape: shape.to_vec(),
            red_shape: vec![],
            args,
            params: vec![],
            output_lens: vec![shape.iter().product()],
        };
        (kernel, launch)
    }

    /// [`scatter`] whose offset also has a data-dependent part `j * stride` (`j`
    /// loaded from a second, i64 input at `index_offset`, valid below `extent`),
    /// its store naming `line` as its line index.
    fn indexed_scatter(
        offset: E,
        index_offset: E,
        (stride, extent): (E, E),
        line: Option<usize>,
        shape: &[usize],
        args: Vec<i64>,
    ) -> (Kernel, Launch) {
        let (mut k, l) = scatter(offset, shape, args);
        k.inputs.push(DType::I64);
        k.body.push(Value {
            inst: Inst::Load { input: 1, offset: index_offset, guard: None, fill: 0.0 },
            dtype: DType::I64,
        });
        if let Store::Scatter { at, line: l_dim, .. } = &mut k.outputs[0].store {
            *at = Some(crate::ir::Indirect { value: 1, stride, extent });
            *l_dim = line;
        }
        (k, l)
    }

    /// `|i - 1|` reflected back from the far edge `n - 1`: the reflection-pad index.
    fn reflect(i: usize, n: E) -> E {
        let centred = E::idx(i) - 1;
        let a = centred.clone().max(E::c(0) - centred);
        let far = n.clone() - a.clone();
        n - far.clone().max(E::c(0) - far)
    }

    #[test]
    fn reflection_pad_gradients_split_by_plane() {
        // [2, 3, 6, 7] padded by one on each side into [2, 3, 4, 5]: the planes are
        // disjoint, the rows of one plane are not (the first and third rows both
        // fold into the second)
        let shape = [2, 3, 6, 7];
        let offset =
            E::idx(0) * E::Arg(0) + E::idx(1) * E::Arg(1) + reflect(2, E::Arg(2)) * E::Arg(3) + reflect(3, E::Arg(4));
        let (k, l) = scatter(offset, &shape, vec![60, 20, 3, 5, 4]);
        assert_eq!(row_split(&k, &l, 2), Some(RowSplit { rows: 2, row_len: 126 }));
        assert_eq!(row_split(&k, &l, 3), Some(RowSplit { rows: 6, row_len: 42 }));
        // rows of one plane overlap: the split stops at planes
        assert_eq!(row_split(&k, &l, 7), Some(RowSplit { rows: 6, row_len: 42 }));
    }

    #[test]
    fn overlapping_or_unbounded_targets_stay_in_one_piece() {
        // every position adds into one element
        let (k, l) = scatter(E::c(0), &[4, 5], vec![]);
        assert_eq!(row_split(&k, &l, 2), None);
        // a transposition: rows of the source are columns of the target
        let (k, l) = scatter(E::idx(1) * E::Arg(0) + E::idx(0), &[4, 5], vec![4]);
        assert_eq!(row_split(&k, &l, 2), None);
        // an offset read from an unknown modulo cannot be bounded per row
        let (k, l) = scatter(E::idx(0).modulo(E::Arg(0)), &[4, 5], vec![3]);
        assert_eq!(row_split(&k, &l, 2), None);
    }

    #[test]
    fn nearest_upsampling_gradient_splits_and_dense_kernels_do_not() {
        // [1, 4, 8, 8] summed into [1, 4, 4, 4] by floor(i / 2)
        let offset = E::idx(1) * E::Arg(0) + E::idx(2).floor_div(E::c(2)) * E::Arg(1) + E::idx(3).floor_div(E::c(2));
        let (k, l) = scatter(offset, &[1, 4, 8, 8], vec![16, 4]);
        assert_eq!(row_split(&k, &l, 4), Some(RowSplit { rows: 4, row_len: 64 }));
        let mut dense = k.clone();
        dense.outputs[0].store = Store::Dense;
        assert_eq!(row_split(&dense, &l, 2), None);
    }

    /// A scatter whose offset along one dim is data (`scatter_add` along dim 1 of
    /// `[6, 40, 33]`): the rows of dim 0 stay apart whatever the data, the rows of
    /// dim 1 do not; along dim 0 nothing splits.
    #[test]
    fn data_dependent_scatters_split_where_any_index_keeps_rows_apart() {
        let with_index = |offset: E, stride: E, extent: E, shape: &[usize], args: Vec<i64>| {
            indexed_scatter(offset, E::idx(0), (stride, extent), None, shape, args)
        };
        // target [6, 40, 33] from a source [6, 90, 33]
        let offset = E::idx(0) * E::Arg(0) + E::idx(2);
        let (k, l) = with_index(offset, E::Arg(1), E::Arg(2), &[6, 90, 33], vec![40 * 33, 33, 40]);
        assert_eq!(row_split(&k, &l, 4), Some(RowSplit { rows: 6, row_len: 90 * 33 }));
        // one more row of the index domain (dim 1) would overlap: no finer split
        assert_eq!(row_split(&k, &l, 100), Some(RowSplit { rows: 6, row_len: 90 * 33 }));
        // along dim 0 every row may reach every target
        let (k, l) = with_index(E::idx(1), E::Arg(0), E::Arg(1), &[7, 8], vec![8, 50]);
        assert_eq!(row_split(&k, &l, 2), None);
    }

    /// A scatter that keeps its rows apart by construction (the `scatter` meta-op,
    /// looping along its dim last) splits above its last loop index with no proof,
    /// even where the intervals of its rows overlap.
    #[test]
    fn scatters_with_rows_apart_split_without_a_proof() {
        // index_add along dim 0 of [7, 8] into [50, 8]: the loop is [8, 7], each
        // row one column of the target, interleaved with the others
        let (mut k, l) = indexed_scatter(E::idx(0), E::idx(1), (E::c(8), E::c(50)), Some(1), &[8, 7], vec![]);
        assert_eq!(row_split(&k, &l, 4), Some(RowSplit { rows: 8, row_len: 7 }));
        assert_eq!(row_split(&k, &l, 1000), Some(RowSplit { rows: 8, row_len: 7 }), "never within a line");
        if let Store::Scatter { line, .. } = &mut k.outputs[0].store {
            *line = None;
        }
        assert_eq!(row_split(&k, &l, 4), None, "the intervals of the columns overlap");
    }

    /// The host's order for the same scatter (the line index first, [7, 8]): rows
    /// of the line index may meet, so there is no split without a proof.
    #[test]
    fn scatters_along_a_leading_line_do_not_split_their_rows() {
        let (k, l) = indexed_scatter(E::idx(1), E::idx(0), (E::c(8), E::c(50)), Some(0), &[7, 8], vec![]);
        assert_eq!(row_split(&k, &l, 2), None);
    }

    /// The split's promise checked by brute force: no element is written from two
    /// rows.
    #[test]
    fn split_rows_never_share_a_target() {
        let shape = [3, 4, 5, 6];
        let offset =
            E::idx(0) * E::Arg(0) + E::idx(1) * E::Arg(1) + reflect(2, E::Arg(2)) * E::Arg(3) + reflect(3, E::Arg(4));
        let args = vec![4 * 3 * 4, 3 * 4, 2, 4, 3];
        let (k, l) = scatter(offset.clone(), &shape, args.clone());
        let mut checked = 0;
        for min_rows in [2, 3, 4, 12] {
            let Some(s) = row_split(&k, &l, min_rows) else { continue };
            checked += 1;
            let mut owner = std::collections::HashMap::new();
            for p in 0..shape.iter().product::<usize>() {
                let mut rest = p;
                let mut idx = [0i64; 4];
                for d in (0..4).rev() {
                    idx[d] = (rest % shape[d]) as i64;
                    rest /= shape[d];
                }
                let t = offset.eval_args(&idx, &args);
                let row = p / s.row_len;
                assert_eq!(*owner.entry(t).or_insert(row), row, "target {t} from two rows ({min_rows})");
            }
        }
        assert_eq!(checked, 4, "every wish has a split (by batch or by plane)");
    }
}
