//! Realisation: walks the pending sub-graph behind the requested values, runs each
//! node on the backend, frees intermediates as soon as their last consumer has run,
//! and stores the results in the requested nodes (which then drop their inputs).

use crate::device::Device;
use crate::error::{Error, Result};
use crate::flags::{flags, Backend};
use crate::planner::{self, Step};
use crate::var::{State, Var};
use kernels::{Buffer, Element, ExternOp, HostBuffer, MetaOp};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static KERNEL_LAUNCHES: AtomicU64 = AtomicU64::new(0);
static EXTERN_CALLS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static ROW_GROUPS_RUN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Number of row groups (see [`crate::row_groups`]) that realisations on this
/// thread have run.
pub fn row_groups_run() -> u64 {
    ROW_GROUPS_RUN.with(std::cell::Cell::get)
}

/// Number of kernels run by the CPU backends in this process (meta-ops on the
/// reference backend are not counted).
pub fn kernel_launches() -> u64 {
    KERNEL_LAUNCHES.load(Ordering::Relaxed)
}

/// The steps that realising `vars` would run with the current fusion setting.
fn planned_steps(vars: &[Var]) -> Result<Vec<Step>> {
    let order = schedule(vars);
    let targets: HashSet<u64> = vars.iter().map(Var::id).collect();
    planner::plan(&order, &targets, flags().fusion)
}

/// The kernels that realising `vars` would run with the current fusion setting, as
/// IR (for tools that compile or inspect them).
pub fn planned_kernel_ir(vars: &[Var]) -> Result<Vec<kernels::ir::Kernel>> {
    Ok(planned_steps(vars)?
        .into_iter()
        .filter_map(|s| match s {
            Step::Kernel { kernel, .. } => Some(*kernel),
            Step::Alias { .. } | Step::Extern { .. } => None,
        })
        .collect())
}

/// The library calls that realising `vars` would make with the current fusion
/// setting, in order, without running anything.
pub fn planned_externs(vars: &[Var]) -> Result<Vec<ExternOp>> {
    Ok(planned_steps(vars)?
        .into_iter()
        .filter_map(|s| match s {
            Step::Extern { op, .. } => Some(op),
            Step::Alias { .. } | Step::Kernel { .. } => None,
        })
        .collect())
}

/// Number of extern (library) calls made by the compiled backends in this process.
pub fn extern_calls() -> u64 {
    EXTERN_CALLS.load(Ordering::Relaxed)
}

/// The kernels (canonical IR text) that realising `vars` would run with the current
/// fusion setting, without running them. Realised inputs are not recomputed.
pub fn planned_kernels(vars: &[Var]) -> Result<Vec<String>> {
    Ok(planned_kernel_ir(vars)?.iter().map(ToString::to_string).collect())
}

/// Number of data buffers alive in the process (see [`kernels::live_buffers`]).
pub fn live_buffers() -> usize {
    kernels::live_buffers()
}

/// Bytes held by the data buffers alive in the process (see
/// [`kernels::live_bytes`]); what the [host memory limit](crate::set_host_memory_limit)
/// counts.
pub fn live_bytes() -> usize {
    kernels::live_bytes()
}

/// The pending nodes behind `targets`, inputs before consumers.
fn schedule(targets: &[Var]) -> Vec<Var> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative post-order DFS: (node, inputs already pushed)
    let mut stack: Vec<(Var, bool)> = targets.iter().rev().map(|v| (v.clone(), false)).collect();
    while let Some((v, expanded)) = stack.pop() {
        if expanded {
            order.push(v);
            continue;
        }
        if seen.contains(&v.id()) {
            continue;
        }
        let inputs = match &*v.state() {
            State::Pending { inputs, .. } => inputs.clone(),
            State::Ready { .. } => continue,
        };
        seen.insert(v.id());
        stack.push((v, true));
        for i in inputs.into_iter().rev() {
            if !seen.contains(&i.id()) {
                stack.push((i, false));
            }
        }
    }
    order
}

fn check_device(v: &Var) -> Result<()> {
    let addressable = crate::shape::numel(v.shape())
        .and_then(|n| n.checked_mul(v.dtype().size_in_bytes()))
        .is_some_and(|b| b <= isize::MAX as usize);
    if !addressable {
        return Err(Error::shape(
            v.op_name(),
            format!("a {} value of shape {:?} has more elements than this machine can address", v.dtype(), v.shape()),
        ));
    }
    usable(v.device(), "realize")
}

/// Ok when values can be computed on `device` in this build; else the reason.
fn usable(device: Device, op: &str) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(n) => {
            let why = match kernels::cuda::probe() {
                Err(e) => e.to_string(),
                Ok(info) if n >= info.device_count => {
                    format!("the driver reports {} CUDA device(s), so cuda:{n} does not exist", info.device_count)
                }
                Ok(_) => "values are not placed one by one in this version: JIT_BACKEND=cuda keeps every value on the GPU and copies it to the host when read; select the CPU with JIT_DEVICE=cpu".to_string(),
            };
            Err(Error::Device { op: op.into(), msg: format!("cannot run on cuda:{n}: {why}") })
        }
    }
}

/// Computes all `vars` (and only what they need), in one walk of the graph.
pub fn realize(vars: &[Var]) -> Result<()> {
    let order = schedule(vars);
    if order.is_empty() {
        return Ok(());
    }
    for v in &order {
        check_device(v)?;
    }
    let targets: HashSet<u64> = vars.iter().map(Var::id).collect();
    let f = flags();
    match f.backend {
        Backend::Reference => run_reference(order, &targets),
        Backend::Cpu | Backend::Interpreter | Backend::Cuda => run_planned(&order, &targets, f),
    }
}

fn data_of(v: &Var, values: &HashMap<u64, Arc<Buffer>>) -> Result<Arc<Buffer>> {
    let ready = match &*v.state() {
        State::Ready { data, .. } => Some(data.clone()),
        State::Pending { .. } => None,
    };
    ready.or_else(|| values.get(&v.id()).cloned()).ok_or_else(|| {
        Error::Kernel(kernels::KernelError::Internal {
            op: v.op_name().into(),
            reason: format!("value {} was not computed before its consumer", v.id()),
        })
    })
}

/// Runs the planner's kernels in order, freeing each intermediate after its last
/// reader.
fn run_planned(order: &[Var], targets: &HashSet<u64>, f: crate::flags::Flags) -> Result<()> {
    let planning = std::time::Instant::now();
    let steps = planner::plan(order, targets, f.fusion)?;
    let plan_ms = planning.elapsed().as_secs_f64() * 1e3;
    let mut remaining: HashMap<u64, usize> = HashMap::new();
    for s in &steps {
        match s {
            Step::Kernel { inputs, .. } => {
                for i in inputs {
                    *remaining.entry(i.id()).or_insert(0) += 1;
                }
            }
            Step::Alias { src, .. } => *remaining.entry(src.id()).or_insert(0) += 1,
            Step::Extern { inputs, .. } => {
                for i in inputs {
                    *remaining.entry(i.id()).or_insert(0) += 1;
                }
            }
        }
    }
    let mut values: HashMap<u64, Arc<Buffer>> = HashMap::new();
    let put = |v: &Var, data: Arc<Buffer>, remaining: &HashMap<u64, usize>, values: &mut HashMap<u64, Arc<Buffer>>| {
        put_value(targets, v, data, remaining, values)
    };
    let profile = profiling();
    let mut timings: Vec<(f64, String)> = Vec::new();
    let grouping = f.backend == Backend::Cpu
        && f.fusion
        && crate::flags::row_groups()
        && !crosscheck()
        && CAPTURE.with(|c| c.borrow().is_none());
    let mut next = 0;
    while next < steps.len() {
        let started = std::time::Instant::now();
        if grouping {
            if let Some((len, label)) = run_row_group(&steps[next..], targets, &mut remaining, &mut values, f.dump)? {
                next += len;
                if profile {
                    timings.push((started.elapsed().as_secs_f64() * 1e3, label));
                }
                continue;
            }
        }
        let step = &steps[next];
        next += 1;
        let label = if profile { step_label(step) } else { String::new() };
        let read: Vec<Var> = match step {
            Step::Kernel { kernel, launch, inputs, outputs } => {
                let data = inputs.iter().map(|i| data_of(i, &values)).collect::<Result<Vec<_>>>()?;
                let outs: Vec<Buffer> = if f.backend == Backend::Cuda {
                    if f.dump {
                        eprintln!(
                            "[jit] cuda kernel {launch:?}\n{kernel}\n{}",
                            kernels::cuda::emit::kernel_source(kernel, "kernel")
                        );
                    }
                    let ins: Vec<&Buffer> = data.iter().map(|d| &**d).collect();
                    let outs = kernels::cuda::runtime::run(kernel, launch, &ins)?;
                    if crosscheck() {
                        let hosts = data.iter().map(|d| d.host()).collect::<std::result::Result<Vec<_>, _>>()?;
                        let got = outs.iter().map(|o| o.host().cloned()).collect::<std::result::Result<Vec<_>, _>>()?;
                        crosscheck_kernel(kernel, launch, &hosts, &got)?;
                    }
                    outs
                } else {
                    let hosts = data.iter().map(|d| d.host()).collect::<std::result::Result<Vec<_>, _>>()?;
                    let outs = if f.backend == Backend::Interpreter {
                        if f.dump {
                            eprintln!("[jit] interpreting kernel {launch:?}\n{kernel}");
                        }
                        kernels::exec::run(kernel, launch, &hosts)?
                    } else {
                        kernels::cpu::run_with(kernel, launch, &hosts, f.dump)?
                    };
                    if f.backend != Backend::Interpreter && crosscheck() {
                        crosscheck_kernel(kernel, launch, &hosts, &outs)?;
                    }
                    CAPTURE.with(|c| {
                        if let Some(runs) = c.borrow_mut().as_mut() {
                            runs.push(CapturedKernel {
                                kernel: (**kernel).clone(),
                                launch: launch.clone(),
                                inputs: hosts.iter().map(|h| (*h).clone()).collect(),
                                outputs: outs.clone(),
                            });
                        }
                    });
                    outs.into_iter().map(Buffer::new).collect()
                };
                KERNEL_LAUNCHES.fetch_add(1, Ordering::Relaxed);
                drop(data);
                for (o, buf) in outputs.iter().zip(outs) {
                    put(o, Arc::new(buf), &remaining, &mut values);
                }
                inputs.clone()
            }
            Step::Alias { out, src } => {
                let d = data_of(src, &values)?;
                put(out, d, &remaining, &mut values);
                vec![src.clone()]
            }
            Step::Extern { op, inputs, out } => {
                let data = inputs.iter().map(|i| data_of(i, &values)).collect::<Result<Vec<_>>>()?;
                let on_device = if f.backend == Backend::Cuda {
                    let bufs: Vec<(&Buffer, &[usize])> =
                        data.iter().zip(inputs).map(|(d, i)| (&**d, i.shape())).collect();
                    kernels::cuda::blas::run_extern(op, &bufs, out.dtype())?
                } else {
                    None
                };
                if f.dump {
                    let place = if on_device.is_some() { "device" } else { "host" };
                    eprintln!(
                        "[jit] extern {op:?} on the {place}, {:?}",
                        inputs.iter().map(Var::shape).collect::<Vec<_>>()
                    );
                }
                let result = match on_device {
                    Some(b) => b,
                    None => {
                        let args: Vec<(&HostBuffer, &[usize])> =
                            data.iter().zip(inputs).map(|(d, i)| Ok((d.host()?, i.shape()))).collect::<Result<_>>()?;
                        Buffer::new(op.run_cpu(&args, out.dtype())?)
                    }
                };
                EXTERN_CALLS.fetch_add(1, Ordering::Relaxed);
                drop(data);
                put(out, Arc::new(result), &remaining, &mut values);
                inputs.clone()
            }
        };
        if profile {
            // a launch only queues the work: wait for it, so that each step is timed
            if f.backend == Backend::Cuda {
                kernels::cuda::runtime::synchronize_if_started()?;
            }
            timings.push((started.elapsed().as_secs_f64() * 1e3, label));
        }
        for i in read {
            if let Some(r) = remaining.get_mut(&i.id()) {
                *r -= 1;
                if *r == 0 {
                    values.remove(&i.id());
                }
            }
        }
    }
    if profile {
        report_profile(order.len(), plan_ms, timings);
    }
    Ok(())
}

/// Records a computed value: in its node when it was requested, and for later
/// steps while some still read it.
fn put_value(
    targets: &HashSet<u64>,
    v: &Var,
    data: Arc<Buffer>,
    remaining: &HashMap<u64, usize>,
    values: &mut HashMap<u64, Arc<Buffer>>,
) {
    if targets.contains(&v.id()) {
        *v.state() = State::Ready { data: data.clone(), op: v.op_name() };
    }
    if remaining.get(&v.id()).copied().unwrap_or(0) > 0 {
        values.insert(v.id(), data);
    }
}

/// Runs the kernels at the start of `steps` as a row group when they form one (see
/// [`kernels::row_group`]): returns how many steps ran and a profile label, or
/// `None` (nothing ran) when the next steps do not group.
fn run_row_group(
    steps: &[Step],
    targets: &HashSet<u64>,
    remaining: &mut HashMap<u64, usize>,
    values: &mut HashMap<u64, Arc<Buffer>>,
    dump: bool,
) -> Result<Option<(usize, String)>> {
    use kernels::row_group::{self, Member, Source};
    let window: Vec<(&kernels::ir::Kernel, &kernels::ir::Launch, &[Var], &[Var])> = steps
        .iter()
        .take(row_group::MAX_MEMBERS)
        .map_while(|s| match s {
            Step::Kernel { kernel, launch, inputs, outputs } => Some((&**kernel, launch, &inputs[..], &outputs[..])),
            Step::Alias { .. } | Step::Extern { .. } => None,
        })
        .collect();
    if window.len() < 2 {
        return Ok(None);
    }
    // where each member's inputs come from: an earlier member, or outside
    let mut produced: HashMap<u64, (usize, usize)> = HashMap::new();
    let mut external: Vec<Var> = vec![];
    let mut members = vec![];
    for (k, &(kernel, launch, inputs, outputs)) in window.iter().enumerate() {
        let sources = inputs
            .iter()
            .map(|v| match produced.get(&v.id()) {
                Some(&(member, output)) => Source::Member { member, output },
                None => Source::Input(external.iter().position(|e| e.id() == v.id()).unwrap_or_else(|| {
                    external.push(v.clone());
                    external.len() - 1
                })),
            })
            .collect();
        for (o, v) in outputs.iter().enumerate() {
            produced.insert(v.id(), (k, o));
        }
        members.push(Member { kernel, launch, sources });
    }
    let Some(group) = row_group::find(&members, row_group::min_rows()) else {
        return Ok(None);
    };
    let (window, members) = (&window[..group.len], &members[..group.len]);
    // an output is kept whole when it was requested or a later step reads it
    let mut reads_inside: HashMap<u64, usize> = HashMap::new();
    for (_, _, inputs, _) in window {
        for i in inputs.iter() {
            *reads_inside.entry(i.id()).or_insert(0) += 1;
        }
    }
    let keep: Vec<Vec<bool>> = window
        .iter()
        .map(|(_, _, _, outputs)| {
            outputs
                .iter()
                .map(|v| {
                    targets.contains(&v.id())
                        || remaining.get(&v.id()).copied().unwrap_or(0)
                            > reads_inside.get(&v.id()).copied().unwrap_or(0)
                })
                .collect()
        })
        .collect();
    // inputs are numbered in order of first use, so the group's come first
    let n_external = members
        .iter()
        .flat_map(|m| &m.sources)
        .filter_map(|s| match s {
            Source::Input(i) => Some(i + 1),
            Source::Member { .. } => None,
        })
        .max()
        .unwrap_or(0);
    let data = external[..n_external].iter().map(|v| data_of(v, values)).collect::<Result<Vec<_>>>()?;
    let hosts = data.iter().map(|d| d.host()).collect::<std::result::Result<Vec<_>, _>>()?;
    let outs = row_group::run_cpu(&group, members, &hosts, &keep, dump)?;
    KERNEL_LAUNCHES.fetch_add(group.len as u64, Ordering::Relaxed);
    ROW_GROUPS_RUN.with(|c| c.set(c.get() + 1));
    drop(hosts);
    drop(data);
    for ((_, _, _, outputs), bufs) in window.iter().zip(outs) {
        for (v, b) in outputs.iter().zip(bufs) {
            if let Some(b) = b {
                put_value(targets, v, Arc::new(Buffer::new(b)), remaining, values);
            }
        }
    }
    for (_, _, inputs, _) in window {
        for i in inputs.iter() {
            if let Some(r) = remaining.get_mut(&i.id()) {
                *r -= 1;
                if *r == 0 {
                    values.remove(&i.id());
                }
            }
        }
    }
    let label = if profiling() {
        let shapes: Vec<String> =
            window.iter().map(|(_, l, _, _)| format!("{:?}/{:?}", l.out_shape, l.red_shape)).collect();
        format!("row group of {} kernels, {} rows: {}", group.len, group.rows, shapes.join(", "))
    } else {
        String::new()
    };
    Ok(Some((group.len, label)))
}

/// Waits until every computation queued on the GPU has finished, like
/// `torch.cuda.synchronize()` (Jittor: `jt.sync_all(True)`). On the CUDA backend a
/// realisation only queues its kernels and library calls (reading a value to the
/// host waits for them), so a timing must call this before it stops the clock.
/// Returns at once on the host backends and when no GPU was used.
pub fn sync_all() -> Result<()> {
    Ok(kernels::cuda::runtime::synchronize_if_started()?)
}

/// `JIT_PROFILE=1`: after each realisation, print the time of every step (kernel,
/// library call), slowest first, to stderr. `JIT_PROFILE=ir` prints each kernel's
/// IR under its line as well.
fn profiling() -> bool {
    profile_level() > 0
}

fn profiling_ir() -> bool {
    profile_level() > 1
}

/// 0 off, 1 timings, 2 timings and IR.
fn profile_level() -> u8 {
    static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| match std::env::var("JIT_PROFILE").as_deref() {
        Ok("1") => 1,
        Ok("ir") => 2,
        _ => 0,
    })
}

fn step_label(step: &Step) -> String {
    match step {
        Step::Kernel { kernel, launch, .. } => {
            let line = format!(
                "kernel out {:?} red {:?} ({} inputs, {} ops)",
                launch.out_shape,
                launch.red_shape,
                kernel.inputs.len(),
                kernel.body.len() + kernel.inner.len()
            );
            if profiling_ir() {
                format!("{line}\n{kernel}")
            } else {
                line
            }
        }
        Step::Extern { op, inputs, out } => {
            format!("{} {:?} -> {:?}", op.label(), inputs.iter().map(Var::shape).collect::<Vec<_>>(), out.shape())
        }
        Step::Alias { out, .. } => format!("alias {:?}", out.shape()),
    }
}

fn report_profile(nodes: usize, plan_ms: f64, mut t: Vec<(f64, String)>) {
    let total: f64 = t.iter().map(|x| x.0).sum();
    t.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!(
        "[jit profile] {} steps, {total:.2} ms (planning {nodes} nodes took {plan_ms:.2} ms before them)",
        t.len()
    );
    for (ms, label) in &t {
        eprintln!("  {ms:9.3} ms  {:5.1}%  {label}", 100.0 * ms / total.max(1e-9));
    }
}

/// `JIT_CROSSCHECK=1`: every compiled kernel is also run on the portable IR
/// executor and the results compared (a debugging aid for code-generator bugs).
/// One kernel run on a host backend, as [`capture_kernels`] records it: the kernel,
/// its launch sizes, and copies of its input and output buffers.
#[derive(Debug, Clone)]
pub struct CapturedKernel {
    /// The kernel's IR.
    pub kernel: kernels::ir::Kernel,
    /// Sizes, arguments and parameters of the run.
    pub launch: kernels::ir::Launch,
    /// The input buffers, in the kernel's order.
    pub inputs: Vec<HostBuffer>,
    /// The output buffers the backend produced.
    pub outputs: Vec<HostBuffer>,
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Vec<CapturedKernel>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` and returns, with its result, every kernel that realisations on this
/// thread ran on the CPU or interpreter backend meanwhile, with copies of their
/// inputs and outputs: material to check another code generator against (the
/// tests run the CUDA source of each on a host emulation of the grid). Memory grows
/// with every buffer copied; meant for small graphs.
pub fn capture_kernels<R>(f: impl FnOnce() -> R) -> (R, Vec<CapturedKernel>) {
    let outer = CAPTURE.with(|c| c.borrow_mut().replace(Vec::new()));
    let r = f();
    let runs = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer)).unwrap_or_default();
    (r, runs)
}

fn crosscheck() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("JIT_CROSSCHECK").is_ok_and(|v| v == "1"))
}

fn crosscheck_kernel(
    kernel: &kernels::ir::Kernel,
    launch: &kernels::ir::Launch,
    inputs: &[&HostBuffer],
    outs: &[HostBuffer],
) -> Result<()> {
    let want = kernels::exec::run(kernel, launch, inputs)?;
    for (k, (o, w)) in outs.iter().zip(&want).enumerate() {
        let (o, w) = (o.to_f64_vec(), w.to_f64_vec());
        let bad = o
            .iter()
            .zip(&w)
            .position(|(a, b)| !((a - b).abs() <= 1e-4 * b.abs().max(1.0) || (a.is_nan() && b.is_nan())));
        if let Some(i) = bad {
            return Err(Error::Kernel(kernels::KernelError::Internal {
                op: "crosscheck".into(),
                reason: format!(
                    "output {k} element {i}: compiled {} vs executor {}\nlaunch {launch:?}\n{kernel}",
                    o[i], w[i]
                ),
            }));
        }
    }
    Ok(())
}

/// Runs every meta-op on the reference interpreter.
fn run_reference(order: Vec<Var>, targets: &HashSet<u64>) -> Result<()> {
    // How many pending consumers each pending node still has.
    let mut remaining: HashMap<u64, usize> = HashMap::new();
    let mut plan = Vec::with_capacity(order.len());
    for v in &order {
        let (op, inputs) = match &*v.state() {
            State::Pending { op, inputs } => (op.clone(), inputs.clone()),
            State::Ready { .. } => continue,
        };
        for i in &inputs {
            *remaining.entry(i.id()).or_insert(0) += 1;
        }
        plan.push((v.clone(), op, inputs));
    }
    let mut values: HashMap<u64, Arc<Buffer>> = HashMap::new();
    for (v, op, inputs) in plan {
        let mut data = Vec::with_capacity(inputs.len());
        for i in &inputs {
            let d = match &*i.state() {
                State::Ready { data, .. } => Some(data.clone()),
                State::Pending { .. } => None,
            };
            let d = match d.or_else(|| values.get(&i.id()).cloned()) {
                Some(d) => d,
                None => {
                    return Err(Error::Kernel(kernels::KernelError::Internal {
                        op: op.name().into(),
                        reason: format!("input node {} was not computed before its consumer", i.id()),
                    }))
                }
            };
            data.push(d);
        }
        let out = if op == MetaOp::Reshape {
            data[0].clone()
        } else {
            let args: Vec<(&HostBuffer, &[usize])> =
                data.iter().zip(&inputs).map(|(d, i)| Ok((d.host()?, i.shape()))).collect::<Result<_>>()?;
            let host = kernels::reference::eval(&op, &args, v.shape(), v.dtype())?;
            Arc::new(Buffer::new(host))
        };
        drop(data);
        for i in &inputs {
            if let Some(r) = remaining.get_mut(&i.id()) {
                *r -= 1;
                if *r == 0 {
                    values.remove(&i.id());
                }
            }
        }
        if targets.contains(&v.id()) {
            *v.state() = State::Ready { data: out.clone(), op: op.name() };
        }
        if remaining.get(&v.id()).copied().unwrap_or(0) > 0 {
            values.insert(v.id(), out);
        }
    }
    Ok(())
}

impl Var {
    /// This value on `device`. Moving to the device it is already on is free; a
    /// device that cannot be used here (no driver, no such ordinal, or no backend for
    /// it in this build) is an error that says which.
    pub fn to(&self, device: Device) -> Result<Var> {
        if device == self.device() {
            return Ok(self.clone());
        }
        usable(device, "to")?;
        Err(Error::Device {
            op: "to".into(),
            msg: format!("no copy path from {} to {device} in this build", self.device()),
        })
    }

    /// Computes this value now.
    pub fn sync(&self) -> Result<()> {
        realize(std::slice::from_ref(self))
    }

    /// Computes this value and returns its host data.
    pub fn to_host(&self) -> Result<HostBuffer> {
        self.sync()?;
        match &*self.state() {
            State::Ready { data, .. } => Ok(data.host()?.clone()),
            State::Pending { op, .. } => Err(Error::Kernel(kernels::KernelError::Internal {
                op: op.name().into(),
                reason: "value still pending after realisation".into(),
            })),
        }
    }

    /// Computes this value and returns its elements in row-major order. `T` must be
    /// the value's dtype (cast first to convert).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DType {
                op: "to_vec".into(),
                msg: format!(
                    "the value is {}, not {}; call .cast(DType::{:?}) first",
                    self.dtype(),
                    T::DTYPE,
                    T::DTYPE
                ),
            });
        }
        let host = self.to_host()?;
        Ok(host.as_slice::<T>().map(<[T]>::to_vec).unwrap_or_default())
    }

    /// Computes this value and returns its elements converted to f64.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(self.to_host()?.to_f64_vec())
    }

    /// The single element of a one-element value.
    pub fn item<T: Element>(&self) -> Result<T> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("only a value with one element can be read as a scalar, got shape {:?}", self.shape()),
            ));
        }
        let v = self.to_vec::<T>()?;
        v.first().copied().ok_or_else(|| Error::shape("item", "empty value"))
    }
}
