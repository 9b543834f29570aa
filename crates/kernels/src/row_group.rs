//! Row groups: consecutive kernels that run together, a block of rows at a time.
//!
//! Softmax on the CPU is four kernels (row maximum, `exp(x - max)`, row sum,
//! division); layer norm, instance norm and AdaIN are a few more. Run one after the
//! other, each streams the whole tensor through memory, and the intermediates
//! (`exp(x - max)`) are written out and read back. A row group runs them the other
//! way round: for a block of rows that fits in the L2 cache, every kernel of the
//! group runs on that block before the next block starts. The input rows are read
//! from memory once and then from the cache; an intermediate read only inside the
//! group never exists as a whole tensor: each thread keeps one block of it in a
//! scratch area of its own.
//!
//! The kernels are compiled and run exactly as they would be alone (a kernel runs
//! any range of its output positions), so the results are bit-identical. What
//! makes this valid is a proof, per launch, that every kernel reads an earlier
//! kernel's output only inside the same row: with the group's `rows` rows cut from
//! each kernel's leading output dimensions, the flat offset of every such load is
//! `row * per_row + f(other indices)` with `0 <= f < per_row`, shown from the
//! offset's linear coefficients and interval bounds over the launch's sizes (see
//! [`find`]). Kernels that scatter, gather from an earlier kernel's output, or read
//! it across rows end the group.

use crate::buffer::HostBuffer;
use crate::dtype::DType;
use crate::error::KernelError;
use crate::expr::IndexExpr;
use crate::ir::{Inst, Kernel, Launch, Store};
use rayon::prelude::*;
use std::cell::RefCell;

/// Most kernels in one group.
pub const MAX_MEMBERS: usize = 16;

/// Bytes a block of rows should touch, over all the group's kernels: half of the L2
/// cache of one core on the machines we measure (512 KiB to 2 MiB).
pub const BLOCK_BYTES: usize = 256 * 1024;

/// Most bytes of one thread's scratch block; an intermediate whose block would
/// not fit is kept as a whole buffer instead, so that threads hold little memory
/// between groups.
pub const MAX_SCRATCH_BYTES: usize = 4 << 20;

/// Where a group member's input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Buffer `k` of the inputs from outside the group.
    Input(usize),
    /// Output `output` of the earlier member `member`.
    Member {
        /// Index of the member in the group.
        member: usize,
        /// Which of its outputs.
        output: usize,
    },
}

/// One kernel of a candidate group, with its launch and where its inputs come from
/// (in the kernel's input order).
#[derive(Debug, Clone)]
pub struct Member<'a> {
    /// The kernel.
    pub kernel: &'a Kernel,
    /// Its sizes and arguments.
    pub launch: &'a Launch,
    /// One source per kernel input.
    pub sources: Vec<Source>,
}

/// A group found by [`find`]: the first `len` members, cut into `rows` rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowGroup {
    /// Number of members (at least two).
    pub len: usize,
    /// Number of rows, the same for every member.
    pub rows: usize,
    /// Output positions per row, per member.
    pub per_row: Vec<usize>,
}

/// The fewest rows worth a group on this thread pool: two per thread, so that the
/// blocks keep every core busy.
pub fn min_rows() -> usize {
    2 * rayon::current_num_threads()
}

/// The longest group that starts at the first member: at least two kernels and at
/// least `min_rows` rows, ending with a member that reads an earlier member's output
/// or an input an earlier member reads (a group of unrelated kernels gains
/// nothing). `None` when there is none.
pub fn find(members: &[Member<'_>], min_rows: usize) -> Option<RowGroup> {
    let first = members.first()?;
    if !eligible(first) {
        return None;
    }
    let mut candidates: Vec<usize> = vec![];
    let mut p = 1usize;
    for &n in &first.launch.out_shape {
        p = p.saturating_mul(n);
        if p >= min_rows.max(2) && !candidates.contains(&p) {
            candidates.push(p);
        }
    }
    let mut best: Option<RowGroup> = None;
    for rows in candidates {
        let mut per_row: Vec<usize> = vec![];
        for m in members.iter().take(MAX_MEMBERS) {
            if !eligible(m) {
                break;
            }
            match split(&m.launch.out_shape, rows) {
                Some((depth, pr)) if sources_aligned(m, depth, &per_row) => per_row.push(pr),
                _ => break,
            }
        }
        let len = connected_len(&members[..per_row.len()]);
        per_row.truncate(len);
        if len >= 2 && best.as_ref().is_none_or(|b| len >= b.len) {
            best = Some(RowGroup { len, rows, per_row });
        }
    }
    best
}

/// Dense outputs only, each as long as the output domain, and a non-empty domain.
fn eligible(m: &Member<'_>) -> bool {
    let n: usize = m.launch.out_shape.iter().product();
    n > 0
        && m.launch.out_shape.len() == m.kernel.out_rank
        && m.launch.red_shape.len() == m.kernel.red_rank
        && m.sources.len() == m.kernel.inputs.len()
        && m.kernel.outputs.iter().all(|o| o.store == Store::Dense)
        && m.launch.output_lens.iter().all(|&l| l == n)
}

/// The fewest leading dimensions whose product is `rows`, and the positions per row.
fn split(shape: &[usize], rows: usize) -> Option<(usize, usize)> {
    let mut p = 1usize;
    for (d, &n) in shape.iter().enumerate() {
        p = p.checked_mul(n)?;
        if p == rows {
            return Some((d + 1, shape[d + 1..].iter().product()));
        }
        if p > rows {
            return None;
        }
    }
    None
}

/// True when every load of an earlier member's output stays in the same row (see
/// the module documentation); `per_row` holds the earlier members' row lengths.
fn sources_aligned(m: &Member<'_>, depth: usize, per_row: &[usize]) -> bool {
    let shape: Vec<usize> = m.launch.out_shape.iter().chain(&m.launch.red_shape).copied().collect();
    m.sources.iter().enumerate().all(|(slot, s)| match *s {
        Source::Input(_) => true,
        Source::Member { member, .. } => {
            let Some(&pr) = per_row.get(member) else { return false };
            m.kernel.inner.iter().chain(&m.kernel.body).all(|v| match &v.inst {
                Inst::Load { input, offset, .. } if *input == slot => {
                    in_row(&offset.bind_args(&m.launch.args), &shape, depth, pr)
                }
                Inst::Gather { input, .. } => *input != slot,
                _ => true,
            })
        }
    })
}

/// True when `offset` (arguments bound) over the loop domain `shape` is
/// `row * per_row + f` with `0 <= f < per_row`, the row being the row-major number
/// of the leading `depth` indices.
fn in_row(offset: &IndexExpr, shape: &[usize], depth: usize, per_row: usize) -> bool {
    // size-1 dims contribute nothing; substituting also folds constant products
    let ids: Vec<IndexExpr> =
        shape.iter().enumerate().map(|(k, &n)| if n == 1 { IndexExpr::c(0) } else { IndexExpr::idx(k) }).collect();
    let e = offset.substitute(&ids);
    let mut row_stride = per_row as i64;
    for d in (0..depth).rev() {
        if shape[d] > 1 && e.linear_coefficient(d) != Some(row_stride) {
            return false;
        }
        row_stride = match row_stride.checked_mul(shape[d] as i64) {
            Some(s) => s,
            None => return false,
        };
    }
    let mut zeroed = ids;
    for z in zeroed.iter_mut().take(depth) {
        *z = IndexExpr::c(0);
    }
    let rest = e.substitute(&zeroed);
    let ranges: Vec<(i64, i64)> =
        shape.iter().enumerate().map(|(k, &n)| if k < depth { (0, 0) } else { (0, n as i64 - 1) }).collect();
    rest.provably_within(&ranges, 0, per_row as i64 - 1)
}

/// How many of `members` to keep: up to the last that reads an earlier member's
/// output or an input an earlier member reads.
fn connected_len(members: &[Member<'_>]) -> usize {
    let mut len = 0;
    for (k, m) in members.iter().enumerate().skip(1) {
        let linked = m.sources.iter().any(|s| match s {
            Source::Member { .. } => true,
            Source::Input(i) => members[..k].iter().any(|e| e.sources.contains(&Source::Input(*i))),
        });
        if linked {
            len = k + 1;
        }
    }
    len
}

thread_local! {
    /// Each thread's block of the group's intermediates.
    static SCRATCH: RefCell<Vec<u128>> = const { RefCell::new(Vec::new()) };
}

/// Runs `group` (from [`find`] on the same members) on the CPU backend. `inputs`
/// are the buffers of [`Source::Input`]; `keep[m][o]` says whether output `o` of
/// member `m` is needed after the group: those come back as whole buffers (`Some`),
/// the others live only in per-thread blocks and come back as `None` (or whole, when
/// the blocks would pass [`MAX_SCRATCH_BYTES`]). Rows run in
/// blocks of about [`BLOCK_BYTES`], blocks in parallel.
pub fn run_cpu(
    group: &RowGroup,
    members: &[Member<'_>],
    inputs: &[&HostBuffer],
    keep: &[Vec<bool>],
    dump: bool,
) -> Result<Vec<Vec<Option<HostBuffer>>>, KernelError> {
    let members = &members[..group.len];
    let internal = |what: String| KernelError::Internal { op: "row group".into(), reason: what };
    if group.per_row.len() != group.len || keep.len() < group.len {
        return Err(internal("the group does not match its members".into()));
    }
    let dtype_of = |m: &Member<'_>, s: &Source| -> Result<DType, KernelError> {
        match *s {
            Source::Input(k) => inputs.get(k).map(|b| b.dtype()).ok_or_else(|| internal(format!("no input {k}"))),
            Source::Member { member, output } => {
                members.get(member).and_then(|e| e.kernel.outputs.get(output)).map(|o| o.dtype).ok_or_else(|| {
                    internal(format!(
                        "a kernel reads output {output} of member {member}, which {:?} lacks",
                        m.launch.out_shape
                    ))
                })
            }
        }
    };
    let mut compiled = Vec::with_capacity(members.len());
    for m in members {
        let dtypes = m.sources.iter().map(|s| dtype_of(m, s)).collect::<Result<Vec<_>, _>>()?;
        m.launch.check_dtypes(m.kernel, dtypes.into_iter())?;
        compiled.push(crate::cpu::compiled(m.kernel, dump)?);
    }
    // whole buffers for what is kept, a place in the scratch block for the rest
    let threads = rayon::current_num_threads().max(1);
    let row_bytes: usize = members
        .iter()
        .zip(&group.per_row)
        .map(|(m, &pr)| {
            let points = pr * m.launch.red_shape.iter().product::<usize>().max(1);
            let read: usize = m.sources.iter().map(|s| dtype_of(m, s).map_or(4, |d| d.size_in_bytes())).sum();
            let written: usize = m.kernel.outputs.iter().map(|o| o.dtype.size_in_bytes()).sum();
            points * read + pr * written
        })
        .sum::<usize>()
        .max(1);
    let total_work: usize = group.rows.saturating_mul(row_bytes) / 4;
    let block_rows = if total_work < 32 * 1024 || threads < 2 {
        group.rows
    } else {
        (BLOCK_BYTES / row_bytes).clamp(1, group.rows.div_ceil(threads * 4))
    };
    let mut outs: Vec<Vec<Option<HostBuffer>>> = vec![];
    let mut scratch_at: Vec<Vec<Option<usize>>> = vec![];
    let mut scratch_bytes = 0usize;
    for (k, (m, &pr)) in members.iter().zip(&group.per_row).enumerate() {
        let n = group.rows * pr;
        let mut row = vec![];
        let mut at = vec![];
        for (o, out) in m.kernel.outputs.iter().enumerate() {
            let block_bytes = (block_rows * pr * out.dtype.size_in_bytes()).next_multiple_of(64);
            if keep[k].get(o).copied().unwrap_or(true) || scratch_bytes + block_bytes > MAX_SCRATCH_BYTES {
                row.push(Some(crate::host_pool::take(
                    out.dtype,
                    n,
                    crate::host_pool::Fill::Overwritten,
                    "a kernel output",
                )?));
                at.push(None);
            } else {
                at.push(Some(scratch_bytes));
                scratch_bytes += block_bytes;
                row.push(None);
            }
        }
        outs.push(row);
        scratch_at.push(at);
    }
    let out_ptrs: Vec<Vec<usize>> = outs
        .iter_mut()
        .map(|row| row.iter_mut().map(|b| b.as_mut().map_or(0, |b| b.as_mut_ptr() as usize)).collect())
        .collect();
    let in_ptrs: Vec<usize> = inputs.iter().map(|b| b.as_ptr() as usize).collect();
    let shapes: Vec<(Vec<i64>, Vec<i64>)> = members
        .iter()
        .map(|m| {
            (
                m.launch.out_shape.iter().map(|&d| d as i64).collect(),
                m.launch.red_shape.iter().map(|&d| d as i64).collect(),
            )
        })
        .collect();
    let block = |b: usize| {
        let r0 = b * block_rows;
        let r1 = (r0 + block_rows).min(group.rows);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let want = scratch_bytes.div_ceil(16) + 4;
            if s.len() < want {
                s.resize(want, 0);
            }
            // 64-byte aligned start of this thread's block
            let base = (s.as_mut_ptr() as usize).next_multiple_of(64);
            // a member's output in the block, shifted so that position `r0 * per_row`
            // lands on the block's first element
            let place = |k: usize, o: usize| -> usize {
                match scratch_at[k][o] {
                    None => out_ptrs[k][o],
                    Some(at) => {
                        let size = members[k].kernel.outputs[o].dtype.size_in_bytes();
                        (base + at).wrapping_sub(r0 * group.per_row[k] * size)
                    }
                }
            };
            for (k, m) in members.iter().enumerate() {
                let ins: Vec<usize> = m
                    .sources
                    .iter()
                    .map(|s| match *s {
                        Source::Input(i) => in_ptrs[i],
                        Source::Member { member, output } => place(member, output),
                    })
                    .collect();
                let outs: Vec<usize> = (0..m.kernel.outputs.len()).map(|o| place(k, o)).collect();
                let pr = group.per_row[k];
                // SAFETY: whole buffers have `rows * per_row` elements and the block
                // writes positions `r0 * per_row .. r1 * per_row` of them, which no
                // other block writes; a scratch output's shifted base plus any such
                // position lies in this thread's block, which holds `block_rows` rows;
                // `find` proved every read of an earlier member's output to stay in
                // the reading position's row, so it reads what this block wrote.
                unsafe {
                    compiled[k].call(
                        r0 * pr,
                        r1 * pr,
                        &ins,
                        &outs,
                        &m.launch.args,
                        &shapes[k].0,
                        &shapes[k].1,
                        &m.launch.params,
                    )
                }
            }
        })
    };
    let blocks = group.rows.div_ceil(block_rows);
    if blocks == 1 {
        block(0);
    } else {
        (0..blocks).into_par_iter().for_each(block);
    }
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Output, Reduction, Value};
    use crate::meta::{BinaryOp, ReduceOp, UnaryOp};
    use IndexExpr as E;

    fn load(input: usize, offset: E) -> Value {
        Value { inst: Inst::Load { input, offset, guard: None, fill: 0.0 }, dtype: DType::F32 }
    }

    fn val(inst: Inst) -> Value {
        Value { inst, dtype: DType::F32 }
    }

    fn dense(value: usize) -> Output {
        Output { dtype: DType::F32, value, store: Store::Dense }
    }

    /// Row reduction of in0 ([rows, cols], row stride a0) over the last axis.
    fn row_reduce(op: ReduceOp) -> Kernel {
        Kernel {
            inputs: vec![DType::F32],
            out_rank: 2,
            red_rank: 1,
            inner: vec![load(0, E::idx(0) * E::Arg(0) + E::idx(2))],
            reductions: vec![Reduction { op, value: 0, dtype: DType::F32 }],
            body: vec![val(Inst::Acc(0))],
            outputs: vec![dense(0)],
            n_args: 1,
            ..Kernel::default()
        }
    }

    /// `f(in0[i0, i1], in1[i0])` over [rows, cols].
    fn row_map(f: BinaryOp, then: Option<UnaryOp>) -> Kernel {
        let mut body = vec![load(0, E::idx(0) * E::Arg(0) + E::idx(1)), load(1, E::idx(0)), val(Inst::Binary(f, 0, 1))];
        if let Some(u) = then {
            body.push(val(Inst::Unary(u, 2)));
        }
        let last = body.len() - 1;
        Kernel {
            inputs: vec![DType::F32, DType::F32],
            out_rank: 2,
            body,
            outputs: vec![dense(last)],
            n_args: 1,
            ..Kernel::default()
        }
    }

    fn launch(out: &[usize], red: &[usize], cols: usize) -> Launch {
        Launch {
            out_shape: out.to_vec(),
            red_shape: red.to_vec(),
            args: vec![cols as i64],
            params: vec![],
            output_lens: vec![out.iter().product()],
        }
    }

    /// Softmax's four kernels over [rows, cols]: max, exp(x - max), sum, division.
    fn softmax(rows: usize, cols: usize) -> (Vec<Kernel>, Vec<Launch>, Vec<Vec<Source>>) {
        let kernels = vec![
            row_reduce(ReduceOp::Max),
            row_map(BinaryOp::Sub, Some(UnaryOp::Exp)),
            row_reduce(ReduceOp::Sum),
            row_map(BinaryOp::Div, None),
        ];
        let launches = vec![
            launch(&[rows, 1], &[cols], cols),
            launch(&[rows, cols], &[], cols),
            launch(&[rows, 1], &[cols], cols),
            launch(&[rows, cols], &[], cols),
        ];
        let m = |member| Source::Member { member, output: 0 };
        let sources = vec![vec![Source::Input(0)], vec![Source::Input(0), m(0)], vec![m(1)], vec![m(1), m(2)]];
        (kernels, launches, sources)
    }

    fn members<'a>(k: &'a [Kernel], l: &'a [Launch], s: &[Vec<Source>]) -> Vec<Member<'a>> {
        k.iter().zip(l).zip(s).map(|((kernel, launch), s)| Member { kernel, launch, sources: s.clone() }).collect()
    }

    #[test]
    fn softmax_kernels_form_one_group_of_rows() {
        let (k, l, s) = softmax(37, 13);
        let g = find(&members(&k, &l, &s), 4).expect("a group");
        assert_eq!(g, RowGroup { len: 4, rows: 37, per_row: vec![1, 13, 1, 13] });
        // too few rows for the threads: no group
        assert_eq!(find(&members(&k, &l, &s), 38), None);
    }

    #[test]
    fn a_read_across_rows_ends_the_group() {
        let (mut k, l, s) = softmax(8, 8);
        // the division reads the sum of the next row
        k[3].body[1] = load(1, (E::idx(0) + 1).min(7));
        let g = find(&members(&k, &l, &s), 2).expect("the first three still group");
        assert_eq!(g.len, 3);
        // the exp reads the column maximum (a transpose): nothing groups
        let (mut k, l, s) = softmax(8, 8);
        k[1].body[0] = load(0, E::idx(1) * E::Arg(0) + E::idx(0));
        k[1].body[1] = load(1, E::idx(1));
        assert_eq!(find(&members(&k, &l, &s), 2), None);
        // an offset one past the row: refused
        let (mut k, l, s) = softmax(8, 8);
        k[2].inner[0] = load(0, E::idx(0) * E::Arg(0) + E::idx(2) + 1);
        assert_eq!(find(&members(&k, &l, &s), 2).map(|g| g.len), Some(2));
    }

    #[test]
    fn unrelated_trailing_kernels_are_left_out() {
        let (k, l, mut s) = softmax(16, 8);
        // the last kernel reads only fresh inputs
        s[3] = vec![Source::Input(1), Source::Input(2)];
        let g = find(&members(&k, &l, &s), 2).expect("a group");
        assert_eq!(g.len, 3);
    }

    #[test]
    fn group_runs_bit_identical_to_kernels_alone() {
        for &(rows, cols) in &[(37usize, 13usize), (3, 1000), (1000, 3), (2, 40_000), (523, 257)] {
            let (k, l, s) = softmax(rows, cols);
            let ms = members(&k, &l, &s);
            let g = find(&ms, 2).expect("a group");
            let x =
                HostBuffer::from_f64s(DType::F32, (0..rows * cols).map(|i| ((i * 7919 % 1009) as f64 - 500.0) / 37.0));
            // one by one
            let max = crate::cpu::run(&k[0], &l[0], &[&x]).expect("max").remove(0);
            let e = crate::cpu::run(&k[1], &l[1], &[&x, &max]).expect("exp").remove(0);
            let sum = crate::cpu::run(&k[2], &l[2], &[&e]).expect("sum").remove(0);
            let want = crate::cpu::run(&k[3], &l[3], &[&e, &sum]).expect("div").remove(0);
            for keep_mid in [false, true] {
                let keep = vec![vec![false], vec![keep_mid], vec![keep_mid], vec![true]];
                let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
                let got = pool.install(|| run_cpu(&g, &ms, &[&x], &keep, false)).expect("group");
                let out = got[3][0].as_ref().expect("kept");
                assert_eq!(out.to_f64_vec(), want.to_f64_vec(), "{rows}x{cols}");
                assert!(got[0][0].is_none(), "the row maximum stays in the blocks");
                if keep_mid {
                    assert_eq!(got[1][0].as_ref().expect("kept").to_f64_vec(), e.to_f64_vec());
                    assert_eq!(got[2][0].as_ref().expect("kept").to_f64_vec(), sum.to_f64_vec());
                }
            }
        }
    }
}
