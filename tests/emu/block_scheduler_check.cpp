/* A check of the emulated block scheduler (j_run_par in cuda_builtins.h), compiled
   by tests/tests/cuda_emulated.rs with -include cuda_builtins.h, once with the
   x86-64 stack switch and once with ucontext (-DJEMU_UCONTEXT).
   `block_scheduler_check run`: several blocks of three warps exchange values
   through shared memory across __syncthreads (each thread reads what its
   neighbour wrote before the barrier, then overwrites its own slot after the
   second), reduce with warp shuffles and then across warps; prints "ok" or the
   first wrong value. `block_scheduler_check deadlock`: a __syncthreads that thread
   0 skips; the scheduler must report the deadlock and abort. */
#include <stdio.h>
#include <string.h>

__global__ void exchange_and_reduce(int* errors, int* sums) {
  __shared__ int slot[96];
  __shared__ int warp_sum[3];
  unsigned t = threadIdx.x, n = blockDim.x;
  slot[t] = (int)(t * 7 + blockIdx.x);
  __syncthreads();
  int neighbour = slot[(t + 1) % n];
  __syncthreads();
  slot[t] = -1;
  if (neighbour != (int)(((t + 1) % n) * 7 + blockIdx.x)) errors[blockIdx.x] += 1;
  double deep[64];  // some stack per fiber, kept live across the shuffles
  for (int i = 0; i < 64; ++i) deep[i] = t + i;
  int v = (int)t + 1;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((t & 31u) == 0) warp_sum[t >> 5] = v + (int)(deep[63] - deep[0] - 63.0);
  __syncthreads();
  if (t == 0) sums[blockIdx.x] = warp_sum[0] + warp_sum[1] + warp_sum[2];
}

__global__ void divergent_barrier(int* out) {
  if (threadIdx.x != 0) __syncthreads();
  out[threadIdx.x] = 1;
}

int main(int argc, char** argv) {
  if (argc > 1 && strcmp(argv[1], "deadlock") == 0) {
    int out[64];
    j_run_par(1, 64, [&] { divergent_barrier(out); });
    printf("no deadlock reported\n");
    return 0;
  }
  const unsigned blocks = 5, threads = 96;
  int errors[blocks] = {}, sums[blocks] = {};
  j_run_par(blocks, threads, [&] { exchange_and_reduce(errors, sums); });
  for (unsigned b = 0; b < blocks; ++b) {
    if (errors[b] != 0) { printf("block %u: %d threads read a stale neighbour\n", b, errors[b]); return 1; }
    if (sums[b] != (int)(threads * (threads + 1) / 2)) { printf("block %u: sum %d, want %u\n", b, sums[b], threads * (threads + 1) / 2); return 1; }
  }
  printf("ok\n");
  return 0;
}
