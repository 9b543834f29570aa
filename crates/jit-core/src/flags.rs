//! Run-time switches: which backend computes, and whether the planner fuses.
//!
//! Defaults come from the environment at first use (`JIT_BACKEND=cpu|reference|interpreter|cuda`,
//! `JIT_FUSION=0|1`, `JIT_DUMP=1` to print every kernel's IR); [`set_flags`] changes
//! them for the process and [`with_flags`] for the current thread inside a scope.

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};

/// The backend that runs realisations on the `cpu` device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The meta-op interpreter in f64 (the oracle; never fuses).
    Reference,
    /// The fusion planner and CPU kernels compiled with Cranelift.
    Cpu,
    /// The fusion planner and the portable IR executor (no code generation; for
    /// debugging a kernel and checking the compiler).
    Interpreter,
    /// The fusion planner and CUDA kernels on device 0. Values stay on the device
    /// between kernels and are copied to the host when read; library operations
    /// without a device implementation run on the host.
    Cuda,
}

/// The switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    /// Backend for the `cpu` device.
    pub backend: Backend,
    /// Fuse meta-ops into kernels (`false`: every meta-op is its own kernel).
    pub fusion: bool,
    /// Print the IR of every kernel that runs.
    pub dump: bool,
}

fn env_flags() -> Flags {
    let var = |k: &str| std::env::var(k).ok().map(|s| s.trim().to_ascii_lowercase());
    let backend = match var("JIT_BACKEND").as_deref() {
        Some("reference") | Some("ref") => Backend::Reference,
        Some("interpreter") | Some("interp") => Backend::Interpreter,
        Some("cuda") => Backend::Cuda,
        _ => Backend::Cpu,
    };
    let fusion = !matches!(var("JIT_FUSION").as_deref(), Some("0") | Some("false") | Some("off"));
    let dump = matches!(var("JIT_DUMP").as_deref(), Some("1") | Some("true") | Some("on"));
    Flags { backend, fusion, dump }
}

fn global() -> &'static Mutex<Flags> {
    static G: OnceLock<Mutex<Flags>> = OnceLock::new();
    G.get_or_init(|| Mutex::new(env_flags()))
}

thread_local! {
    static LOCAL: Cell<Option<Flags>> = const { Cell::new(None) };
}

/// The switches in force on this thread.
pub fn flags() -> Flags {
    LOCAL.with(Cell::get).unwrap_or_else(|| *global().lock().unwrap_or_else(|e| e.into_inner()))
}

/// Sets the process-wide switches (threads inside [`with_flags`] keep theirs).
pub fn set_flags(f: Flags) {
    *global().lock().unwrap_or_else(|e| e.into_inner()) = f;
}

/// Runs `body` with `f` in force on this thread, restoring the previous switches
/// afterwards (also when `body` panics).
pub fn with_flags<R>(f: Flags, body: impl FnOnce() -> R) -> R {
    scoped(&LOCAL, f, body)
}

/// Runs `body` with the thread-local override `local` set to `value`, restoring
/// the previous override afterwards (also when `body` panics).
fn scoped<T: Copy + 'static, R>(
    local: &'static std::thread::LocalKey<Cell<Option<T>>>,
    value: T,
    body: impl FnOnce() -> R,
) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<Cell<Option<T>>>, Option<T>);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|l| l.set(self.1));
        }
    }
    let _restore = Restore(local, local.with(|l| l.replace(Some(value))));
    body()
}

fn row_groups_global() -> &'static std::sync::atomic::AtomicBool {
    static G: OnceLock<std::sync::atomic::AtomicBool> = OnceLock::new();
    G.get_or_init(|| {
        let off = std::env::var("JIT_ROW_GROUPS")
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off"));
        std::sync::atomic::AtomicBool::new(!off)
    })
}

thread_local! {
    static ROW_GROUPS_LOCAL: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether the CPU backend runs consecutive fused kernels that share rows (softmax's
/// maximum, exponential, sum and division; a norm's statistics and its output) as a
/// row group, a block of rows at a time through all of them, instead of one whole
/// kernel after the other (see [`kernels::row_group`]). On by default;
/// `JIT_ROW_GROUPS=0` turns it off. The results are the same either way, bit for
/// bit; only the order of the work and the memory traffic change. Never with fusion
/// off (the unfused baseline runs every meta-op alone).
pub fn row_groups() -> bool {
    ROW_GROUPS_LOCAL.with(Cell::get).unwrap_or_else(|| row_groups_global().load(std::sync::atomic::Ordering::Relaxed))
}

/// Sets [`row_groups`] for the process (threads inside [`with_row_groups`] keep
/// theirs).
pub fn set_row_groups(on: bool) {
    row_groups_global().store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `body` with [`row_groups`] set to `on` on this thread, restoring it
/// afterwards (also when `body` panics).
pub fn with_row_groups<R>(on: bool, body: impl FnOnce() -> R) -> R {
    scoped(&ROW_GROUPS_LOCAL, on, body)
}
