/* The CUDA built-ins that the emitted kernels use, for the host C++ compiler:
   thread and block indices, __syncthreads, __shfl_down_sync, __shared__, the bit
   casts, the saturating float to integer conversions and the vector types. A grid is
   run by j_run_seq (independent threads one after another) or j_run_par (one
   fiber per CUDA thread, a block at a time, switching at __syncthreads and at each
   warp's shuffles). Used by tests/src/cuda_emu.rs (captured kernels) and by the
   emulated device (tests/emu/fake_cuda.cpp), which compiles NVRTC's input with it. */
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <functional>
#include <vector>
#define __device__
#define __forceinline__ inline
#define __global__
#define __shared__ static thread_local
struct JDim { unsigned x; };
struct float4 { float x, y, z, w; };
struct int4 { int x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
static thread_local JDim threadIdx, blockIdx, blockDim, gridDim;
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
/* PTX float -> integer conversions saturate, and NaN gives 0 */
static inline long long j_emu_ll(double x) {
  if (x != x) return 0;
  if (x >= 9223372036854775807.0) return INT64_MAX;
  if (x <= -9223372036854775808.0) return INT64_MIN;
  return (long long)x;
}
static inline long long __float2ll_rz(float x) { return j_emu_ll((double)x); }
static inline long long __double2ll_rz(double x) { return j_emu_ll(x); }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline int min(int a, int b) { return a < b ? a : b; }
/* The threads of a cooperating block run as fibers on the calling OS thread (see
   j_run_par): a barrier switches to the next fiber instead of waking OS threads. */
struct JFibers;
static void j_fiber_wait(JFibers* f, unsigned barrier);
static thread_local JFibers* j_fibers;
static inline void __syncthreads() { j_fiber_wait(j_fibers, 0); }
template <class T> static inline T __shfl_down_sync(unsigned, T v, int o) {
  static thread_local T slot[1024];
  unsigned t = threadIdx.x, lane = t & 31u;
  slot[t] = v;
  j_fiber_wait(j_fibers, 1 + (t >> 5));
  T r = (lane + (unsigned)o < 32u && t + (unsigned)o < blockDim.x) ? slot[t + o] : v;
  j_fiber_wait(j_fibers, 1 + (t >> 5));
  return r;
}
/* independent threads: one after another */
static void j_run_seq(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  gridDim.x = blocks; blockDim.x = threads;
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < threads; ++t) { blockIdx.x = b; threadIdx.x = t; body(); }
}
/* cooperating threads: one fiber each (own stack), a block at a time, on the
   calling OS thread. A fiber that reaches a barrier (__syncthreads: the block; a
   shuffle: its warp) yields to the scheduler until every thread the barrier counts
   has arrived. A block whose fibers all wait on barriers that can never fill (a
   __syncthreads inside divergent code) would hang a GPU: reported and aborted.
   On x86-64 a switch is a few instructions (j_switch); elsewhere ucontext. */
#if defined(__x86_64__) && !defined(JEMU_UCONTEXT)
#define J_STACK_SWITCH 1
#endif
#ifdef J_STACK_SWITCH
/* Saves the callee-saved registers, MXCSR and the x87 control word on the current
   stack, stores its pointer in *from and resumes the stack `to` (System V ABI). */
__attribute__((naked, noinline)) static void j_switch(void** from, void* to) {
  asm volatile(
      "pushq %rbp\n pushq %rbx\n pushq %r12\n pushq %r13\n pushq %r14\n pushq %r15\n"
      "subq $8, %rsp\n stmxcsr (%rsp)\n fnstcw 4(%rsp)\n"
      "movq %rsp, (%rdi)\n movq %rsi, %rsp\n"
      "ldmxcsr (%rsp)\n fldcw 4(%rsp)\n addq $8, %rsp\n"
      "popq %r15\n popq %r14\n popq %r13\n popq %r12\n popq %rbx\n popq %rbp\n ret\n");
}
#endif
struct JFibers {
  static constexpr size_t STACK = 128 * 1024, GUARD = 4096;
#ifdef J_STACK_SWITCH
  void* scheduler = nullptr;
  std::vector<void*> sp;
#else
  ucontext_t scheduler;
  std::vector<ucontext_t> ctx;
#endif
  std::vector<int> state;  // -1 runnable, -2 finished, b >= 0 waiting on barrier b
  unsigned arrived[33] = {}, expected[33] = {}, current = 0, threads = 0;
  char* stacks = nullptr;
  const std::function<void()>* body = nullptr;
  explicit JFibers(unsigned n) : state(n), threads(n) {
#ifdef J_STACK_SWITCH
    sp.resize(n);
#else
    ctx.resize(n);
#endif
    void* m = mmap(nullptr, (size_t)n * (STACK + GUARD), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) { fprintf(stderr, "emulated CUDA: no memory for %u fiber stacks\n", n); abort(); }
    stacks = (char*)m;
    for (unsigned t = 0; t < n; ++t) mprotect(stacks + (size_t)t * (STACK + GUARD), GUARD, PROT_NONE);
  }
  ~JFibers() { munmap(stacks, (size_t)threads * (STACK + GUARD)); }
  char* stack(unsigned t) { return stacks + (size_t)t * (STACK + GUARD) + GUARD; }
  void start(unsigned t, void (*entry)());
  void resume(unsigned t);
  void yield();
};
#ifdef J_STACK_SWITCH
/* a stack that j_switch resumes into entry() as if it had been called */
inline void JFibers::start(unsigned t, void (*entry)()) {
  void** top = (void**)(stack(t) + STACK);  // 16-byte aligned
  top[-2] = (void*)entry;                   // the return address j_switch pops
  for (int r = 3; r <= 8; ++r) top[-r] = nullptr;  // rbp, rbx, r12..r15
  unsigned* control = (unsigned*)&top[-9];
  asm volatile("stmxcsr %0" : "=m"(control[0]));
  asm volatile("fnstcw %0" : "=m"(*(unsigned short*)&control[1]));
  sp[t] = &top[-9];
  state[t] = -1;
}
inline void JFibers::resume(unsigned t) { j_switch(&scheduler, sp[t]); }
inline void JFibers::yield() { j_switch(&sp[current], scheduler); }
#else
inline void JFibers::start(unsigned t, void (*entry)()) {
  getcontext(&ctx[t]);
  ctx[t].uc_stack.ss_sp = stack(t);
  ctx[t].uc_stack.ss_size = STACK;
  ctx[t].uc_link = &scheduler;
  makecontext(&ctx[t], entry, 0);
  state[t] = -1;
}
inline void JFibers::resume(unsigned t) { swapcontext(&scheduler, &ctx[t]); }
inline void JFibers::yield() { swapcontext(&ctx[current], &scheduler); }
#endif
static void j_fiber_wait(JFibers* f, unsigned barrier) {
  if (++f->arrived[barrier] == f->expected[barrier]) {
    f->arrived[barrier] = 0;
    unsigned lo = barrier ? (barrier - 1) * 32 : 0, hi = barrier ? lo + f->expected[barrier] : f->threads;
    for (unsigned t = lo; t < hi; ++t)
      if (f->state[t] == (int)barrier) f->state[t] = -1;
    return;
  }
  f->state[f->current] = (int)barrier;
  f->yield();
}
static void j_fiber_entry() {
  JFibers* f = j_fibers;
  (*f->body)();
  f->state[f->current] = -2;
  f->yield();  // never resumed (ucontext: uc_link would return to the scheduler too)
}
static void j_run_par(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  JFibers fibers(threads), *f = &fibers, *outer = j_fibers;
  j_fibers = f;
  f->body = &body;
  gridDim.x = blocks; blockDim.x = threads;
  f->expected[0] = threads;
  for (unsigned w = 0; w * 32 < threads; ++w) f->expected[1 + w] = threads - w * 32 < 32 ? threads - w * 32 : 32;
  for (unsigned b = 0; b < blocks; ++b) {
    for (unsigned t = 0; t < threads; ++t) f->start(t, j_fiber_entry);
    unsigned finished = 0;
    while (finished < threads) {
      bool ran = false;
      for (unsigned t = 0; t < threads; ++t) {
        if (f->state[t] != -1) continue;
        ran = true;
        blockIdx.x = b; threadIdx.x = t; f->current = t;
        f->resume(t);
        if (f->state[t] == -2) ++finished;
      }
      if (!ran && finished < threads) {
        fprintf(stderr, "emulated CUDA: block %u of %u deadlocks: %u of %u threads finished, the rest wait on barriers "
                "that cannot fill (__syncthreads or a shuffle in divergent code)\n", b, blocks, finished, threads);
        abort();
      }
    }
  }
  j_fibers = outer;
}
