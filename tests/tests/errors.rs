//! Bad shapes, dtypes, dims and devices give clear messages naming the op and the
//! shapes, when the graph is built.

use jit_core::{IndexExpr as E, ReduceOp};
use jit_ops::prelude::*;

fn msg<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn shape_errors_name_op_and_shapes() {
    let a = Var::zeros(&[2, 3], DType::F32);
    let b = Var::zeros(&[4], DType::F32);
    assert_eq!(msg(a.try_add(&b)), "add: shapes [2, 3] and [4] cannot be broadcast together (dim -1: 3 vs 4)");
    assert_eq!(msg(a.lt(&b)), "lt: shapes [2, 3] and [4] cannot be broadcast together (dim -1: 3 vs 4)");
    assert_eq!(msg(a.reshape(&[4, 2])), "reshape: shape [4, 2] is invalid for a value of shape [2, 3] (6 elements)");
    assert_eq!(
        msg(a.reshape(&[-1, -1])),
        "reshape: shape [-1, -1] is invalid for a value of shape [2, 3] (6 elements)"
    );
    assert_eq!(msg(matmul(&a, &a)), "matmul: shapes [2, 3] and [2, 3] cannot be multiplied (3 != 2)");
    assert_eq!(
        msg(cat(&[a.clone(), b.clone()], 0)),
        "cat: value 1 has shape [4], which does not match [2, 3] outside dim 0"
    );
    assert_eq!(msg(a.narrow(1, 2, 2)), "narrow: start 2 + length 2 exceeds size 3 of dim 1 (shape [2, 3])");
    assert_eq!(
        msg(a.expand(&[2, 4])),
        "expand: cannot expand shape [2, 3] to [2, 4]: only dims of size 1 can be expanded"
    );
    assert_eq!(
        msg(a.pad(&[3, 0], PadMode::Reflect)),
        "pad: reflect padding (3, 0) must be smaller than the size 3 of dim 1 (shape [2, 3])"
    );
    assert_eq!(msg(a.permute(&[0])), "permute: got 1 dims [0] for a value of rank 2 (shape [2, 3])");
    assert_eq!(
        msg(Var::from_vec(vec![1.0f32; 5], &[2, 3])),
        "from_vec: 5 elements cannot have shape [2, 3] (6 elements)"
    );
    assert_eq!(msg(a.item::<f32>()), "item: only a value with one element can be read as a scalar, got shape [2, 3]");
    let c = Var::zeros(&[2, 3], DType::F32);
    assert_eq!(
        msg(a.binary(jit_core::BinaryOp::Add, &b)),
        "add: meta-op inputs must have equal shapes, got [2, 3] and [4]"
    );
    assert_eq!(
        msg(c.reindex(&[3], vec![E::idx(0)], 0.0, vec![])),
        "reindex: needs 2 index expressions (one per dim), got 1"
    );
    assert_eq!(
        msg(c.reindex(&[3], vec![E::idx(0), E::idx(1)], 0.0, vec![])),
        "reindex: expression i1 uses loop index i1 but the loop has only 1 dims"
    );
    assert_eq!(
        msg(c.broadcast_to_dims(&[2, 4], &[])),
        "broadcast_to: cannot broadcast [2, 3] to [2, 4]: input dim 1 has size 3, target 4"
    );
}

#[test]
fn dim_errors_give_the_valid_range() {
    let a = Var::zeros(&[2, 3], DType::F32);
    assert_eq!(
        msg(a.sum(&[2], false)),
        "sum: dimension 2 is out of range for a tensor of rank 2 with shape [2, 3] (expected a dim in [-2, 1])"
    );
    assert_eq!(
        msg(a.transpose(0, -3)),
        "transpose: dimension -3 is out of range for a tensor of rank 2 with shape [2, 3] (expected a dim in [-2, 1])"
    );
    assert_eq!(msg(a.sum(&[1, -1], false)), "sum: dim -1 appears more than once in [1, -1]");
    assert!(msg(a.softmax(5)).starts_with("softmax: dimension 5 is out of range"));
    assert!(msg(a.unsqueeze(4)).starts_with("unsqueeze: dimension 4 is out of range for a tensor of rank 3"));
}

#[test]
fn dtype_errors_say_what_to_do() {
    let i = Var::zeros(&[3], DType::I32);
    let f = Var::zeros(&[3], DType::F32);
    let b = Var::zeros(&[3], DType::Bool);
    assert_eq!(
        msg(i.mean(&[0], false)),
        "mean: needs a floating-point input, got i32 (cast it first, e.g. .cast(DType::F32))"
    );
    assert_eq!(
        msg(i.unary(jit_core::UnaryOp::Exp)),
        "exp: expected a floating-point input, got i32 with shape [3] (cast it first)"
    );
    assert_eq!(
        msg(f.binary(jit_core::BinaryOp::Add, &i)),
        "add: meta-op inputs must have equal dtypes, got f32 and i32"
    );
    assert_eq!(
        msg(b.reduce(ReduceOp::Sum, &[0], false)),
        "sum: cannot sum or multiply bool values; cast to an integer first"
    );
    assert_eq!(msg(f.gather(0, &f)), "gather: index must be an integer value, got f32");
    assert_eq!(msg(b.try_neg()), "neg: negation is not defined for bool; use logical_not");
    assert_eq!(msg(f.to_vec::<i64>()), "to_vec: the value is f32, not i64; call .cast(DType::I64) first");
    assert_eq!(msg(Var::where_meta(&f, &f, &f)), "where: condition must be bool, got f32");
    assert_eq!(msg(i.softmax(0)), "softmax: needs a floating-point input, got i32 (cast it first)");
}

#[test]
fn empty_extrema_and_arguments() {
    let e = Var::zeros(&[2, 0], DType::F32);
    assert_eq!(
        msg(e.max(&[1], false)),
        "max: cannot reduce over dim 1 of size 0 (shape [2, 0]): the result has no identity"
    );
    assert_eq!(msg(e.slice(0, 0, None, 0)), "slice: step must be positive");
    assert_eq!(msg(cat(&[], 0)), "cat: expects at least one value");
    assert_eq!(
        msg(Device::parse("tpu:0")),
        "device: unknown device \"tpu:0\"; expected \"cpu\", \"cuda\" or \"cuda:N\""
    );
}

#[test]
fn huge_values_are_errors_not_crashes() {
    // more elements than a usize can count
    let e = msg(Var::zeros(&[1 << 40, 1 << 40], DType::F32).sync());
    assert_eq!(
        e,
        "full: a f32 value of shape [1099511627776, 1099511627776] has more elements than this machine can address"
    );
    let v = Var::zeros(&[1 << 40, 1 << 40], DType::F32);
    assert_eq!(v.numel(), usize::MAX);
    assert!(v.reshape(&[-1]).is_err());
    // addressable but far more than any machine has: the allocation fails cleanly
    let e = msg((Var::ones(&[1 << 45], DType::F32) * 2.0).sync());
    let device = if jit_core::flags().backend == jit_core::Backend::Cuda { "cuda:0" } else { "cpu" };
    assert!(
        e.starts_with(&format!(
            "out of memory on {device}: could not allocate 140737488355328 bytes (a kernel output: 35184372088832 elements of f32"
        )),
        "{e}"
    );
    // window parameters and paddings past what the size arithmetic holds
    let x = Var::zeros(&[1, 2, 6, 6], DType::F32);
    let w = Var::zeros(&[2, 2, 3, 3], DType::F32);
    let huge = 1usize << 40;
    let o = Conv2dOptions { dilation: [1, huge], ..Default::default() };
    assert_eq!(msg(conv2d(&x, &w, None, &o)), "conv2d: dilation [1, 1099511627776] is too large (at most 2147483647)");
    let o = ConvTranspose2dOptions { stride: [huge, 1], ..Default::default() };
    assert!(msg(conv_transpose2d(&x, &w, None, &o)).contains("stride [1099511627776, 1] is too large"));
    let o =
        Pool2dOptions { kernel: [2, 2], stride: [2, 2], padding: [usize::MAX, 0], dilation: [1, 1], ceil_mode: false };
    assert!(msg(max_pool2d(&x, &o)).contains("padding [18446744073709551615, 0] is too large"));
    let e = msg(x.pad(&[usize::MAX, 1], PadMode::Constant(0.0)));
    assert!(e.contains("padding (18446744073709551615, 1) of dim 3 (size 6) is too large"), "{e}");
    let empty = Var::zeros(&[2, 2, 0, 3], DType::F32);
    assert!(msg(conv2d(&x, &empty, None, &Conv2dOptions::default())).contains("has an empty kernel"));
}

#[test]
fn unusable_devices_are_reported_not_panicked() {
    let x = Var::ones(&[2], DType::F32);
    assert!(x.to(Device::Cpu).unwrap().same_node(&x));
    let e = msg(x.to(Device::Cuda(0)));
    assert!(e.starts_with("to: cannot run on cuda:0: "), "{e}");
    // on a machine without the driver the reason names libcuda and the CPU fallback
    if jit_core::cuda_probe().is_err() {
        assert!(e.contains("libcuda") && e.contains("JIT_DEVICE=cpu"), "{e}");
    }
}

#[test]
#[should_panic(
    expected = "add: shapes [2] and [3] cannot be broadcast together (dim -1: 2 vs 3) (the `+` operator panics; call the method to get a Result)"
)]
fn operators_panic_with_the_same_message() {
    let _ = Var::zeros(&[2], DType::F32) + Var::zeros(&[3], DType::F32);
}
