//! The CPU backend: each kernel of the IR becomes one native function, generated
//! with Cranelift, that runs a range `[start, end)` of output positions; rayon splits
//! the output domain across cores. Element-wise kernels run their innermost loop on
//! f32x4 vectors, and reductions along a contiguous last axis accumulate in f32x4
//! lanes, where the loads allow. Values are computed in f32 (f16, bf16, f32), f64
//! or i64 (integers and bool), one rounding per value as the portable executor
//! ([`crate::exec`]) defines. f32 `exp`, `log`, `tanh`, `erf`, `sigmoid`, `recip` and
//! `rsqrt` are generated inline (scalar and f32x4, `cpu/math.rs`; about 2e-7 relative
//! error at most); the other transcendental functions call Rust helpers that compute
//! in f64 and round once.
//!
//! Generated function:
//! `fn(start, end, inputs: *const *const u8, outputs: *const *mut u8, args: *const i64,
//!     out_shape: *const i64, red_shape: *const i64, params: *const f64)`.

use crate::buffer::HostBuffer;
use crate::cache::{KernelCache, FRAMEWORK_VERSION};
use crate::dtype::DType;
use crate::error::KernelError;
use crate::expr::{CmpOp, IndexExpr};
use crate::ir::{Indirect, Inst, Kernel, Launch, Output, Store, Value};
use crate::meta::{BinaryOp, Distribution, ReduceOp, UnaryOp};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, FuncRef, InstBuilder, MemFlagsData, Signature, StackSlot, StackSlotData, StackSlotKind, Type,
    Value as CV,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

mod half;
mod math;
mod pow;

type KernelFn =
    unsafe extern "C" fn(i64, i64, *const *const u8, *const *mut u8, *const i64, *const i64, *const i64, *const f64);

/// A compiled kernel. The module owns the machine code and is kept alive with it.
pub struct Compiled {
    _module: JITModule,
    func: KernelFn,
    /// The kernel's canonical IR.
    pub ir: String,
    /// The Cranelift IR that was compiled (for `JIT_DUMP`).
    pub clif: String,
    /// The machine code as Cranelift lists it, when compiled for `JIT_DUMP`
    /// (empty otherwise).
    pub asm: String,
}

impl Compiled {
    /// Runs output positions `start..end` (row-major over the launch's output
    /// domain). `inputs` and `outputs` hold the buffers' base addresses, in the
    /// kernel's order; `out_shape` and `red_shape` the domain sizes.
    ///
    /// # Safety
    /// For every position in the range, each address the kernel computes from a
    /// base (the base plus an offset from the kernel's index expressions, times the
    /// element size) must be valid to read (inputs) or write (outputs), and no other
    /// thread may write what this call reads or writes meanwhile. The slices must
    /// have the lengths the kernel expects (see [`Launch::check`]).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn call(
        &self,
        start: usize,
        end: usize,
        inputs: &[usize],
        outputs: &[usize],
        args: &[i64],
        out_shape: &[i64],
        red_shape: &[i64],
        params: &[f64],
    ) {
        // SAFETY: the caller guarantees the addresses; the function was compiled
        // with exactly this signature.
        unsafe {
            (self.func)(
                start as i64,
                end as i64,
                inputs.as_ptr() as *const *const u8,
                outputs.as_ptr() as *const *mut u8,
                args.as_ptr(),
                out_shape.as_ptr(),
                red_shape.as_ptr(),
                params.as_ptr(),
            )
        }
    }
}

/// The compiled code of `kernel`: from the cache, or compiled now and cached (with
/// `dump`, the kernel's IR, its Cranelift code and the machine code are printed to
/// stderr when it is compiled).
pub fn compiled(kernel: &Kernel, dump: bool) -> Result<Arc<Compiled>, KernelError> {
    let key = cache_key(kernel);
    cache().get_or_compile(&key, || {
        let c = compile_listed(kernel, dump)?;
        if dump {
            eprintln!("[jit] compiled cpu kernel {key}\n{}\n{}\n{}", c.ir, c.clif, c.asm);
        }
        Ok::<_, KernelError>(c)
    })
}

// SAFETY: the module is never touched after finalisation; it only keeps the code
// alive. The function is pure machine code that reads and writes only the buffers
// passed to it.
unsafe impl Send for Compiled {}
// SAFETY: as above; calls share no mutable state.
unsafe impl Sync for Compiled {}

static CACHE: OnceLock<KernelCache<Compiled>> = OnceLock::new();

/// The CPU backend's compiled-kernel cache.
pub fn cache() -> &'static KernelCache<Compiled> {
    crate::cache::global(&CACHE)
}

/// Cranelift settings every kernel is compiled with (part of the cache key).
const CRANELIFT_FLAGS: [(&str, &str); 3] =
    [("use_colocated_libcalls", "false"), ("is_pic", "false"), ("opt_level", "speed")];

/// Cache key: canonical IR + backend + target + compiler version and options +
/// framework version.
pub fn cache_key(kernel: &Kernel) -> String {
    let options = CRANELIFT_FLAGS.map(|(k, v)| format!("{k}={v}")).join(",");
    let fma = if host_fma() { "fma" } else { "no-fma" };
    let text = format!(
        "cpu-cranelift|{}|{fma}|cranelift-0.135|{options}|jit-{FRAMEWORK_VERSION}|{kernel}",
        std::env::consts::ARCH
    );
    crate::ir::fnv128(text.as_bytes())
}

// ---------------------------------------------------------------- helpers called from kernels

extern "C" fn h_unary_f32(op: i32, x: f32) -> f32 {
    UnaryOp::ALL[op as usize].eval_f64(f64::from(x)) as f32
}
extern "C" fn h_unary_f64(op: i32, x: f64) -> f64 {
    UnaryOp::ALL[op as usize].eval_f64(x)
}
extern "C" fn h_binary_f32(op: i32, a: f32, b: f32) -> f32 {
    BinaryOp::ALL[op as usize].eval_f64(f64::from(a), f64::from(b)) as f32
}
extern "C" fn h_binary_f64(op: i32, a: f64, b: f64) -> f64 {
    BinaryOp::ALL[op as usize].eval_f64(a, b)
}
extern "C" fn h_binary_i64(op: i32, a: i64, b: i64) -> i64 {
    BinaryOp::ALL[op as usize].eval_i64(a, b)
}
extern "C" fn h_random(seed: i64, counter: i64, normal: i32) -> f64 {
    if normal != 0 {
        crate::random::normal(seed as u64, counter as u64)
    } else {
        crate::random::uniform(seed as u64, counter as u64)
    }
}
extern "C" fn h_round_f64(x: f64, dtype: i32) -> f64 {
    DType::ALL[dtype as usize].round_f64(x)
}

struct Helper {
    name: &'static str,
    ptr: *const u8,
    params: &'static [Type],
    ret: Type,
}

fn helpers() -> Vec<Helper> {
    use types::{F32, F64, I32, I64};
    vec![
        Helper { name: "h_unary_f32", ptr: h_unary_f32 as *const u8, params: &[I32, F32], ret: F32 },
        Helper { name: "h_unary_f64", ptr: h_unary_f64 as *const u8, params: &[I32, F64], ret: F64 },
        Helper { name: "h_binary_f32", ptr: h_binary_f32 as *const u8, params: &[I32, F32, F32], ret: F32 },
        Helper { name: "h_binary_f64", ptr: h_binary_f64 as *const u8, params: &[I32, F64, F64], ret: F64 },
        Helper { name: "h_binary_i64", ptr: h_binary_i64 as *const u8, params: &[I32, I64, I64], ret: I64 },
        Helper { name: "h_random", ptr: h_random as *const u8, params: &[I64, I64, I32], ret: F64 },
        Helper { name: "h_round_f64", ptr: h_round_f64 as *const u8, params: &[F64, I32], ret: F64 },
    ]
}

fn unary_code(op: UnaryOp) -> i64 {
    UnaryOp::ALL.iter().position(|&u| u == op).unwrap_or(0) as i64
}
fn binary_code(op: BinaryOp) -> i64 {
    BinaryOp::ALL.iter().position(|&b| b == op).unwrap_or(0) as i64
}
fn dtype_code(d: DType) -> i64 {
    DType::ALL.iter().position(|&x| x == d).unwrap_or(0) as i64
}

/// Cranelift type a dtype is computed in.
fn cty(d: DType) -> Type {
    match d {
        DType::F16 | DType::BF16 | DType::F32 => types::F32,
        DType::F64 => types::F64,
        _ => types::I64,
    }
}

// ---------------------------------------------------------------- code generation

struct Gen<'a, 'b> {
    b: &'a mut FunctionBuilder<'b>,
    module: &'a mut JITModule,
    funcs: HashMap<&'static str, FuncRef>,
    sigs: HashMap<&'static str, (Vec<Type>, Type)>,
    args: Vec<CV>,
    idx: Vec<Variable>,
    inputs: Vec<CV>,
    input_dtypes: Vec<DType>,
    /// Value parameters as loaded (f64) at entry.
    params: Vec<CV>,
    /// Loop-invariant vector values (splatted constants) computed at entry, by body
    /// value id.
    hoisted: HashMap<usize, CV>,
    /// In a vector block: each guard and index condition that varies along the
    /// row, with its value on the whole block (1 or 0; [`block_ok`] made sure it is
    /// the same on every lane).
    block_conditions: HashMap<IndexExpr, CV>,
    /// The host fuses multiply-adds in hardware ([`host_fma`]).
    fma: bool,
}

impl Gen<'_, '_> {
    fn call(&mut self, name: &'static str, args: &[CV]) -> Result<CV, String> {
        let fref = match self.funcs.get(name) {
            Some(f) => *f,
            None => {
                let (params, ret) = self.sigs.get(name).cloned().ok_or_else(|| format!("no helper {name}"))?;
                let mut sig = self.module.make_signature();
                sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
                sig.returns.push(AbiParam::new(ret));
                let id = self.module.declare_function(name, Linkage::Import, &sig).map_err(|e| e.to_string())?;
                let f = self.module.declare_func_in_func(id, self.b.func);
                self.funcs.insert(name, f);
                f
            }
        };
        let inst = self.b.ins().call(fref, args);
        Ok(self.b.inst_results(inst)[0])
    }

    fn i64c(&mut self, v: i64) -> CV {
        self.b.ins().iconst(types::I64, v)
    }

    fn i32c(&mut self, v: i64) -> CV {
        self.b.ins().iconst(types::I32, v)
    }

    fn bool_to_i64(&mut self, c: CV) -> CV {
        self.b.ins().uextend(types::I64, c)
    }

    /// Floor division and modulo with the IR's semantics (by 0 gives 0; by -1 wraps).
    fn floor_divmod(&mut self, a: CV, d: CV) -> (CV, CV) {
        let zero = self.i64c(0);
        let one = self.i64c(1);
        let is0 = self.b.ins().icmp_imm_s(IntCC::Equal, d, 0);
        let ism1 = self.b.ins().icmp_imm_s(IntCC::Equal, d, -1);
        let bad = self.b.ins().bor(is0, ism1);
        let safe = self.b.ins().select(bad, one, d);
        let q = self.b.ins().sdiv(a, safe);
        let qs = self.b.ins().imul(q, safe);
        let r = self.b.ins().isub(a, qs);
        let rn0 = self.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
        let x = self.b.ins().bxor(r, safe);
        let neg = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, x, 0);
        let adj = self.b.ins().band(rn0, neg);
        let qm1 = self.b.ins().iadd_imm_s(q, -1);
        let q2 = self.b.ins().select(adj, qm1, q);
        let rps = self.b.ins().iadd(r, safe);
        let r2 = self.b.ins().select(adj, rps, r);
        let na = self.b.ins().ineg(a);
        let q3 = self.b.ins().select(ism1, na, q2);
        let q4 = self.b.ins().select(is0, zero, q3);
        let r3 = self.b.ins().select(bad, zero, r2);
        (q4, r3)
    }

    fn iexpr(&mut self, e: &IndexExpr) -> CV {
        use IndexExpr as E;
        match e {
            E::Const(v) => self.i64c(*v),
            E::Idx(k) => self.b.use_var(self.idx[*k]),
            E::Arg(k) => self.args[*k],
            E::Add(a, b) => {
                let (x, y) = (self.iexpr(a), self.iexpr(b));
                self.b.ins().iadd(x, y)
            }
            E::Sub(a, b) => {
                let (x, y) = (self.iexpr(a), self.iexpr(b));
                self.b.ins().isub(x, y)
            }
            E::Mul(a, b) => {
                let (x, y) = (self.iexpr(a), self.iexpr(b));
                self.b.ins().imul(x, y)
            }
            // by a positive power of two: an arithmetic shift and a mask are the
            // floored quotient and remainder
            E::FloorDiv(a, b) if b.as_const().is_some_and(|c| c > 0 && (c as u64).is_power_of_two()) => {
                let x = self.iexpr(a);
                let shift = b.as_const().unwrap_or(1).trailing_zeros() as i64;
                self.b.ins().sshr_imm_s(x, shift)
            }
            E::Mod(a, b) if b.as_const().is_some_and(|c| c > 0 && (c as u64).is_power_of_two()) => {
                let x = self.iexpr(a);
                self.b.ins().band_imm_s(x, b.as_const().unwrap_or(1) - 1)
            }
            E::FloorDiv(a, b) => {
                let (x, y) = (self.iexpr(a), self.iexpr(b));
                self.floor_divmod(x, y).0
            }
            E::Mod(a, b) => {
                let (x, y) = (self.iexpr(a), self.iexpr(b));
                self.floor_divmod(x, y).1
            }
            E::Min(a, b) => {
                let (x, y) = (self.iexpr(a), self.iexpr(b));
                self.b.ins().smin(x, y)
            }
            E::Max(a, b) => {
                let (x, y) = (self.iexpr(a), self.iexpr(b));
                self.b.ins().smax(x, y)
            }
            E::Cmp(op, a, b) => {
                let (x, y) = (self.iexpr(a), self.iexpr(b));
                let cc = match op {
                    CmpOp::Lt => IntCC::SignedLessThan,
                    CmpOp::Le => IntCC::SignedLessThanOrEqual,
                    CmpOp::Eq => IntCC::Equal,
                    CmpOp::Ne => IntCC::NotEqual,
                };
                let c = self.b.ins().icmp(cc, x, y);
                self.bool_to_i64(c)
            }
            E::Select(c, t, o) => {
                let c = self.iexpr(c);
                let (t, o) = (self.iexpr(t), self.iexpr(o));
                self.b.ins().select(c, t, o)
            }
        }
    }

    /// Wraps an i64 into an integer dtype's range (bool to 0/1).
    fn wrap(&mut self, v: CV, d: DType) -> CV {
        match d {
            DType::I32 => {
                let r = self.b.ins().ireduce(types::I32, v);
                self.b.ins().sextend(types::I64, r)
            }
            DType::U8 => {
                let r = self.b.ins().ireduce(types::I8, v);
                self.b.ins().uextend(types::I64, r)
            }
            DType::Bool => {
                let c = self.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0);
                self.bool_to_i64(c)
            }
            _ => v,
        }
    }

    /// Converts a computed value of dtype `from` to the computed form of `to`, with
    /// the cast rules (a float to an integer truncates, saturating; f16 and bf16 are
    /// rounded to their own precision).
    fn convert(&mut self, v: CV, from: DType, to: DType) -> Result<CV, String> {
        let (ft, tt) = (cty(from), cty(to));
        let out = if to.is_float() {
            let widened = if ft == types::I64 {
                self.b.ins().fcvt_from_sint(types::F64, v)
            } else if ft == types::F32 {
                self.b.ins().fpromote(types::F64, v)
            } else {
                v
            };
            match to {
                DType::F64 => widened,
                DType::F32 if ft == types::F32 => v,
                DType::F32 => self.b.ins().fdemote(types::F32, widened),
                // one rounding from f32, inline
                DType::BF16 | DType::F16 if ft == types::F32 => self.round_to_half(v, to),
                _ => {
                    // round once from the widest form to f16 / bf16
                    let code = self.i32c(dtype_code(to));
                    let r = self.call("h_round_f64", &[widened, code])?;
                    self.b.ins().fdemote(types::F32, r)
                }
            }
        } else if to == DType::Bool {
            let c = if ft == types::I64 {
                self.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0)
            } else {
                let z = if ft == types::F32 { self.b.ins().f32const(0.0) } else { self.b.ins().f64const(0.0) };
                self.b.ins().fcmp(FloatCC::NotEqual, v, z)
            };
            self.bool_to_i64(c)
        } else {
            let i = if ft == types::I64 { v } else { self.b.ins().fcvt_to_sint_sat(types::I64, v) };
            self.wrap(i, to)
        };
        debug_assert_eq!(self.b.func.dfg.value_type(out), tt);
        Ok(out)
    }

    fn constant(&mut self, c: f64, d: DType) -> Result<CV, String> {
        Ok(match cty(d) {
            t if t == types::F32 => {
                let r = if d == DType::F32 { c as f32 } else { d.round_f64(c) as f32 };
                self.b.ins().f32const(r)
            }
            t if t == types::F64 => self.b.ins().f64const(c),
            _ => {
                let i = d.round_f64(c) as i64;
                self.i64c(i)
            }
        })
    }

    fn load(&mut self, input: usize, dtype: DType, off: CV) -> Result<CV, String> {
        let base = self.inputs[input];
        let scaled = self.b.ins().imul_imm_s(off, dtype.size_in_bytes() as i64);
        let addr = self.b.ins().iadd(base, scaled);
        let fl = MemFlagsData::trusted();
        Ok(match dtype {
            DType::F32 => self.b.ins().load(types::F32, fl, addr, 0),
            DType::F64 => self.b.ins().load(types::F64, fl, addr, 0),
            DType::I64 => self.b.ins().load(types::I64, fl, addr, 0),
            DType::I32 => self.b.ins().sload32(fl, addr, 0),
            DType::U8 | DType::Bool => self.b.ins().uload8(types::I64, fl, addr, 0),
            DType::F16 | DType::BF16 => {
                let bits = self.b.ins().uload16(types::I32, fl, addr, 0);
                self.half_bits_to_f32(bits, dtype)
            }
        })
    }

    fn store(&mut self, base: CV, dtype: DType, off: CV, v: CV) -> Result<(), String> {
        let scaled = self.b.ins().imul_imm_s(off, dtype.size_in_bytes() as i64);
        let addr = self.b.ins().iadd(base, scaled);
        let fl = MemFlagsData::trusted();
        match dtype {
            DType::F32 | DType::F64 | DType::I64 => {
                self.b.ins().store(fl, v, addr, 0);
            }
            DType::I32 => {
                self.b.ins().istore32(fl, v, addr, 0);
            }
            DType::U8 | DType::Bool => {
                self.b.ins().istore8(fl, v, addr, 0);
            }
            DType::F16 | DType::BF16 => {
                let bits = self.f32_to_half_bits(v, dtype);
                self.b.ins().istore16(fl, bits, addr, 0);
            }
        }
        Ok(())
    }

    fn unary(&mut self, op: UnaryOp, x: CV, d: DType) -> Result<CV, String> {
        let t = cty(d);
        if t == types::I64 {
            let r = match op {
                UnaryOp::Neg => self.b.ins().ineg(x),
                UnaryOp::Abs => self.b.ins().iabs(x),
                UnaryOp::Not => {
                    let c = self.b.ins().icmp_imm_s(IntCC::Equal, x, 0);
                    self.bool_to_i64(c)
                }
                _ => x,
            };
            return Ok(self.wrap(r, d));
        }
        Ok(match op {
            UnaryOp::Neg => self.b.ins().fneg(x),
            UnaryOp::Abs => self.b.ins().fabs(x),
            UnaryOp::Sqrt => self.b.ins().sqrt(x),
            UnaryOp::Floor => self.b.ins().floor(x),
            UnaryOp::Round => self.b.ins().nearest(x),
            UnaryOp::Exp if t == types::F32 => self.exp_f32(x),
            UnaryOp::Sigmoid if t == types::F32 => self.sigmoid_f32(x),
            UnaryOp::Log if t == types::F32 => self.log_f32(x),
            UnaryOp::Tanh if t == types::F32 => self.tanh_f32(x),
            UnaryOp::Erf if t == types::F32 => self.erf_f32(x)?,
            UnaryOp::Sin | UnaryOp::Cos if t == types::F32 => self.trig_f32(x, op)?,
            UnaryOp::Recip if t == types::F32 => {
                let one = self.b.ins().f32const(1.0);
                self.b.ins().fdiv(one, x)
            }
            UnaryOp::Rsqrt if t == types::F32 => {
                let one = self.b.ins().f32const(1.0);
                let s = self.b.ins().sqrt(x);
                self.b.ins().fdiv(one, s)
            }
            UnaryOp::Recip | UnaryOp::Rsqrt if t == types::F64 => {
                let one = self.b.ins().f64const(1.0);
                let s = if op == UnaryOp::Rsqrt { self.b.ins().sqrt(x) } else { x };
                self.b.ins().fdiv(one, s)
            }
            _ => {
                let code = self.i32c(unary_code(op));
                let h = if t == types::F32 { "h_unary_f32" } else { "h_unary_f64" };
                self.call(h, &[code, x])?
            }
        })
    }

    fn binary(&mut self, op: BinaryOp, x: CV, y: CV, operand: DType, d: DType) -> Result<CV, String> {
        let t = cty(operand);
        if op.is_comparison() {
            let c = if t == types::I64 {
                let cc = match op {
                    BinaryOp::Eq => IntCC::Equal,
                    BinaryOp::Ne => IntCC::NotEqual,
                    BinaryOp::Lt => IntCC::SignedLessThan,
                    BinaryOp::Le => IntCC::SignedLessThanOrEqual,
                    BinaryOp::Gt => IntCC::SignedGreaterThan,
                    _ => IntCC::SignedGreaterThanOrEqual,
                };
                self.b.ins().icmp(cc, x, y)
            } else {
                let cc = match op {
                    BinaryOp::Eq => FloatCC::Equal,
                    BinaryOp::Ne => FloatCC::NotEqual,
                    BinaryOp::Lt => FloatCC::LessThan,
                    BinaryOp::Le => FloatCC::LessThanOrEqual,
                    BinaryOp::Gt => FloatCC::GreaterThan,
                    _ => FloatCC::GreaterThanOrEqual,
                };
                self.b.ins().fcmp(cc, x, y)
            };
            return Ok(self.bool_to_i64(c));
        }
        if t == types::I64 {
            let r = match op {
                BinaryOp::Add => self.b.ins().iadd(x, y),
                BinaryOp::Sub => self.b.ins().isub(x, y),
                BinaryOp::Mul => self.b.ins().imul(x, y),
                BinaryOp::Max => self.b.ins().smax(x, y),
                BinaryOp::Min => self.b.ins().smin(x, y),
                BinaryOp::And => self.b.ins().band(x, y),
                BinaryOp::Or => self.b.ins().bor(x, y),
                BinaryOp::Div => self.floor_divmod(x, y).0,
                BinaryOp::Mod => self.floor_divmod(x, y).1,
                _ => {
                    let code = self.i32c(binary_code(op));
                    self.call("h_binary_i64", &[code, x, y])?
                }
            };
            return Ok(self.wrap(r, d));
        }
        Ok(match op {
            BinaryOp::Add => self.b.ins().fadd(x, y),
            BinaryOp::Sub => self.b.ins().fsub(x, y),
            BinaryOp::Mul => self.b.ins().fmul(x, y),
            BinaryOp::Div => self.b.ins().fdiv(x, y),
            BinaryOp::Max => self.b.ins().fmax(x, y),
            BinaryOp::Min => self.b.ins().fmin(x, y),
            BinaryOp::Pow if t == types::F32 => self.pow_f32(x, y),
            _ => {
                let code = self.i32c(binary_code(op));
                let h = if t == types::F32 { "h_binary_f32" } else { "h_binary_f64" };
                self.call(h, &[code, x, y])?
            }
        })
    }

    fn combine(&mut self, op: ReduceOp, acc: CV, v: CV, d: DType) -> Result<CV, String> {
        let comb = op.combiner();
        if cty(d) == types::I64 {
            // accumulators are not wrapped, as in the executor
            Ok(match comb {
                BinaryOp::Add => self.b.ins().iadd(acc, v),
                BinaryOp::Mul => self.b.ins().imul(acc, v),
                BinaryOp::Max => self.b.ins().smax(acc, v),
                _ => self.b.ins().smin(acc, v),
            })
        } else {
            self.binary(comb, acc, v, d, d)
        }
    }

    /// Emits the values of one phase; returns their Cranelift values.
    fn values(&mut self, vals: &[Value], accs: &[Variable]) -> Result<Vec<CV>, String> {
        let mut out: Vec<CV> = Vec::with_capacity(vals.len());
        for v in vals {
            let d = v.dtype;
            let cv = match &v.inst {
                Inst::Load { input, offset, guard, fill } => {
                    let in_dtype = self.input_dtypes[*input];
                    match guard {
                        None => {
                            let off = self.iexpr(offset);
                            self.load(*input, in_dtype, off)?
                        }
                        Some(g) => {
                            let gv = self.iexpr(g);
                            self.branch_value(
                                gv,
                                cty(d),
                                &mut |g| {
                                    let off = g.iexpr(offset);
                                    g.load(*input, in_dtype, off)
                                },
                                &mut |g| g.constant(*fill, d),
                            )?
                        }
                    }
                }
                Inst::Gather { input, offset, at, guard } => {
                    let in_dtype = self.input_dtypes[*input];
                    let j = out[at.value];
                    let ok = self.indirect_ok(j, at, guard.as_ref());
                    self.branch_value(
                        ok,
                        cty(d),
                        &mut |g| {
                            let off = g.indirect_offset(offset, j, at);
                            g.load(*input, in_dtype, off)
                        },
                        &mut |g| g.constant(0.0, d),
                    )?
                }
                Inst::Const(c) => self.constant(*c, d)?,
                Inst::Param(k) => {
                    let p = self.params[*k];
                    self.convert_rounding(p, d)?
                }
                Inst::Index(e) => {
                    let i = self.iexpr(e);
                    self.convert(i, DType::I64, d)?
                }
                Inst::Random { seed_arg, dist, counter } => {
                    let seed = self.args[*seed_arg];
                    let c = self.iexpr(counter);
                    let (normal, a, b) = match *dist {
                        Distribution::Uniform { low, high } => (0, low, high - low),
                        Distribution::Normal { mean, std } => (1, mean, std),
                    };
                    let kind = self.i32c(normal);
                    let r = self.call("h_random", &[seed, c, kind])?;
                    let (av, bv) = (self.b.ins().f64const(a), self.b.ins().f64const(b));
                    let m = self.b.ins().fmul(bv, r);
                    let s = self.b.ins().fadd(av, m);
                    self.convert_rounding(s, d)?
                }
                Inst::Unary(op, a) => self.unary(*op, out[*a], d)?,
                Inst::Binary(op, a, b) => {
                    let operand = vals[*a].dtype;
                    self.binary(*op, out[*a], out[*b], operand, d)?
                }
                Inst::Where(c, a, b) => self.b.ins().select(out[*c], out[*a], out[*b]),
                Inst::Cast(a) => {
                    let from = vals[*a].dtype;
                    self.convert(out[*a], from, d)?
                }
                Inst::Acc(k) => self.b.use_var(accs[*k]),
            };
            out.push(cv);
        }
        Ok(out)
    }
}

impl Gen<'_, '_> {
    /// `if cond { then } else { other }` as two blocks joined by a parameter of type
    /// `ty`: what `then` reads from memory is only touched where `cond` holds.
    fn branch_value(
        &mut self,
        cond: CV,
        ty: Type,
        then: &mut dyn FnMut(&mut Self) -> Result<CV, String>,
        other: &mut dyn FnMut(&mut Self) -> Result<CV, String>,
    ) -> Result<CV, String> {
        let (then_b, else_b, merge) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
        self.b.append_block_param(merge, ty);
        self.b.ins().brif(cond, then_b, &[], else_b, &[]);
        self.b.seal_block(then_b);
        self.b.seal_block(else_b);
        self.b.switch_to_block(then_b);
        let v = then(self)?;
        self.b.ins().jump(merge, &[v.into()]);
        self.b.switch_to_block(else_b);
        let w = other(self)?;
        self.b.ins().jump(merge, &[w.into()]);
        self.b.seal_block(merge);
        self.b.switch_to_block(merge);
        Ok(self.b.block_params(merge)[0])
    }

    /// Whether the data-dependent index `j` (an i64) lies in `0..at.extent` and the
    /// `guard`, if any, holds.
    fn indirect_ok(&mut self, j: CV, at: &Indirect, guard: Option<&IndexExpr>) -> CV {
        let ext = self.iexpr(&at.extent);
        let ge0 = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, j, 0);
        let lt = self.b.ins().icmp(IntCC::SignedLessThan, j, ext);
        let ok = self.b.ins().band(ge0, lt);
        match guard {
            None => ok,
            Some(g) => {
                let gv = self.iexpr(g);
                let gb = self.b.ins().icmp_imm_s(IntCC::NotEqual, gv, 0);
                self.b.ins().band(ok, gb)
            }
        }
    }

    /// `offset + j * at.stride`.
    fn indirect_offset(&mut self, offset: &IndexExpr, j: CV, at: &Indirect) -> CV {
        let base = self.iexpr(offset);
        let stride = self.iexpr(&at.stride);
        let part = self.b.ins().imul(j, stride);
        self.b.ins().iadd(base, part)
    }

    /// An f64 result stored with one rounding into the computed form of `d`.
    fn convert_rounding(&mut self, v: CV, d: DType) -> Result<CV, String> {
        match d {
            DType::F64 => Ok(v),
            DType::F32 => Ok(self.b.ins().fdemote(types::F32, v)),
            _ => self.convert(v, DType::F64, d),
        }
    }
}

// ---------------------------------------------------------------- compilation

/// True when the host has fused multiply-add instructions, which Cranelift then
/// emits for `fma` on f32 and f32x4 (x86-64 with FMA3; every aarch64). Inline
/// polynomials use them where they exist; elsewhere `fma` would be a library call
/// per element, so they multiply and add.
fn host_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

fn isa() -> Result<cranelift_codegen::isa::OwnedTargetIsa, String> {
    let mut flags = settings::builder();
    for (k, v) in CRANELIFT_FLAGS {
        flags.set(k, v).map_err(|e| format!("cranelift setting {k}: {e}"))?;
    }
    let builder = cranelift_native::builder().map_err(|e| format!("host not supported by cranelift: {e}"))?;
    builder.finish(settings::Flags::new(flags)).map_err(|e| e.to_string())
}

/// Compiles a kernel to native code (no caching; see [`run`]).
pub fn compile(kernel: &Kernel) -> Result<Compiled, KernelError> {
    compile_listed(kernel, false)
}

/// [`compile`], with the machine code listed in [`Compiled::asm`] when `disasm`.
fn compile_listed(kernel: &Kernel, disasm: bool) -> Result<Compiled, KernelError> {
    let ir = kernel.to_string();
    let fail = |message: String| KernelError::Compile { backend: "cpu", message, ir: ir.clone() };
    let isa = isa().map_err(fail)?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    let hs = helpers();
    for h in &hs {
        jb.symbol(h.name, h.ptr);
    }
    let mut module = JITModule::new(jb);
    let ptr = module.target_config().pointer_type();
    let mut sig: Signature = module.make_signature();
    sig.params.extend([types::I64, types::I64, ptr, ptr, ptr, ptr, ptr, ptr].map(AbiParam::new));
    let mut ctx = module.make_context();
    ctx.func.signature = sig.clone();
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let sigs = hs.iter().map(|h| (h.name, (h.params.to_vec(), h.ret))).collect();
        emit_kernel(&mut b, &mut module, kernel, sigs).map_err(fail)?;
        b.finalize(module.target_config());
    }
    let clif = ctx.func.display().to_string();
    let id = module.declare_function("kernel", Linkage::Export, &sig).map_err(|e| fail(e.to_string()))?;
    ctx.set_disasm(disasm);
    module.define_function(id, &mut ctx).map_err(|e| fail(format!("{e:?}")))?;
    let asm =
        if disasm { ctx.compiled_code().and_then(|c| c.vcode.clone()).unwrap_or_default() } else { String::new() };
    module.clear_context(&mut ctx);
    module.finalize_definitions().map_err(|e| fail(e.to_string()))?;
    let code = module.get_finalized_function(id);
    // SAFETY: the function was just compiled with exactly this signature.
    let func = unsafe { std::mem::transmute::<*const u8, KernelFn>(code) };
    Ok(Compiled { _module: module, func, ir, clif, asm })
}

fn emit_kernel(
    b: &mut FunctionBuilder<'_>,
    module: &mut JITModule,
    kernel: &Kernel,
    sigs: HashMap<&'static str, (Vec<Type>, Type)>,
) -> Result<(), String> {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let p = b.block_params(entry).to_vec();
    let (start, end, inp, outp, argp, oshape, rshape, paramp) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]);
    let fl = MemFlagsData::trusted();
    let args: Vec<CV> = (0..kernel.n_args).map(|k| b.ins().load(types::I64, fl, argp, (8 * k) as i32)).collect();
    let params: Vec<CV> = (0..kernel.n_params).map(|k| b.ins().load(types::F64, fl, paramp, (8 * k) as i32)).collect();
    let out_dims: Vec<CV> =
        (0..kernel.out_rank).map(|k| b.ins().load(types::I64, fl, oshape, (8 * k) as i32)).collect();
    let red_dims: Vec<CV> =
        (0..kernel.red_rank).map(|k| b.ins().load(types::I64, fl, rshape, (8 * k) as i32)).collect();
    let ptr_ty = module.target_config().pointer_type();
    let inputs: Vec<CV> = (0..kernel.inputs.len()).map(|k| b.ins().load(ptr_ty, fl, inp, (8 * k) as i32)).collect();
    let outputs: Vec<CV> = (0..kernel.outputs.len()).map(|k| b.ins().load(ptr_ty, fl, outp, (8 * k) as i32)).collect();
    let idx: Vec<Variable> = (0..kernel.out_rank + kernel.red_rank).map(|_| b.declare_var(types::I64)).collect();
    let mut g = Gen {
        b,
        module,
        funcs: HashMap::new(),
        sigs,
        args,
        idx,
        inputs,
        input_dtypes: kernel.inputs.clone(),
        params,
        hoisted: HashMap::new(),
        block_conditions: HashMap::new(),
        fma: host_fma(),
    };

    // out indices of `start`
    let mut rem = start;
    for d in (0..kernel.out_rank).rev() {
        let one = g.i64c(1);
        let is0 = g.b.ins().icmp_imm_s(IntCC::Equal, out_dims[d], 0);
        let n = g.b.ins().select(is0, one, out_dims[d]);
        let i = g.b.ins().urem(rem, n);
        g.b.def_var(g.idx[d], i);
        rem = g.b.ins().udiv(rem, n);
    }
    if vectorizable(kernel) {
        return emit_vectorized(&mut g, kernel, start, end, &out_dims, &outputs);
    }
    if output_vectorizable(kernel) {
        return emit_output_vectorized(&mut g, kernel, start, end, &out_dims, &red_dims, &outputs);
    }
    let pvar = g.b.declare_var(types::I64);
    g.b.def_var(pvar, start);
    let outer = open_loop(&mut g, pvar, end);

    // reduction loop
    let accs: Vec<Variable> = kernel.reductions.iter().map(|r| g.b.declare_var(cty(r.dtype))).collect();
    if kernel.red_rank > 0 && reduction_vectorizable(kernel) {
        emit_vector_reduction(&mut g, kernel, &red_dims, &accs)?;
    } else if kernel.red_rank > 0 {
        reduce_in_order(&mut g, kernel, &red_dims, &accs)?;
    }
    let vals = g.values(&kernel.body, &accs)?;
    let pv = g.b.use_var(pvar);
    for (o, base) in kernel.outputs.iter().zip(&outputs) {
        let v = vals[o.value];
        match &o.store {
            Store::Dense => g.store(*base, o.dtype, pv, v)?,
            Store::Scatter { .. } => g.scatter_store(o, *base, v, &vals)?,
        }
    }
    odometer(&mut g, 0, &out_dims);
    let pv = g.b.use_var(pvar);
    let p1 = g.b.ins().iadd_imm_s(pv, 1);
    g.b.def_var(pvar, p1);
    close_loop(&mut g, outer);
    g.b.ins().return_(&[]);
    Ok(())
}

impl Gen<'_, '_> {
    /// Combines `v` into scatter output `o` (base address `base`) at the current
    /// indices, where its guard holds and its data-dependent index (in `vals`) is in
    /// range: one element for a scalar `v`; for an f32x4 `v`, the four elements from
    /// the innermost index's (see [`scatter_vectorizable`]: they are distinct, so
    /// each receives its contributions in the scalar loop's order).
    fn scatter_store(&mut self, o: &Output, base: CV, v: CV, vals: &[CV]) -> Result<(), String> {
        let Store::Scatter { op, offset, guard, at, .. } = &o.store else {
            return Err("a dense output stored as a scatter".into());
        };
        let gv = match at {
            None => self.iexpr(guard),
            Some(at) => self.indirect_ok(vals[at.value], at, Some(guard)),
        };
        let yes = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(gv, yes, &[], done, &[]);
        self.b.seal_block(yes);
        self.b.switch_to_block(yes);
        let off = match at {
            None => self.iexpr(offset),
            Some(at) => self.indirect_offset(offset, vals[at.value], at),
        };
        if self.b.func.dfg.value_type(v) == types::F32X4 {
            let scaled = self.b.ins().imul_imm_s(off, 4);
            let addr = self.b.ins().iadd(base, scaled);
            let flags = MemFlagsData::new().with_notrap();
            let old = self.b.ins().load(types::F32X4, flags, addr, 0);
            let new = self.vector_combine(*op, old, v);
            self.b.ins().store(flags, new, addr, 0);
        } else {
            // read-modify-write through the output, as an input of its own dtype
            self.inputs.push(base);
            self.input_dtypes.push(o.dtype);
            let old = self.load(self.inputs.len() - 1, o.dtype, off)?;
            self.inputs.pop();
            self.input_dtypes.pop();
            let new = self.combine(*op, old, v, o.dtype)?;
            let new = if o.dtype.is_float() { new } else { self.wrap(new, o.dtype) };
            self.store(base, o.dtype, off, new)?;
        }
        self.b.ins().jump(done, &[]);
        self.b.seal_block(done);
        self.b.switch_to_block(done);
        Ok(())
    }
}

/// Opens `while var < bound { .. }`: returns the header (to jump back to) and the
/// exit block, and leaves the builder in the loop body.
fn open_loop(
    g: &mut Gen<'_, '_>,
    var: Variable,
    bound: CV,
) -> (cranelift_codegen::ir::Block, cranelift_codegen::ir::Block) {
    let header = g.b.create_block();
    let body = g.b.create_block();
    let exit = g.b.create_block();
    g.b.ins().jump(header, &[]);
    g.b.switch_to_block(header);
    let v = g.b.use_var(var);
    let more = g.b.ins().icmp(IntCC::SignedLessThan, v, bound);
    g.b.ins().brif(more, body, &[], exit, &[]);
    g.b.switch_to_block(body);
    g.b.seal_block(body);
    (header, exit)
}

/// Values computed before a loop, kept in stack slots that the loop reads.
/// Cranelift's optimiser places a pure value next to its uses and does not always
/// hoist it back out of a loop (nor does a loop-invariant block parameter survive its
/// constant-phi removal): a per-row value computed before the row's vector loop (the
/// `log` of a row statistic, say) ran again in every iteration. A store cannot move,
/// so the value is computed once; the loop pays one load from the stack per use.
fn pin_before_loop(g: &mut Gen<'_, '_>, values: &[CV]) -> Vec<StackSlot> {
    values
        .iter()
        .map(|&v| {
            let t = g.b.func.dfg.value_type(v);
            let slot = g.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, t.bytes(), 4));
            g.b.ins().stack_store(types::I64, v, slot, 0);
            slot
        })
        .collect()
}

/// Closes a loop opened by [`open_loop`]: jumps back and continues after it.
fn close_loop(g: &mut Gen<'_, '_>, (header, exit): (cranelift_codegen::ir::Block, cranelift_codegen::ir::Block)) {
    g.b.ins().jump(header, &[]);
    g.b.seal_block(header);
    g.b.switch_to_block(exit);
    g.b.seal_block(exit);
}

/// Advances the indices `first..first + dims.len()` by one position, row-major,
/// without branches.
fn odometer(g: &mut Gen<'_, '_>, first: usize, dims: &[CV]) {
    let mut carry = g.i64c(1);
    for d in (0..dims.len()).rev() {
        let var = g.idx[first + d];
        let i = g.b.use_var(var);
        let n = g.b.ins().iadd(i, carry);
        let wrap = g.b.ins().icmp(IntCC::SignedGreaterThanOrEqual, n, dims[d]);
        let zero = g.i64c(0);
        let one = g.i64c(1);
        let v = g.b.ins().select(wrap, zero, n);
        g.b.def_var(var, v);
        carry = g.b.ins().select(wrap, one, zero);
    }
}

// ---------------------------------------------------------------- running

/// Runs `kernel` on host inputs, compiling it on first use (cached by structure).
pub fn run(kernel: &Kernel, launch: &Launch, inputs: &[&HostBuffer]) -> Result<Vec<HostBuffer>, KernelError> {
    run_with(kernel, launch, inputs, false)
}

/// As [`run`]; with `dump` the kernel's IR and its Cranelift code are printed to
/// stderr when it is compiled.
pub fn run_with(
    kernel: &Kernel,
    launch: &Launch,
    inputs: &[&HostBuffer],
    dump: bool,
) -> Result<Vec<HostBuffer>, KernelError> {
    launch.check(kernel, inputs)?;
    let compiled = compiled(kernel, dump)?;
    let mut outs: Vec<HostBuffer> = kernel
        .outputs
        .iter()
        .zip(&launch.output_lens)
        .map(|(o, &n)| match &o.store {
            // a sum starts from zeros: a pooled buffer zeroed by both threads, whose
            // pages are already mapped (a fresh zeroed allocation faults them in
            // one at a time while the scatter runs, in one piece)
            Store::Scatter { op: ReduceOp::Sum, .. } => {
                crate::host_pool::take(o.dtype, n, crate::host_pool::Fill::Zeroed, "a kernel output")
            }
            Store::Scatter { op, .. } => {
                crate::host_pool::check(o.dtype, n, "a kernel output")?;
                Ok(scatter_init(*op, o.dtype, n))
            }
            // the kernel writes every dense output element
            Store::Dense => crate::host_pool::take(o.dtype, n, crate::host_pool::Fill::Overwritten, "a kernel output"),
        })
        .collect::<Result<_, _>>()?;
    let n: usize = launch.out_shape.iter().product();
    if n == 0 {
        return Ok(outs);
    }
    let in_ptrs: Vec<usize> = inputs.iter().map(|b| b.as_ptr() as usize).collect();
    let out_ptrs: Vec<usize> = outs.iter_mut().map(|b| b.as_mut_ptr() as usize).collect();
    let out_shape: Vec<i64> = launch.out_shape.iter().map(|&d| d as i64).collect();
    let red_shape: Vec<i64> = launch.red_shape.iter().map(|&d| d as i64).collect();
    let call = |s: usize, e: usize| {
        // SAFETY: the pointers are valid for the buffers' lengths; the kernel writes
        // each dense output position in [s, e) once, and ranges are disjoint; scatter
        // kernels run in one call, or in rows that write disjoint elements.
        unsafe { compiled.call(s, e, &in_ptrs, &out_ptrs, &launch.args, &out_shape, &red_shape, &launch.params) }
    };
    let work = n.saturating_mul(1 + launch.red_shape.iter().product::<usize>());
    let threads = rayon::current_num_threads();
    if work < 32 * 1024 || threads < 2 {
        call(0, n);
    } else if kernel.has_scatter() {
        // rows that provably scatter to disjoint elements run concurrently, a few
        // consecutive rows per part; otherwise the kernel runs in one piece (tried
        // for a scatter along dim 0: blocks of its columns on two threads, every
        // row's block in order, were 3x slower than one piece, 122 vs 37 ms for
        // jit-bench scatter_rows: the two cores kept fetching each other's lines
        // of the same target rows)
        match crate::scatter_split::row_split(kernel, launch, threads * 4) {
            Some(split) => {
                let per = split.rows.div_ceil(threads * 4);
                (0..split.rows.div_ceil(per)).into_par_iter().for_each(|c| {
                    call(c * per * split.row_len, ((c + 1) * per * split.row_len).min(n));
                });
            }
            None => call(0, n),
        }
    } else {
        // a few parts per thread, each at least ~8K elements of work (so that a
        // reduction with few outputs, one per channel, still spreads over threads)
        let parts = (rayon::current_num_threads() * 4).max(1);
        let per_output = work / n;
        let chunk = n.div_ceil(parts).max((8 * 1024 / per_output).max(1));
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| call(c * chunk, ((c + 1) * chunk).min(n)));
    }
    Ok(outs)
}

fn scatter_init(op: ReduceOp, d: DType, n: usize) -> HostBuffer {
    if d.is_float() {
        HostBuffer::filled(d, n, op.identity_f64())
    } else {
        HostBuffer::from_i64s(d, std::iter::repeat_n(op.identity_for(d), n))
    }
}

// ---------------------------------------------------------------- SIMD inner loops

/// Lanes of the vector loop (Cranelift's 128-bit vectors on x86-64 and aarch64).
const LANES: i64 = 4;

/// Independent vector accumulators per reduction in the vector reduction loop.
const UNROLL: usize = 4;

/// The coefficient of `i_l` in `e` as an expression that does not mention `i_l`
/// (a kernel argument, say), when `e` is affine in `i_l`.
fn lin_coef_expr(e: &IndexExpr, l: usize) -> Option<IndexExpr> {
    use IndexExpr as E;
    if !e.mentions(l) {
        return Some(E::c(0));
    }
    match e {
        E::Idx(_) => Some(E::c(1)),
        E::Add(a, b) => Some(lin_coef_expr(a, l)? + lin_coef_expr(b, l)?),
        E::Sub(a, b) => Some(lin_coef_expr(a, l)? - lin_coef_expr(b, l)?),
        E::Mul(a, b) if !a.mentions(l) => Some((**a).clone() * lin_coef_expr(b, l)?),
        E::Mul(a, b) if !b.mentions(l) => Some(lin_coef_expr(a, l)? * (**b).clone()),
        _ => None,
    }
}

/// Bounds `(lo, hi)` on the change of `e` when loop index `i_l` grows by one (the
/// other indices fixed), or `None` when a step can jump arbitrarily (a floor
/// division, modulo, comparison or selection that depends on `i_l`).
fn step_bounds(e: &IndexExpr, l: usize) -> Option<(i64, i64)> {
    step_range(e, l, false)
}

/// [`step_bounds`]; with `floors`, also through floor divisions by positive
/// constants (`floor((a + s) / c) - floor(a / c)` lies in `[floor(s / c), ceil(s /
/// c)]`), which keeps the sign of a monotone step: enough for conditions, but such
/// an offset is not contiguous.
fn step_range(e: &IndexExpr, l: usize, floors: bool) -> Option<(i64, i64)> {
    use IndexExpr as E;
    if !e.mentions(l) {
        return Some((0, 0));
    }
    match e {
        E::Idx(_) => Some((1, 1)),
        E::Add(a, b) => {
            let ((la, ua), (lb, ub)) = (step_range(a, l, floors)?, step_range(b, l, floors)?);
            Some((la.checked_add(lb)?, ua.checked_add(ub)?))
        }
        E::Sub(a, b) => {
            let ((la, ua), (lb, ub)) = (step_range(a, l, floors)?, step_range(b, l, floors)?);
            Some((la.checked_sub(ub)?, ua.checked_sub(lb)?))
        }
        E::Mul(a, b) => {
            let (c, x) = match (a.as_const(), b.as_const()) {
                (Some(c), _) => (c, b),
                (_, Some(c)) => (c, a),
                _ => return None,
            };
            let (lo, hi) = step_range(x, l, floors)?;
            let (p, q) = (lo.checked_mul(c)?, hi.checked_mul(c)?);
            Some((p.min(q), p.max(q)))
        }
        // max(a', b') - max(a, b) and min(a', b') - min(a, b) lie between the two
        // operands' own steps
        E::Min(a, b) | E::Max(a, b) => {
            let ((la, ua), (lb, ub)) = (step_range(a, l, floors)?, step_range(b, l, floors)?);
            Some((la.min(lb), ua.max(ub)))
        }
        E::Select(c, t, o) if !c.mentions(l) => {
            let ((lt, ut), (lo, uo)) = (step_range(t, l, floors)?, step_range(o, l, floors)?);
            Some((lt.min(lo), ut.max(uo)))
        }
        E::FloorDiv(a, c) if floors && c.as_const().is_some_and(|c| c > 0) => {
            let c = c.as_const()?;
            let (lo, hi) = step_range(a, l, floors)?;
            Some((lo.div_euclid(c), -((-hi).div_euclid(c))))
        }
        _ => None,
    }
}

/// True when the 0/1 condition `g` holds on one interval of `i_l` (or does not
/// depend on it): comparisons of monotone differences, and their conjunctions. Such
/// a condition holds on a whole block of lanes when it holds at the block's ends.
fn interval_shaped(g: &IndexExpr, l: usize) -> bool {
    use IndexExpr as E;
    if !g.mentions(l) {
        return true;
    }
    match g {
        E::Cmp(CmpOp::Lt | CmpOp::Le, a, b) => {
            let d = E::Sub(a.clone(), b.clone());
            step_range(&d, l, true).is_some_and(|(lo, hi)| lo >= 0 || hi <= 0)
        }
        // `c != 0` of a 0/1 condition is the condition
        E::Cmp(CmpOp::Ne, a, b) if b.as_const() == Some(0) => interval_shaped(a, l),
        E::Mul(a, b) | E::Min(a, b) => interval_shaped(a, l) && interval_shaped(b, l),
        _ => false,
    }
}

/// True when a load at `offset` is gathered lane by lane in a vector loop along
/// `i_l`: its offset is neither affine in `i_l` nor piecewise contiguous (a floor
/// division or modulo of `i_l`, say). Each lane's offset is computed on its own.
fn lane_gathered(offset: &IndexExpr, l: usize) -> bool {
    lin_coef_expr(offset, l).is_none() && step_bounds(offset, l).is_none_or(|(_, hi)| hi > 1)
}

/// What the vector loop must verify at run time, per block of four lanes, before
/// it may use vectors: loads whose offsets are only piecewise contiguous along the
/// innermost index (a reflection, a clamp) must advance by exactly one per lane
/// (where their guard holds), and guards and index conditions must be the same on
/// every lane of the block: all true (guarded loads load) or all false (they give
/// their fill value without touching memory).
#[derive(Debug, Default)]
struct BlockChecks {
    /// Offsets that must satisfy `e(j + 3) - e(j) == 3`, unless their guard (the
    /// second element) is false on the block.
    contiguous: Vec<(IndexExpr, Option<IndexExpr>)>,
    /// Conditions that must be uniform on the block.
    conditions: Vec<IndexExpr>,
}

impl BlockChecks {
    fn of(vals: &[Value], l: usize) -> BlockChecks {
        let mut c = BlockChecks::default();
        for v in vals {
            match &v.inst {
                Inst::Load { offset, guard, .. } => {
                    let entry = (offset.clone(), guard.clone());
                    if lin_coef_expr(offset, l).is_none() && !lane_gathered(offset, l) && !c.contiguous.contains(&entry)
                    {
                        c.contiguous.push(entry);
                    }
                    if let Some(g) = guard {
                        if !c.conditions.contains(g) {
                            c.conditions.push(g.clone());
                        }
                    }
                }
                Inst::Index(e) if e.mentions(l) && !c.conditions.contains(e) => c.conditions.push(e.clone()),
                _ => {}
            }
        }
        c
    }

    fn is_empty(&self) -> bool {
        self.contiguous.is_empty() && self.conditions.is_empty()
    }
}

/// The factors of an interval-shaped condition ([`interval_shaped`]): comparisons
/// that are each monotone along the innermost index (or do not depend on it), whose
/// product is the condition.
fn condition_factors(g: &IndexExpr) -> Vec<&IndexExpr> {
    use IndexExpr as E;
    match g {
        E::Cmp(CmpOp::Ne, a, b) if b.as_const() == Some(0) => condition_factors(a),
        E::Mul(a, b) | E::Min(a, b) => {
            let mut f = condition_factors(a);
            f.extend(condition_factors(b));
            f
        }
        _ => vec![g],
    }
}

/// True when the kernel is element-wise over f32 with loads that are contiguous or
/// invariant along the innermost output index, or piecewise so with run-time block
/// checks ([`BlockChecks`]): its inner loop can run on vectors.
fn vectorizable(k: &Kernel) -> bool {
    if k.red_rank != 0 || k.out_rank == 0 {
        return false;
    }
    let l = k.out_rank - 1;
    let outputs: Vec<usize> = k.outputs.iter().map(|o| o.value).collect();
    values_vectorizable(&k.body, &k.inputs, l, &outputs, true)
        && k.outputs.iter().all(|o| match o.store {
            Store::Dense => in_f32(o.dtype),
            Store::Scatter { .. } => scatter_vectorizable(k, o, l),
        })
}

/// True when scatter output `o` can take four lanes per step along loop index `l`:
/// an f32 sum whose target offset advances by one per lane (so the four targets
/// are distinct), whose guard does not depend on `l`, and whose data-dependent
/// index, if any, is an integer read once per row (the row of an `index_add`).
fn scatter_vectorizable(k: &Kernel, o: &Output, l: usize) -> bool {
    let Store::Scatter { op, offset, guard, at, .. } = &o.store else { return false };
    let row_index = |at: &Indirect| {
        let v = &k.body[at.value];
        matches!(&v.inst, Inst::Load { offset, guard: None, .. } if !offset.mentions(l))
            && !v.dtype.is_float()
            && v.dtype != DType::Bool
            && !at.stride.mentions(l)
            && !at.extent.mentions(l)
    };
    o.dtype == DType::F32
        && k.body[o.value].dtype == DType::F32
        && *op == ReduceOp::Sum
        && offset.linear_coefficient(l) == Some(1)
        && !guard.mentions(l)
        && at.as_ref().is_none_or(row_index)
}

/// True when a reduction kernel whose reduced axis is not contiguous can run four
/// neighbouring outputs per vector: f32 reductions and outputs, inner values whose
/// loads are contiguous, strided or invariant along the last output index, and a
/// body of f32 operations on the results. Each lane accumulates in the scalar
/// loop's order, so the results are the same bit for bit.
fn output_vectorizable(k: &Kernel) -> bool {
    if k.red_rank == 0 || k.out_rank == 0 || k.has_scatter() || reduction_vectorizable(k) {
        return false;
    }
    let l = k.out_rank - 1;
    let reduced: Vec<usize> = k.reductions.iter().map(|r| r.value).collect();
    let outputs: Vec<usize> = k.outputs.iter().map(|o| o.value).collect();
    k.reductions.iter().all(|r| r.dtype == DType::F32)
        && k.outputs.iter().all(|o| o.dtype == DType::F32 && o.store == Store::Dense)
        && values_vectorizable(&k.inner, &k.inputs, l, &reduced, false)
        && values_vectorizable_with(&k.body, &k.inputs, l, &outputs, false, true)
}

/// True when a reduction kernel's inner loop can run on f32x4 vectors along the last
/// reduction index: f32 values and reductions, loads contiguous or invariant along it.
fn reduction_vectorizable(k: &Kernel) -> bool {
    if k.red_rank == 0 || k.has_scatter() {
        return false;
    }
    let reduced: Vec<usize> = k.reductions.iter().map(|r| r.value).collect();
    k.reductions.iter().all(|r| r.dtype == DType::F32)
        && values_vectorizable(&k.inner, &k.inputs, k.out_rank + k.red_rank - 1, &reduced, false)
}

/// True for the dtypes computed in f32: f32 itself, and f16 and bf16, whose values
/// are rounded to their precision only by casts, constants, parameters and stores.
fn in_f32(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16)
}

/// True when `vals` are computations in f32 (see [`in_f32`]) whose loads are contiguous or invariant
/// along loop index `l`, and whose comparisons only feed `where` conditions (never
/// one of `used`, the values read outside the list). With `checked`, loads that are
/// contiguous only piecewise (their offset never advances by more than one per step)
/// and guarded loads and index conditions that hold on intervals are accepted too:
/// the caller verifies them per block ([`BlockChecks`]).
fn values_vectorizable(vals: &[Value], inputs: &[DType], l: usize, used: &[usize], checked: bool) -> bool {
    values_vectorizable_with(vals, inputs, l, used, checked, false)
}

/// [`values_vectorizable`]; with `accs`, reduction results (`acc k`, one vector of
/// four outputs' accumulators each) are allowed too.
fn values_vectorizable_with(
    vals: &[Value],
    inputs: &[DType],
    l: usize,
    used: &[usize],
    checked: bool,
    accs: bool,
) -> bool {
    let f32s = |id: usize| in_f32(vals[id].dtype);
    // integer loads that only give a gather its row's index (invariant along the
    // row: read once per row as a scalar, see `vector_values_picked`)
    let row_index = |id: usize| {
        let v = &vals[id];
        let Inst::Load { offset, guard: None, .. } = &v.inst else { return false };
        checked
            && !v.dtype.is_float()
            && v.dtype != DType::Bool
            && !offset.mentions(l)
            && !used.contains(&id)
            && vals.iter().all(|u| match &u.inst {
                Inst::Gather { .. } => true,
                Inst::Unary(_, a) | Inst::Cast(a) => *a != id,
                Inst::Binary(_, a, b) => *a != id && *b != id,
                Inst::Where(c, a, b) => *c != id && *a != id && *b != id,
                _ => true,
            })
    };
    // 0/1 values computed as lane masks: f32 comparisons, conditions checked per
    // block, and `and`, `or` and `not` of masks
    let mut is_mask = vec![false; vals.len()];
    for (id, v) in vals.iter().enumerate() {
        is_mask[id] = v.dtype == DType::Bool
            && match &v.inst {
                Inst::Binary(op, a, b) if op.is_comparison() => f32s(*a) && f32s(*b),
                Inst::Binary(op, a, b) if op.is_logical() => is_mask[*a] && is_mask[*b],
                Inst::Unary(UnaryOp::Not, a) => is_mask[*a],
                Inst::Index(e) => checked && interval_shaped(e, l),
                _ => false,
            };
    }
    let ok = vals.iter().enumerate().all(|(id, v)| match &v.inst {
        Inst::Load { .. } if row_index(id) => true,
        // a gather of a contiguous row at an index read once per row: one vector
        // load per block
        Inst::Gather { input, offset, at, guard: None } => {
            row_index(at.value)
                && v.dtype == DType::F32
                && inputs[*input] == DType::F32
                && offset.linear_coefficient(l) == Some(1)
                && !at.stride.mentions(l)
                && !at.extent.mentions(l)
        }
        Inst::Load { input, offset, guard, .. } => {
            let offset_ok = match offset.linear_coefficient(l) {
                Some(0) | Some(1) => true,
                // a constant stride: four scalar loads gathered into a vector
                Some(_) => checked,
                None if lin_coef_expr(offset, l).is_some() => checked, // a stride given at launch
                // piecewise contiguous (verified per block), or gathered lane by lane
                None => checked,
            };
            let guard_ok = match guard {
                None => true,
                Some(g) => checked && interval_shaped(g, l),
            };
            in_f32(v.dtype) && inputs[*input] == v.dtype && offset_ok && guard_ok
        }
        Inst::Index(e) => checked && v.dtype == DType::Bool && interval_shaped(e, l),
        Inst::Const(_) | Inst::Param(_) => in_f32(v.dtype),
        Inst::Unary(UnaryOp::Not, _) => is_mask[id],
        Inst::Unary(_, a) => in_f32(v.dtype) && f32s(*a),
        Inst::Binary(op, ..) if op.is_logical() => is_mask[id],
        Inst::Binary(op, a, b) => f32s(*a) && f32s(*b) && (in_f32(v.dtype) || op.is_comparison()),
        // between f32, f16 and bf16: nothing, or a rounding to the half precision
        Inst::Cast(a) => in_f32(v.dtype) && f32s(*a),
        Inst::Where(c, a, b) => in_f32(v.dtype) && f32s(*a) && f32s(*b) && is_mask[*c],
        Inst::Acc(_) => accs && v.dtype == DType::F32,
        Inst::Random { .. } | Inst::Gather { .. } => false,
    });
    // masks may only feed `where` conditions and other masks
    let masks_ok = vals.iter().enumerate().all(|(id, v)| {
        v.dtype != DType::Bool
            || vals.iter().enumerate().all(|(uid, u)| match &u.inst {
                Inst::Where(_, a, b) => *a != id && *b != id,
                _ if is_mask[uid] => true,
                Inst::Unary(_, a) | Inst::Cast(a) => *a != id,
                Inst::Binary(_, a, b) => *a != id && *b != id,
                _ => true,
            }) && !used.contains(&id)
    });
    ok && masks_ok
}

impl Gen<'_, '_> {
    /// One step of reduction `op` on f32x4 lanes.
    fn vector_combine(&mut self, op: ReduceOp, a: CV, v: CV) -> CV {
        match op {
            ReduceOp::Sum => self.b.ins().fadd(a, v),
            ReduceOp::Prod => self.b.ins().fmul(a, v),
            ReduceOp::Max => self.b.ins().fmax(a, v),
            ReduceOp::Min => self.b.ins().fmin(a, v),
        }
    }

    /// A float constant of `x`'s type (f32 or f32x4).
    fn fconst_like(&mut self, x: CV, v: f32) -> CV {
        let c = self.b.ins().f32const(v);
        if self.b.func.dfg.value_type(x) == types::F32X4 {
            self.b.ins().splat(types::F32X4, c)
        } else {
            c
        }
    }

    /// `a cc b ? t : f` lane by lane on f32x4 values: the comparison's mask,
    /// reinterpreted as f32 lanes, selects bits.
    fn select_lanes(&mut self, cc: FloatCC, a: CV, b: CV, t: CV, f: CV) -> CV {
        let m = self.b.ins().fcmp(cc, a, b);
        let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let mask = self.b.ins().bitcast(types::F32X4, le, m);
        self.b.ins().bitselect(mask, t, f)
    }

    /// `max(x, c)` (`min` when `!max`) of f32x4 lanes as `x <= c ? c : x` (`x >= c`
    /// for `min`): NaN in `x` passes; `c` must not be NaN (see the caller).
    fn clamp_to(&mut self, x: CV, c: CV, max: bool) -> CV {
        let cc = if max { FloatCC::LessThanOrEqual } else { FloatCC::GreaterThanOrEqual };
        self.select_lanes(cc, x, c, c, x)
    }

    /// [`Gen::clamp_to`] against a value that may be NaN (a launch parameter): NaN
    /// lanes of `c` give NaN.
    fn clamp_to_param(&mut self, x: CV, c: CV, max: bool) -> CV {
        let r = self.clamp_to(x, c, max);
        self.select_lanes(FloatCC::Equal, c, c, r, c)
    }

    fn per_lane(&mut self, v: CV, f: &mut dyn FnMut(&mut Self, CV) -> Result<CV, String>) -> Result<CV, String> {
        let mut out = v;
        for lane in 0..LANES as u8 {
            let x = self.b.ins().extractlane(v, lane);
            let y = f(self, x)?;
            out = self.b.ins().insertlane(out, y, lane);
        }
        Ok(out)
    }

    /// Vector (f32x4) values of an element-wise body at the current indices, whose
    /// innermost index points at lane 0.
    fn vector_values(&mut self, vals: &[Value], l: usize) -> Result<Vec<CV>, String> {
        let picked = self.vector_values_picked(vals, l, &|_| true)?;
        picked.into_iter().map(|v| v.ok_or_else(|| "a value was not emitted".to_string())).collect()
    }

    /// One f32x4 load of `input` at `offset` for lanes `i_l = j .. j + 4`: contiguous,
    /// invariant (splat), stride 2 (two loads and a shuffle), another stride (four
    /// loads), or lane by lane for offsets that are not affine. f16 and bf16 inputs
    /// are widened to f32 (exactly): four 16-bit lanes at once where contiguous.
    fn vector_load(&mut self, input: usize, offset: &IndexExpr, l: usize) -> Result<CV, String> {
        let vt = types::F32X4;
        let dt = self.input_dtypes[input];
        Ok(if lane_gathered(offset, l) {
            // each lane's own offset: i_l = j + lane
            let j = self.b.use_var(self.idx[l]);
            let mut v = None;
            for lane in 0..LANES {
                let jl = self.b.ins().iadd_imm_s(j, lane);
                self.b.def_var(self.idx[l], jl);
                let off = self.iexpr(offset);
                let x = self.load(input, dt, off)?;
                v = Some(match v {
                    None => self.b.ins().splat(vt, x),
                    Some(v) => self.b.ins().insertlane(v, x, lane as u8),
                });
            }
            self.b.def_var(self.idx[l], j);
            v.ok_or("no lanes")?
        } else {
            // guards were verified for the block; an offset that is not
            // invariant is contiguous here (linear, or verified per block)
            let off = self.iexpr(offset);
            let coef = offset.linear_coefficient(l);
            let stride = match coef {
                Some(0) | Some(1) => None,
                Some(c) => Some(self.i64c(c)),
                None => lin_coef_expr(offset, l).map(|e| self.iexpr(&e)),
            };
            if coef == Some(2) && dt == DType::F32 {
                // stride 2: lanes 0 and 2 of the vector at `off` and lanes 1
                // and 3 of the one at `off + 3` (reading no element past the
                // last lane's), picked by one shufps
                let base = self.inputs[input];
                let scaled = self.b.ins().imul_imm_s(off, 4);
                let addr = self.b.ins().iadd(base, scaled);
                let flags = MemFlagsData::new().with_notrap();
                let lo = self.b.ins().load(vt, flags, addr, 0);
                let hi = self.b.ins().load(vt, flags, addr, 12);
                let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
                let (lo8, hi8) =
                    (self.b.ins().bitcast(types::I8X16, le, lo), self.b.ins().bitcast(types::I8X16, le, hi));
                let lanes: [u8; 4] = [0, 2, 4 + 1, 4 + 3];
                let mask: Vec<u8> = lanes.iter().flat_map(|&q| (0..4).map(move |b| q * 4 + b)).collect();
                let mask = self.b.func.dfg.immediates.push(mask.into());
                let picked = self.b.ins().shuffle(lo8, hi8, mask);
                self.b.ins().bitcast(vt, le, picked)
            } else if let Some(stride) = stride {
                // strided: gather the four lanes
                let x = self.load(input, dt, off)?;
                let mut v = self.b.ins().splat(vt, x);
                let mut o = off;
                for lane in 1..LANES {
                    o = self.b.ins().iadd(o, stride);
                    let x = self.load(input, dt, o)?;
                    v = self.b.ins().insertlane(v, x, lane as u8);
                }
                v
            } else if coef != Some(0) {
                let base = self.inputs[input];
                let scaled = self.b.ins().imul_imm_s(off, dt.size_in_bytes() as i64);
                let addr = self.b.ins().iadd(base, scaled);
                let flags = MemFlagsData::new().with_notrap();
                if dt == DType::F32 {
                    self.b.ins().load(vt, flags, addr, 0)
                } else {
                    // four 16-bit lanes, zero-extended to i32x4
                    let bits = self.b.ins().uload16x4(flags, addr, 0);
                    self.half_bits_to_f32(bits, dt)
                }
            } else {
                let x = self.load(input, dt, off)?;
                self.b.ins().splat(vt, x)
            }
        })
    }

    /// [`Self::vector_values`] for the values `pick` selects (which must not use
    /// unselected ones, unless hoisted); the others are `None`.
    fn vector_values_picked(
        &mut self,
        vals: &[Value],
        l: usize,
        pick: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Option<CV>>, String> {
        let vt = types::F32X4;
        let mut out: Vec<Option<CV>> = Vec::with_capacity(vals.len());
        let arg = |out: &[Option<CV>], i: usize| out[i].ok_or_else(|| format!("value b{i} was not emitted"));
        for (id, v) in vals.iter().enumerate() {
            if let Some(&h) = self.hoisted.get(&id) {
                out.push(Some(h));
                continue;
            }
            if !pick(id) {
                out.push(None);
                continue;
            }
            let cv = match &v.inst {
                // a gather's row index (see `values_vectorizable`): one scalar load
                Inst::Load { input, offset, guard: None, .. } if !v.dtype.is_float() => {
                    let off = self.iexpr(offset);
                    self.load(*input, self.input_dtypes[*input], off)?
                }
                Inst::Gather { input, offset, at, .. } => {
                    // the row at the index, or zeros without touching memory where
                    // the index is out of range
                    let j = arg(&out, at.value)?;
                    let ok = self.indirect_ok(j, at, None);
                    self.branch_value(
                        ok,
                        vt,
                        &mut |g| {
                            let off = g.indirect_offset(offset, j, at);
                            let scaled = g.b.ins().imul_imm_s(off, 4);
                            let addr = g.b.ins().iadd(g.inputs[*input], scaled);
                            Ok(g.b.ins().load(vt, MemFlagsData::new().with_notrap(), addr, 0))
                        },
                        &mut |g| {
                            let zero = g.b.ins().f32const(0.0);
                            Ok(g.b.ins().splat(vt, zero))
                        },
                    )?
                }
                Inst::Load { input, offset, guard, fill } => {
                    let held = guard.as_ref().and_then(|g| self.block_conditions.get(g).copied());
                    match held {
                        None => self.vector_load(*input, offset, l)?,
                        // the guard is uniform on the block: load, or the fill value
                        // without touching memory
                        Some(held) => {
                            self.branch_value(held, vt, &mut |g| g.vector_load(*input, offset, l), &mut |g| {
                                let f = g.constant(*fill, v.dtype)?;
                                Ok(g.b.ins().splat(vt, f))
                            })?
                        }
                    }
                }
                Inst::Const(c) => {
                    let x = self.constant(*c, v.dtype)?;
                    self.b.ins().splat(vt, x)
                }
                Inst::Param(k) => {
                    let x = self.convert_rounding(self.params[*k], v.dtype)?;
                    self.b.ins().splat(vt, x)
                }
                Inst::Cast(a) => {
                    let x = arg(&out, *a)?;
                    match v.dtype {
                        DType::F16 | DType::BF16 => self.round_to_half(x, v.dtype),
                        _ => x,
                    }
                }
                Inst::Unary(op, a) => {
                    let x = arg(&out, *a)?;
                    match op {
                        // of a lane mask
                        UnaryOp::Not => self.b.ins().bnot(x),
                        UnaryOp::Neg => self.b.ins().fneg(x),
                        UnaryOp::Abs => self.b.ins().fabs(x),
                        UnaryOp::Sqrt => self.b.ins().sqrt(x),
                        UnaryOp::Floor => self.b.ins().floor(x),
                        UnaryOp::Round => self.b.ins().nearest(x),
                        UnaryOp::Exp => self.exp_f32(x),
                        UnaryOp::Sigmoid => self.sigmoid_f32(x),
                        UnaryOp::Log => self.log_f32(x),
                        UnaryOp::Tanh => self.tanh_f32(x),
                        UnaryOp::Erf => self.erf_f32(x)?,
                        UnaryOp::Sin | UnaryOp::Cos => self.trig_f32(x, *op)?,
                        UnaryOp::Recip | UnaryOp::Rsqrt => {
                            let one = self.fconst_like(x, 1.0);
                            let s = if *op == UnaryOp::Rsqrt { self.b.ins().sqrt(x) } else { x };
                            self.b.ins().fdiv(one, s)
                        }
                    }
                }
                Inst::Binary(op, a, b) => {
                    let (x, y) = (arg(&out, *a)?, arg(&out, *b)?);
                    match op {
                        BinaryOp::Add => self.b.ins().fadd(x, y),
                        BinaryOp::Sub => self.b.ins().fsub(x, y),
                        BinaryOp::Mul => self.b.ins().fmul(x, y),
                        BinaryOp::Div => self.b.ins().fdiv(x, y),
                        BinaryOp::Pow => self.pow_f32(x, y),
                        BinaryOp::Max | BinaryOp::Min => {
                            let max = *op == BinaryOp::Max;
                            let constant = |id: usize| match vals[id].inst {
                                Inst::Const(c) => Some(c),
                                _ => None,
                            };
                            // against a constant that is not NaN (and not the zero
                            // whose sign the IEEE maximum / minimum would pick over
                            // the other zero's), a compare and select keeps the
                            // results bit for bit: NaN in `x` passes, and a tie
                            // returns the constant's value (a few instructions
                            // instead of the NaN-propagating fmax / fmin sequence)
                            let plain = |c: f64| !(c.is_nan() || (c == 0.0 && c.is_sign_negative() == max));
                            let param = |id: usize| matches!(vals[id].inst, Inst::Param(_));
                            match (constant(*a), constant(*b)) {
                                (_, Some(c)) if plain(c) => self.clamp_to(x, y, max),
                                (Some(c), _) if plain(c) => self.clamp_to(y, x, max),
                                // a launch parameter may be NaN: then every lane is
                                _ if param(*b) => self.clamp_to_param(x, y, max),
                                _ if param(*a) => self.clamp_to_param(y, x, max),
                                _ if max => self.b.ins().fmax(x, y),
                                _ => self.b.ins().fmin(x, y),
                            }
                        }
                        // lane masks (all ones or all zeros per lane)
                        BinaryOp::And => self.b.ins().band(x, y),
                        BinaryOp::Or => self.b.ins().bor(x, y),
                        op if op.is_comparison() => {
                            let cc = match op {
                                BinaryOp::Eq => FloatCC::Equal,
                                BinaryOp::Ne => FloatCC::NotEqual,
                                BinaryOp::Lt => FloatCC::LessThan,
                                BinaryOp::Le => FloatCC::LessThanOrEqual,
                                BinaryOp::Gt => FloatCC::GreaterThan,
                                _ => FloatCC::GreaterThanOrEqual,
                            };
                            // an i32x4 mask, reinterpreted as f32x4 lanes for bitselect
                            let m = self.b.ins().fcmp(cc, x, y);
                            let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
                            self.b.ins().bitcast(vt, le, m)
                        }
                        op => {
                            let op = *op;
                            let mut lanes = x;
                            for lane in 0..LANES as u8 {
                                let (p, q) = (self.b.ins().extractlane(x, lane), self.b.ins().extractlane(y, lane));
                                let r = self.binary(op, p, q, vals[*a].dtype, v.dtype)?;
                                lanes = self.b.ins().insertlane(lanes, r, lane);
                            }
                            lanes
                        }
                    }
                }
                Inst::Where(c, a, b) => self.b.ins().bitselect(arg(&out, *c)?, arg(&out, *a)?, arg(&out, *b)?),
                Inst::Index(e) => {
                    // a condition along the row has one value on the block (verified
                    // by `block_ok`); one that does not depend on the lane is
                    // evaluated once
                    let all = self.b.ins().iconst(types::I32, -1);
                    let none = self.b.ins().iconst(types::I32, 0);
                    let c = match self.block_conditions.get(e) {
                        Some(&held) => held,
                        None if !e.mentions(l) => self.iexpr(e),
                        None => return Err("a condition along the row was not checked for the block".into()),
                    };
                    let mask = self.b.ins().select(c, all, none);
                    let m = self.b.ins().splat(types::I32X4, mask);
                    let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
                    self.b.ins().bitcast(vt, le, m)
                }
                _ => return Err("instruction not vectorizable".into()),
            };
            out.push(Some(cv));
        }
        Ok(out)
    }
}

/// The reduction loop of a kernel whose inner values are vectorizable along the last
/// reduction index: for every row of that index, four-lane accumulators take the
/// vectors and scalar accumulators the remainder; the lanes are folded into the
/// scalar accumulators `accs` at the end.
fn emit_vector_reduction(
    g: &mut Gen<'_, '_>,
    kernel: &Kernel,
    red_dims: &[CV],
    accs: &[Variable],
) -> Result<(), String> {
    let first = kernel.out_rank;
    let l = first + kernel.red_rank - 1;
    let last_dim = red_dims[kernel.red_rank - 1];
    // UNROLL independent vector accumulators per reduction (the adds of one chain
    // wait for each other; several chains keep the adder busy); the first one also
    // takes the single vectors after the unrolled part
    let vaccs: Vec<Vec<Variable>> =
        kernel.reductions.iter().map(|_| (0..UNROLL).map(|_| g.b.declare_var(types::F32X4)).collect()).collect();
    for ((var, vvars), r) in accs.iter().zip(&vaccs).zip(&kernel.reductions) {
        let init = g.constant(r.op.identity_f64(), r.dtype)?;
        g.b.def_var(*var, init);
        let splat = g.b.ins().splat(types::F32X4, init);
        for vvar in vvars {
            g.b.def_var(*vvar, splat);
        }
    }
    // rows: every position of the reduction dims but the last
    let rows_n = red_dims[..kernel.red_rank - 1].iter().fold(None, |acc: Option<CV>, &d| {
        Some(match acc {
            None => d,
            Some(a) => g.b.ins().imul(a, d),
        })
    });
    let rows_n = rows_n.unwrap_or_else(|| g.i64c(1));
    let zero = g.i64c(0);
    for d in 0..kernel.red_rank {
        g.b.def_var(g.idx[first + d], zero);
    }
    let rvar = g.b.declare_var(types::I64);
    g.b.def_var(rvar, zero);
    let jvar = g.b.declare_var(types::I64);
    let rows = open_loop(g, rvar, rows_n);
    g.b.def_var(jvar, zero);
    // UNROLL vectors per step while they fit
    // the vectors at lanes [j, j + 4) into chain u of every reduction
    let accumulate = |g: &mut Gen<'_, '_>, j: CV, u: usize| -> Result<(), String> {
        g.b.def_var(g.idx[l], j);
        let vals = g.vector_values(&kernel.inner, l)?;
        for (vvars, r) in vaccs.iter().zip(&kernel.reductions) {
            let a = g.b.use_var(vvars[u]);
            let c = g.vector_combine(r.op, a, vals[r.value]);
            g.b.def_var(vvars[u], c);
        }
        Ok(())
    };
    let wide_start = g.b.ins().iadd_imm_s(last_dim, -(UNROLL as i64 * LANES - 1));
    let wloop = open_loop(g, jvar, wide_start);
    let j = g.b.use_var(jvar);
    for u in 0..UNROLL {
        let ju = g.b.ins().iadd_imm_s(j, u as i64 * LANES);
        accumulate(g, ju, u)?;
    }
    let jw = g.b.ins().iadd_imm_s(j, UNROLL as i64 * LANES);
    g.b.def_var(jvar, jw);
    close_loop(g, wloop);
    // then single vectors
    let last_start = g.b.ins().iadd_imm_s(last_dim, -(LANES - 1));
    let vloop = open_loop(g, jvar, last_start);
    let j = g.b.use_var(jvar);
    accumulate(g, j, 0)?;
    let j4 = g.b.ins().iadd_imm_s(j, LANES);
    g.b.def_var(jvar, j4);
    close_loop(g, vloop);
    let sloop = open_loop(g, jvar, last_dim);
    let j = g.b.use_var(jvar);
    g.b.def_var(g.idx[l], j);
    let vals = g.values(&kernel.inner, &[])?;
    for (var, r) in accs.iter().zip(&kernel.reductions) {
        let a = g.b.use_var(*var);
        let c = g.combine(r.op, a, vals[r.value], r.dtype)?;
        g.b.def_var(*var, c);
    }
    let j1 = g.b.ins().iadd_imm_s(j, 1);
    g.b.def_var(jvar, j1);
    close_loop(g, sloop);
    // next row
    g.b.def_var(g.idx[l], zero);
    odometer(g, first, &red_dims[..kernel.red_rank - 1]);
    let r = g.b.use_var(rvar);
    let r1 = g.b.ins().iadd_imm_s(r, 1);
    g.b.def_var(rvar, r1);
    close_loop(g, rows);
    // fold the chains (c0 + (c1 + (c2 + c3))), then the lanes into the scalar accumulators
    for ((var, vvars), r) in accs.iter().zip(&vaccs).zip(&kernel.reductions) {
        let chains: Vec<CV> = vvars.iter().map(|v| g.b.use_var(*v)).collect();
        let v = chains.into_iter().rev().reduce(|later, c| g.vector_combine(r.op, c, later)).ok_or("no chains")?;
        let mut a = g.b.use_var(*var);
        for lane in 0..LANES as u8 {
            let x = g.b.ins().extractlane(v, lane);
            a = g.combine(r.op, a, x, r.dtype)?;
        }
        g.b.def_var(*var, a);
    }
    Ok(())
}

/// The reductions of the output position at the current indices, folded over the
/// whole reduction domain in order into the scalar `accs` (any dtype).
fn reduce_in_order(g: &mut Gen<'_, '_>, kernel: &Kernel, red_dims: &[CV], accs: &[Variable]) -> Result<(), String> {
    for (var, r) in accs.iter().zip(&kernel.reductions) {
        let init = if r.dtype.is_float() {
            g.constant(r.op.identity_f64(), r.dtype)?
        } else {
            g.i64c(r.op.identity_for(r.dtype))
        };
        g.b.def_var(*var, init);
    }
    let red_n = red_dims.iter().skip(1).fold(red_dims[0], |a, &d| g.b.ins().imul(a, d));
    let zero = g.i64c(0);
    for d in 0..kernel.red_rank {
        g.b.def_var(g.idx[kernel.out_rank + d], zero);
    }
    let qvar = g.b.declare_var(types::I64);
    g.b.def_var(qvar, zero);
    let red_loop = open_loop(g, qvar, red_n);
    let vals = g.values(&kernel.inner, &[])?;
    for (var, r) in accs.iter().zip(&kernel.reductions) {
        let a = g.b.use_var(*var);
        let c = g.combine(r.op, a, vals[r.value], r.dtype)?;
        g.b.def_var(*var, c);
    }
    odometer(g, kernel.out_rank, red_dims);
    let q = g.b.use_var(qvar);
    let q1 = g.b.ins().iadd_imm_s(q, 1);
    g.b.def_var(qvar, q1);
    close_loop(g, red_loop);
    Ok(())
}

/// Blocks of four outputs that [`emit_output_vectorized`] reduces together: 256
/// blocks, 1024 outputs, a 4 KiB page of f32 per reduced position and reduction
/// (64 blocks took 1.6 to 2 times as long for a sum over the outer axis of
/// [256, 256, 256] on the 2-core Zen 3 VM; 1024 blocks no less than 256).
const CHUNK_VECTORS: i64 = 256;

/// Blocks of a chunk that one step of [`reduce_chunk`]'s inner loop reduces (one at a
/// time spent more on the loop and the address arithmetic than on the sums: a sum
/// over the middle axis of [256, 256, 256] went from 9 to 5 ms).
const CHUNK_UNROLL: i64 = 4;

/// Reduces `nv` (1 to [`CHUNK_VECTORS`]) blocks of four neighbouring outputs starting
/// at innermost index `j` and stores their body's results. The reduced positions are
/// the outer loop and the blocks the inner one, with one f32x4 accumulator per block
/// and reduction in a stack buffer: each reduced position reads `4 * nv` contiguous
/// (or equally strided) elements instead of four, which the hardware prefetcher
/// follows where a reduced axis of large stride defeats it. Each lane still
/// accumulates in the reduced positions' order, so the results are the scalar
/// loop's bit for bit.
fn reduce_chunk(
    g: &mut Gen<'_, '_>,
    kernel: &Kernel,
    red_dims: &[CV],
    outputs: &[CV],
    j: CV,
    nv: CV,
    pos_base: CV,
) -> Result<(), String> {
    let l = kernel.out_rank - 1;
    let vt = types::F32X4;
    let flags = MemFlagsData::trusted();
    let bytes = (CHUNK_VECTORS * 16) as u32;
    let mut bufs = Vec::new();
    for r in &kernel.reductions {
        let slot = g.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes, 4));
        let ptr_ty = g.module.target_config().pointer_type();
        let base = g.b.ins().stack_addr(ptr_ty, slot, 0);
        let init = g.constant(r.op.identity_f64(), r.dtype)?;
        let splat = g.b.ins().splat(vt, init);
        bufs.push((base, splat));
    }
    let vvar = g.b.declare_var(types::I64);
    let zero = g.i64c(0);
    // accumulators to the identity
    g.b.def_var(vvar, zero);
    let init = open_loop(g, vvar, nv);
    let v = g.b.use_var(vvar);
    let at = g.b.ins().ishl_imm_s(v, 4);
    for &(base, identity) in &bufs {
        let addr = g.b.ins().iadd(base, at);
        g.b.ins().store(flags, identity, addr, 0);
    }
    let v1 = g.b.ins().iadd_imm_s(v, 1);
    g.b.def_var(vvar, v1);
    close_loop(g, init);
    // reduced positions outside, blocks inside
    let red_n = red_dims.iter().skip(1).fold(red_dims[0], |a, &d| g.b.ins().imul(a, d));
    for d in 0..kernel.red_rank {
        g.b.def_var(g.idx[kernel.out_rank + d], zero);
    }
    let qvar = g.b.declare_var(types::I64);
    g.b.def_var(qvar, zero);
    let red_loop = open_loop(g, qvar, red_n);
    // CHUNK_UNROLL blocks per step (their address arithmetic shared), then one at a time
    g.b.def_var(vvar, zero);
    let unrolled_end = g.b.ins().iadd_imm_s(nv, -(CHUNK_UNROLL - 1));
    for (step, bound) in [(CHUNK_UNROLL, unrolled_end), (1, nv)] {
        let blocks = open_loop(g, vvar, bound);
        let v = g.b.use_var(vvar);
        let lane0 = g.b.ins().imul_imm_s(v, LANES);
        let at = g.b.ins().ishl_imm_s(v, 4);
        let first = g.b.ins().iadd(j, lane0);
        for u in 0..step {
            let jl = g.b.ins().iadd_imm_s(first, u * LANES);
            g.b.def_var(g.idx[l], jl);
            let vals = g.vector_values(&kernel.inner, l)?;
            for (&(base, _), r) in bufs.iter().zip(&kernel.reductions) {
                let addr = g.b.ins().iadd(base, at);
                let a = g.b.ins().load(vt, flags, addr, (16 * u) as i32);
                let c = g.vector_combine(r.op, a, vals[r.value]);
                g.b.ins().store(flags, c, addr, (16 * u) as i32);
            }
        }
        let v1 = g.b.ins().iadd_imm_s(v, step);
        g.b.def_var(vvar, v1);
        close_loop(g, blocks);
    }
    odometer(g, kernel.out_rank, red_dims);
    let q = g.b.use_var(qvar);
    let q1 = g.b.ins().iadd_imm_s(q, 1);
    g.b.def_var(qvar, q1);
    close_loop(g, red_loop);
    // the body reads each block's results as vectors
    g.b.def_var(vvar, zero);
    let stores = open_loop(g, vvar, nv);
    let v = g.b.use_var(vvar);
    let lane0 = g.b.ins().imul_imm_s(v, LANES);
    let jl = g.b.ins().iadd(j, lane0);
    g.b.def_var(g.idx[l], jl);
    let at = g.b.ins().ishl_imm_s(v, 4);
    let results: Vec<CV> = bufs
        .iter()
        .map(|&(base, _)| {
            let addr = g.b.ins().iadd(base, at);
            g.b.ins().load(vt, flags, addr, 0)
        })
        .collect();
    let acc_ids: Vec<usize> =
        (0..kernel.body.len()).filter(|&id| matches!(kernel.body[id].inst, Inst::Acc(_))).collect();
    for &id in &acc_ids {
        let Inst::Acc(k) = kernel.body[id].inst else { continue };
        g.hoisted.insert(id, results[k]);
    }
    let vals = g.vector_values(&kernel.body, l)?;
    for id in &acc_ids {
        g.hoisted.remove(id);
    }
    store_lanes(g, kernel, outputs, &vals, pos_base, jl)?;
    let v1 = g.b.ins().iadd_imm_s(v, 1);
    g.b.def_var(vvar, v1);
    close_loop(g, stores);
    Ok(())
}

/// A reduction kernel whose reduced axis is not contiguous (see
/// [`output_vectorizable`]): the range `[start, end)` of output positions is walked
/// in row segments of the last output dim; each segment runs chunks of blocks of
/// four neighbouring outputs ([`reduce_chunk`]), then the scalar loop for the
/// remainder.
fn emit_output_vectorized(
    g: &mut Gen<'_, '_>,
    kernel: &Kernel,
    start: CV,
    end: CV,
    out_dims: &[CV],
    red_dims: &[CV],
    outputs: &[CV],
) -> Result<(), String> {
    let l = kernel.out_rank - 1;
    let accs: Vec<Variable> = kernel.reductions.iter().map(|r| g.b.declare_var(cty(r.dtype))).collect();
    let seg = RowSegments::open(g, l, start, end, out_dims);
    let (jvar, seg_end, pos_base) = (seg.jvar, seg.seg_end, seg.pos_base);
    // chunks of up to CHUNK_VECTORS blocks of four outputs while j + 4 <= seg_end
    let last_start = g.b.ins().iadd_imm_s(seg_end, -(LANES - 1));
    let vloop = open_loop(g, jvar, last_start);
    let j = g.b.use_var(jvar);
    let left = g.b.ins().isub(seg_end, j);
    let blocks = g.b.ins().sshr_imm_s(left, 2);
    let cap = g.i64c(CHUNK_VECTORS);
    let nv = g.b.ins().smin(blocks, cap);
    reduce_chunk(g, kernel, red_dims, outputs, j, nv, pos_base)?;
    let j = g.b.use_var(jvar);
    let width = g.b.ins().imul_imm_s(nv, LANES);
    let next = g.b.ins().iadd(j, width);
    g.b.def_var(jvar, next);
    close_loop(g, vloop);
    // the scalar remainder, one output at a time
    let sloop = open_loop(g, jvar, seg_end);
    let j = g.b.use_var(jvar);
    g.b.def_var(g.idx[l], j);
    reduce_in_order(g, kernel, red_dims, &accs)?;
    g.b.def_var(g.idx[l], j);
    let vals = g.values(&kernel.body, &accs)?;
    let pos = g.b.ins().iadd(pos_base, j);
    for (o, base) in kernel.outputs.iter().zip(outputs) {
        g.store(*base, o.dtype, pos, vals[o.value])?;
    }
    let j1 = g.b.ins().iadd_imm_s(j, 1);
    g.b.def_var(jvar, j1);
    close_loop(g, sloop);
    seg.close(g, l, out_dims);
    g.b.ins().return_(&[]);
    Ok(())
}

/// 1 when the lanes `[j, j + lanes)` pass `checks` (the innermost index variable
/// is left at `j`). Records each condition's value on them in
/// `g.block_conditions` for the vector body.
fn block_ok(g: &mut Gen<'_, '_>, checks: &BlockChecks, l: usize, j: CV, lanes: CV) -> CV {
    let last = g.b.ins().iadd_imm_s(lanes, -1);
    let j3 = g.b.ins().iadd(j, last);
    let at = |g: &mut Gen<'_, '_>, e: &IndexExpr, i: CV| {
        g.b.def_var(g.idx[l], i);
        let v = g.iexpr(e);
        g.b.ins().icmp_imm_s(IntCC::NotEqual, v, 0)
    };
    let mut ok: Option<CV> = None;
    let mut and = |g: &mut Gen<'_, '_>, c: CV| {
        ok = Some(match ok {
            None => c,
            Some(o) => g.b.ins().band(o, c),
        });
    };
    g.block_conditions.clear();
    let mut ends: HashMap<&IndexExpr, (CV, CV)> = HashMap::new();
    for e in &checks.conditions {
        if !e.mentions(l) {
            let v = at(g, e, j);
            g.block_conditions.insert(e.clone(), v);
            continue;
        }
        // each factor is monotone along the row: true at both ends means true on the
        // block, false at both ends false on the block
        let (mut all_true, mut any_false): (Option<CV>, Option<CV>) = (None, None);
        for f in condition_factors(e) {
            // a factor shared by several guards is evaluated once
            let (a, b) = match ends.get(f) {
                Some(&v) => v,
                None => {
                    let v = (at(g, f, j), at(g, f, j3));
                    ends.insert(f, v);
                    v
                }
            };
            let both = g.b.ins().band(a, b);
            let either = g.b.ins().bor(a, b);
            let neither = g.b.ins().bxor_imm_u(either, 1);
            all_true = Some(match all_true {
                None => both,
                Some(t) => g.b.ins().band(t, both),
            });
            any_false = Some(match any_false {
                None => neither,
                Some(t) => g.b.ins().bor(t, neither),
            });
        }
        let (Some(t), Some(f)) = (all_true, any_false) else { continue };
        let uniform = g.b.ins().bor(t, f);
        and(g, uniform);
        g.block_conditions.insert(e.clone(), t);
    }
    for (e, guard) in &checks.contiguous {
        g.b.def_var(g.idx[l], j);
        let a = g.iexpr(e);
        g.b.def_var(g.idx[l], j3);
        let b = g.iexpr(e);
        let d = g.b.ins().isub(b, a);
        let mut c = g.b.ins().icmp(IntCC::Equal, d, last);
        if let Some(held) = guard.as_ref().and_then(|gd| g.block_conditions.get(gd).copied()) {
            // a load that does not happen need not be contiguous
            let skipped = g.b.ins().bxor_imm_u(held, 1);
            c = g.b.ins().bor(c, skipped);
        }
        and(g, c);
    }
    g.b.def_var(g.idx[l], j);
    ok.unwrap_or_else(|| g.b.ins().iconst(types::I8, 1))
}

/// Which values stay the same along the innermost output index `l` and are worth
/// computing once per row: unguarded loads whose offset does not mention `l`, index
/// conditions that do not, and operations on such values (constants and parameters
/// are hoisted out of every loop already and do not count as work here).
fn row_invariant(vals: &[Value], l: usize) -> Vec<bool> {
    let mut inv = vec![false; vals.len()];
    let fixed = |inv: &[bool], i: usize| inv[i] || matches!(vals[i].inst, Inst::Const(_) | Inst::Param(_));
    for (id, v) in vals.iter().enumerate() {
        inv[id] = match &v.inst {
            Inst::Load { offset, guard: None, .. } => !offset.mentions(l),
            Inst::Index(e) => !e.mentions(l),
            Inst::Unary(_, a) => inv[*a],
            Inst::Binary(_, a, b) => (inv[*a] || inv[*b]) && fixed(&inv, *a) && fixed(&inv, *b),
            Inst::Where(c, a, b) => (inv[*c] || inv[*a] || inv[*b]) && [*c, *a, *b].iter().all(|&i| fixed(&inv, i)),
            _ => false,
        };
    }
    inv
}

/// The scalar body at innermost index `j` (the variable `jvar`), stored at output
/// position `pos_base + j`; then `j` advances by one.
fn scalar_step(
    g: &mut Gen<'_, '_>,
    kernel: &Kernel,
    outputs: &[CV],
    jvar: Variable,
    pos_base: CV,
) -> Result<(), String> {
    let j = g.b.use_var(jvar);
    g.b.def_var(g.idx[kernel.out_rank - 1], j);
    let vals = g.values(&kernel.body, &[])?;
    let pos = g.b.ins().iadd(pos_base, j);
    for (o, base) in kernel.outputs.iter().zip(outputs) {
        match o.store {
            Store::Dense => g.store(*base, o.dtype, pos, vals[o.value])?,
            Store::Scatter { .. } => g.scatter_store(o, *base, vals[o.value], &vals)?,
        }
    }
    let j1 = g.b.ins().iadd_imm_s(j, 1);
    g.b.def_var(jvar, j1);
    Ok(())
}

/// Element-wise kernel whose innermost loop runs on f32x4 vectors: the range
/// `[start, end)` is walked in row segments; each segment runs vectors of four lanes,
/// then the scalar body for the remainder.
fn emit_vectorized(
    g: &mut Gen<'_, '_>,
    kernel: &Kernel,
    start: CV,
    end: CV,
    out_dims: &[CV],
    outputs: &[CV],
) -> Result<(), String> {
    let l = kernel.out_rank - 1;
    // splat constants and parameters once, outside the loops
    for (id, v) in kernel.body.iter().enumerate() {
        if matches!(v.inst, Inst::Const(_) | Inst::Param(_)) {
            // `vector_values` looks hoisted values up by position in the slice it is
            // given: with a one-value slice that position is 0, so hide the map.
            let hoisted = std::mem::take(&mut g.hoisted);
            let splat = g.vector_values(&kernel.body[id..=id], l);
            g.hoisted = hoisted;
            g.hoisted.insert(id, splat?[0]);
        }
    }
    let seg = RowSegments::open(g, l, start, end, out_dims);
    let (jvar, seg_end, pos_base) = (seg.jvar, seg.seg_end, seg.pos_base);

    // values that do not change along the row (per-channel statistics, say) once
    // per row segment, before its vector loop
    let invariant = row_invariant(&kernel.body, l);
    let per_row = g.vector_values_picked(&kernel.body, l, &|id| invariant[id])?;
    let row_hoisted: Vec<usize> =
        (0..kernel.body.len()).filter(|&id| invariant[id] && !g.hoisted.contains_key(&id)).collect();
    for &id in &row_hoisted {
        let v = per_row[id].ok_or("a row-invariant value was not emitted")?;
        g.hoisted.insert(id, v);
    }

    // vectors while j + LANES <= seg_end; the hoisted values that are not constants
    // are pinned outside the loop (see `pin_before_loop`)
    let last_start = g.b.ins().iadd_imm_s(seg_end, -(LANES - 1));
    let pinned_ids: Vec<usize> = {
        let mut ids: Vec<usize> =
            g.hoisted.keys().copied().filter(|&id| !matches!(kernel.body[id].inst, Inst::Const(_))).collect();
        ids.sort_unstable();
        ids
    };
    let outside: Vec<CV> = pinned_ids.iter().map(|id| g.hoisted[id]).collect();
    let slots = pin_before_loop(g, &outside);
    let reload = |g: &mut Gen<'_, '_>| {
        for ((&id, &slot), &v) in pinned_ids.iter().zip(&slots).zip(&outside) {
            let t = g.b.func.dfg.value_type(v);
            let v = g.b.ins().stack_load(types::I64, t, slot, 0);
            g.hoisted.insert(id, v);
        }
    };
    let checks = BlockChecks::of(&kernel.body, l);
    if checks.is_empty() && kernel.body.len() <= UNROLL_MAX_VALUES {
        // BODY_UNROLL vectors per step while j + BODY_UNROLL * LANES <= seg_end
        let last_unrolled = g.b.ins().iadd_imm_s(seg_end, -(BODY_UNROLL * LANES - 1));
        let uloop = open_loop(g, jvar, last_unrolled);
        reload(g);
        let j = g.b.use_var(jvar);
        for u in 0..BODY_UNROLL {
            let ju = g.b.ins().iadd_imm_s(j, u * LANES);
            g.b.def_var(g.idx[l], ju);
            let vals = g.vector_values(&kernel.body, l)?;
            store_lanes(g, kernel, outputs, &vals, pos_base, ju)?;
        }
        let next = g.b.ins().iadd_imm_s(j, BODY_UNROLL * LANES);
        g.b.def_var(jvar, next);
        close_loop(g, uloop);
    }
    let vloop = open_loop(g, jvar, last_start);
    reload(g);
    let j = g.b.use_var(jvar);
    g.b.def_var(g.idx[l], j);
    if checks.is_empty() {
        let vals = g.vector_values(&kernel.body, l)?;
        store_lanes(g, kernel, outputs, &vals, pos_base, j)?;
        let j4 = g.b.ins().iadd_imm_s(j, LANES);
        g.b.def_var(jvar, j4);
    } else {
        emit_checked_blocks(g, kernel, &checks, outputs, (jvar, seg_end, pos_base), vloop.0)?;
    }
    close_loop(g, vloop);
    for (&id, &v) in pinned_ids.iter().zip(&outside) {
        g.hoisted.insert(id, v);
    }
    for id in row_hoisted {
        g.hoisted.remove(&id);
    }

    // the scalar remainder
    let sloop = open_loop(g, jvar, seg_end);
    scalar_step(g, kernel, outputs, jvar, pos_base)?;
    close_loop(g, sloop);

    seg.close(g, l, out_dims);
    g.b.ins().return_(&[]);
    Ok(())
}

/// Vectors per step of an element-wise kernel's unrolled loop (see
/// [`emit_vectorized`]).
const BODY_UNROLL: i64 = 4;

/// Most values in a body that [`emit_vectorized`] unrolls: the cheap bodies (copies,
/// casts, gathers, short chains) whose loop and address arithmetic cost as much as
/// their work; a long body would only grow the code.
const UNROLL_MAX_VALUES: usize = 24;

/// Most lanes that one run-time check of a vector loop's [`BlockChecks`] covers
/// when they pass on the whole span (eight vectors): the checks cost about as much
/// as the body of a reflection's gradient, so a row checked once per span instead
/// of once per vector runs about twice as fast.
const CHECKED_SPAN: i64 = 8 * LANES;

/// One step of a checked vector loop at `j` (the loop variable `jvar`): when the
/// span of whole vectors from `j` (up to [`CHECKED_SPAN`] lanes, at most the rest
/// of the row segment) is longer than one vector and passes `checks`, the vector
/// body runs on all of it; else when the four lanes from `j` pass, on those; else
/// the scalar body runs at `j` alone. Then back to `header`. The checks are sound
/// on any span: conditions are monotone along the row, and an offset that advances
/// by at most one per step and by `span - 1` over the span advances by exactly one
/// at every step. (A short row with a border on each side, 32 columns of a
/// reflection's gradient, say: two scalar columns, one span, two scalar columns.)
fn emit_checked_blocks(
    g: &mut Gen<'_, '_>,
    kernel: &Kernel,
    checks: &BlockChecks,
    outputs: &[CV],
    (jvar, seg_end, pos_base): (Variable, CV, CV),
    header: cranelift_codegen::ir::Block,
) -> Result<(), String> {
    let l = kernel.out_rank - 1;
    let j = g.b.use_var(jvar);
    // each condition's value on the checked lanes, and where the vectors stop
    let cond_vars: Vec<(IndexExpr, Variable)> =
        checks.conditions.iter().map(|e| (e.clone(), g.b.declare_var(types::I8))).collect();
    let run_end = g.b.declare_var(types::I64);
    let (span, one, run, scalar) = (g.b.create_block(), g.b.create_block(), g.b.create_block(), g.b.create_block());
    let check = |g: &mut Gen<'_, '_>, lanes: CV, pass: cranelift_codegen::ir::Block, fail| {
        let ok = block_ok(g, checks, l, j, lanes);
        for (e, var) in &cond_vars {
            let v = g.block_conditions.get(e).copied().ok_or("a condition along the row was not checked")?;
            g.b.def_var(*var, v);
        }
        let end = g.b.ins().iadd(j, lanes);
        g.b.def_var(run_end, end);
        g.b.ins().brif(ok, pass, &[], fail, &[]);
        Ok::<(), String>(())
    };
    // whole vectors up to the span or the segment's end (at least one: the loop
    // runs while j + 4 <= seg_end)
    let left = g.b.ins().isub(seg_end, j);
    let most = g.i64c(CHECKED_SPAN);
    let capped = g.b.ins().smin(left, most);
    let lanes = g.b.ins().band_imm_s(capped, !(LANES - 1));
    let several = g.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, lanes, LANES);
    g.b.ins().brif(several, span, &[], one, &[]);
    g.b.seal_block(span);
    g.b.switch_to_block(span);
    check(g, lanes, run, one)?;
    g.b.seal_block(one);
    g.b.switch_to_block(one);
    let four = g.i64c(LANES);
    check(g, four, run, scalar)?;
    g.b.seal_block(run);
    g.b.seal_block(scalar);

    // the vectors of the checked lanes, with the conditions' values found above
    g.b.switch_to_block(run);
    let end = g.b.use_var(run_end);
    let inner = open_loop(g, jvar, end);
    let jv = g.b.use_var(jvar);
    g.b.def_var(g.idx[l], jv);
    g.block_conditions.clear();
    for (e, var) in &cond_vars {
        let v = g.b.use_var(*var);
        g.block_conditions.insert(e.clone(), v);
    }
    let vals = g.vector_values(&kernel.body, l)?;
    store_lanes(g, kernel, outputs, &vals, pos_base, jv)?;
    let j4 = g.b.ins().iadd_imm_s(jv, LANES);
    g.b.def_var(jvar, j4);
    close_loop(g, inner);
    g.b.ins().jump(header, &[]);

    g.b.switch_to_block(scalar);
    scalar_step(g, kernel, outputs, jvar, pos_base)
}

/// Stores the f32x4 output values `vals` (by body value) of positions
/// `pos_base + j .. + 4` into every dense output (f32, or f16 and bf16 rounded once
/// and written as four 16-bit lanes).
fn store_lanes(
    g: &mut Gen<'_, '_>,
    kernel: &Kernel,
    outputs: &[CV],
    vals: &[CV],
    pos_base: CV,
    j: CV,
) -> Result<(), String> {
    let pos = g.b.ins().iadd(pos_base, j);
    let flags = MemFlagsData::new().with_notrap();
    for (o, base) in kernel.outputs.iter().zip(outputs) {
        if matches!(o.store, Store::Scatter { .. }) {
            g.scatter_store(o, *base, vals[o.value], vals)?;
            continue;
        }
        let scaled = g.b.ins().imul_imm_s(pos, o.dtype.size_in_bytes() as i64);
        let addr = g.b.ins().iadd(*base, scaled);
        if o.dtype == DType::F32 {
            g.b.ins().store(flags, vals[o.value], addr, 0);
        } else {
            // the 16-bit results in the low halves of i32 lanes, packed into the
            // low 64 bits of an i16x8 (no lane saturates: each is below 2^16); the
            // output of a cast to its dtype rounds the cast's operand (rounding
            // twice gives the same bits, one rounding is half the work)
            let v = match kernel.body[o.value].inst {
                Inst::Cast(a) if kernel.body[o.value].dtype == o.dtype => vals[a],
                _ => vals[o.value],
            };
            let bits = g.f32_to_half_bits(v, o.dtype);
            let packed = g.b.ins().unarrow(bits, bits);
            let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
            let wide = g.b.ins().bitcast(types::I64X2, le, packed);
            let low = g.b.ins().extractlane(wide, 0);
            g.b.ins().store(flags, low, addr, 0);
        }
    }
    Ok(())
}

/// The loop over row segments of the output range `[start, end)`: each segment is
/// the part of one row of the innermost output index `l` inside the range, walked by
/// `jvar` from the row position it starts at to `seg_end`; output position of `j` is
/// `pos_base + j`.
struct RowSegments {
    pvar: Variable,
    jvar: Variable,
    rows: (cranelift_codegen::ir::Block, cranelift_codegen::ir::Block),
    len: CV,
    seg_end: CV,
    pos_base: CV,
}

impl RowSegments {
    /// Opens the loop and the first segment (the builder is left inside it).
    fn open(g: &mut Gen<'_, '_>, l: usize, start: CV, end: CV, out_dims: &[CV]) -> RowSegments {
        let pvar = g.b.declare_var(types::I64);
        g.b.def_var(pvar, start);
        let jvar = g.b.declare_var(types::I64);
        let rows = open_loop(g, pvar, end);
        // one row segment: the innermost index runs from il to il + len
        let il = g.b.use_var(g.idx[l]);
        let p = g.b.use_var(pvar);
        let row_left = g.b.ins().isub(out_dims[l], il);
        let range_left = g.b.ins().isub(end, p);
        let len = g.b.ins().smin(row_left, range_left);
        let seg_end = g.b.ins().iadd(il, len);
        // output position of lane 0 = p + (j - il) = j + (p - il)
        let pos_base = g.b.ins().isub(p, il);
        g.b.def_var(jvar, il);
        RowSegments { pvar, jvar, rows, len, seg_end, pos_base }
    }

    /// Moves to the next row (innermost index back to 0, carry into the outer
    /// dims) and closes the loop.
    fn close(self, g: &mut Gen<'_, '_>, l: usize, out_dims: &[CV]) {
        let p = g.b.use_var(self.pvar);
        let p2 = g.b.ins().iadd(p, self.len);
        g.b.def_var(self.pvar, p2);
        let zero = g.i64c(0);
        g.b.def_var(g.idx[l], zero);
        odometer(g, 0, &out_dims[..l]);
        close_loop(g, self.rows);
    }
}
