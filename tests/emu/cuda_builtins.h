/* The CUDA built-ins that the emitted kernels use, for the host C++ compiler:
   thread and block indices, __syncthreads, __shfl_down_sync, __shared__, the bit
   casts, the saturating float to integer conversions and the vector types. A grid is
   run by j_run_seq (independent threads one after another) or j_run_par (one OS
   thread per CUDA thread, a block at a time, with barriers for __syncthreads and
   each warp's shuffles). Used by tests/src/cuda_emu.rs (captured kernels) and by the
   emulated device (tests/emu/fake_cuda.cpp), which compiles NVRTC's input with it. */
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <barrier>
#include <functional>
#include <thread>
#include <vector>
#define __device__
#define __forceinline__ inline
#define __global__
#define __shared__ static
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
static std::barrier<>* j_bar_block;
static std::barrier<>* j_bar_warp[32];
static inline void __syncthreads() { j_bar_block->arrive_and_wait(); }
template <class T> static inline T __shfl_down_sync(unsigned, T v, int o) {
  static T slot[1024];
  unsigned t = threadIdx.x, lane = t & 31u;
  slot[t] = v;
  j_bar_warp[t >> 5]->arrive_and_wait();
  T r = (lane + (unsigned)o < 32u && t + (unsigned)o < blockDim.x) ? slot[t + o] : v;
  j_bar_warp[t >> 5]->arrive_and_wait();
  return r;
}
/* independent threads: one after another */
static void j_run_seq(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  gridDim.x = blocks; blockDim.x = threads;
  for (unsigned b = 0; b < blocks; ++b)
    for (unsigned t = 0; t < threads; ++t) { blockIdx.x = b; threadIdx.x = t; body(); }
}
/* cooperating threads: one OS thread each, a block at a time. A host that keeps a
   pool of threads (the emulated device) attaches it with jemu_attach; without one,
   each block starts and joins its own threads. */
typedef void (*j_pool_fn)(unsigned threads, void (*run)(void*, unsigned), void* ctx);
static j_pool_fn j_pool = nullptr;
extern "C" __attribute__((visibility("default"))) void jemu_attach(j_pool_fn pool) { j_pool = pool; }
struct JBlock { const std::function<void()>* body; unsigned b, blocks, threads; };
static void j_block_thread(void* ctx, unsigned t) {
  const JBlock* k = (const JBlock*)ctx;
  gridDim.x = k->blocks; blockDim.x = k->threads; blockIdx.x = k->b; threadIdx.x = t;
  (*k->body)();
}
static void j_run_par(unsigned blocks, unsigned threads, const std::function<void()>& body) {
  for (unsigned b = 0; b < blocks; ++b) {
    std::barrier<> block((std::ptrdiff_t)threads);
    j_bar_block = &block;
    std::vector<std::barrier<>*> warps;
    for (unsigned w = 0; w * 32 < threads; ++w) {
      unsigned k = threads - w * 32 < 32 ? threads - w * 32 : 32;
      warps.push_back(new std::barrier<>((std::ptrdiff_t)k));
      j_bar_warp[w] = warps.back();
    }
    JBlock ctx{&body, b, blocks, threads};
    if (j_pool) {
      j_pool(threads, j_block_thread, &ctx);
    } else {
      std::vector<std::thread> ts;
      for (unsigned t = 0; t < threads; ++t) ts.emplace_back([&ctx, t] { j_block_thread(&ctx, t); });
      for (auto& t : ts) t.join();
    }
    for (auto* w : warps) delete w;
  }
}
