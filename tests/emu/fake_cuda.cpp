/* An emulated CUDA device: the parts of the CUDA driver API, NVRTC and cuBLAS that
   the framework calls, implemented on the host, so that the CUDA backend's runtime
   (device-resident values, the caching allocator, host/device copies, module
   loading, kernel launches with their packed parameters, the disk cache of
   binaries, cuBLAS argument marshalling) runs without a GPU.

   Built by tests/src/fake_device.rs into one shared library that is linked under the
   names cudarc looks for (libcuda.so, libnvrtc.so, libcublas.so, libcudnn.so); a process that
   finds that directory first on LD_LIBRARY_PATH runs its CUDA backend here.

   - Device memory is host memory: each allocation is mapped on its own, its end
     against an inaccessible page (a kernel that reads or writes past the block
     faults), and starts filled with 0xFF bytes (NaN for floats), so that a value
     never written shows. Copies, memsets and gemm operands are checked to lie inside
     live allocations. JEMU_MEMORY_BYTES caps the live bytes (out-of-memory errors).
   - "NVRTC" compiles the CUDA C with the host C++ compiler against
     cuda_builtins.h, adds one entry per __global__ function that unpacks the
     launch's parameter array, and returns the shared library as the "cubin"
     (prefixed by a magic word and its length). It insists on
     --gpu-architecture=sm_90, the device's architecture.
   - Launches run at once on the calling thread (one at a time, process-wide), which
     is a legal schedule of one in-order stream; synchronisation is then a no-op.
   - cuBLAS's strided batched gemms (f32, f64, and f16/bf16 with f32 compute) are
     column-major loops in double precision, with the argument checks cuBLAS makes.
   - cuDNN's legacy convolution API (descriptors, algorithm queries, workspace sizes,
     forward, backward-data and backward-filter) checks the descriptors against each
     other as cuDNN does, insists on FMA math for f32 unless JIT_ALLOW_TF32=1, and
     computes each pass in double precision. Every algorithm asks for a workspace.

   Counters are printed to stderr at exit when JEMU_VERBOSE=1. */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#ifndef JEMU_DIR
#error "JEMU_DIR (the directory holding cuda_builtins.h) must be defined"
#endif
#ifndef JEMU_CXX
#define JEMU_CXX "g++"
#endif

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

enum {
  CUDA_SUCCESS = 0,
  CUDA_ERROR_INVALID_VALUE = 1,
  CUDA_ERROR_OUT_OF_MEMORY = 2,
  CUDA_ERROR_INVALID_DEVICE = 101,
  CUDA_ERROR_INVALID_IMAGE = 200,
  CUDA_ERROR_INVALID_HANDLE = 400,
  CUDA_ERROR_NOT_FOUND = 500,
  CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
};

static void jemu_say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void jemu_say(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[emulated device] ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
}

/* ---------------------------------------------------------------- memory */

struct Alloc {
  void* map;
  size_t map_len;
  size_t bytes;
};

static std::mutex g_mem_lock;
static std::map<uintptr_t, Alloc> g_allocs; /* by first byte */
static size_t g_live = 0;
static std::atomic<unsigned long long> g_launches{0}, g_compiles{0}, g_gemms{0}, g_allocs_made{0};

static size_t memory_cap() {
  const char* s = getenv("JEMU_MEMORY_BYTES");
  return s ? (size_t)strtoull(s, nullptr, 10) : ((size_t)8 << 30);
}

/* true when [p, p + n) lies inside one live allocation */
static bool inside(uintptr_t p, size_t n) {
  std::lock_guard<std::mutex> g(g_mem_lock);
  auto it = g_allocs.upper_bound(p);
  if (it == g_allocs.begin()) return false;
  --it;
  return p >= it->first && p + n <= it->first + it->second.bytes;
}

static CUresult check_range(const char* op, CUdeviceptr p, size_t n) {
  if (n == 0 || inside((uintptr_t)p, n)) return CUDA_SUCCESS;
  jemu_say("%s: [%#llx, +%zu bytes) is not inside one live allocation", op, p, n);
  return CUDA_ERROR_INVALID_VALUE;
}

extern "C" {

CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytes) {
  if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t body = (bytes + page - 1) / page * page;
  {
    std::lock_guard<std::mutex> g(g_mem_lock);
    if (g_live + bytes > memory_cap()) return CUDA_ERROR_OUT_OF_MEMORY;
  }
  void* m = mmap(nullptr, body + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  mprotect((char*)m + body, page, PROT_NONE);
  /* the block ends where the inaccessible page begins (256-byte aligned start) */
  uintptr_t start = ((uintptr_t)m + body - bytes) & ~(uintptr_t)255;
  memset((void*)start, 0xFF, (uintptr_t)m + body - start);
  std::lock_guard<std::mutex> g(g_mem_lock);
  g_allocs[start] = Alloc{m, body + page, bytes};
  g_live += bytes;
  g_allocs_made++;
  *dptr = (CUdeviceptr)start;
  return CUDA_SUCCESS;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
  std::lock_guard<std::mutex> g(g_mem_lock);
  auto it = g_allocs.find((uintptr_t)p);
  if (it == g_allocs.end()) {
    jemu_say("cuMemFree: %#llx is not a live allocation (double free?)", p);
    return CUDA_ERROR_INVALID_VALUE;
  }
  munmap(it->second.map, it->second.map_len);
  g_live -= it->second.bytes;
  g_allocs.erase(it);
  return CUDA_SUCCESS;
}

CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytes, void*) { return cuMemAlloc_v2(dptr, bytes); }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }

CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
  std::lock_guard<std::mutex> g(g_mem_lock);
  *total = memory_cap();
  *free_bytes = *total > g_live ? *total - g_live : 0;
  return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
  if (CUresult r = check_range("host-to-device copy", dst, n)) return r;
  memcpy((void*)dst, src, n);
  return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void*) { return cuMemcpyHtoD_v2(dst, src, n); }

CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
  if (CUresult r = check_range("device-to-host copy", src, n)) return r;
  memcpy(dst, (const void*)src, n);
  return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void*) { return cuMemcpyDtoH_v2(dst, src, n); }

CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  if (CUresult r = check_range("device-to-device copy (source)", src, n)) return r;
  if (CUresult r = check_range("device-to-device copy (destination)", dst, n)) return r;
  memmove((void*)dst, (const void*)src, n);
  return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void*) { return cuMemcpyDtoD_v2(dst, src, n); }

CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
  if (CUresult r = check_range("memset", dst, n)) return r;
  memset((void*)dst, v, n);
  return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(dst, v, n); }

/* ---------------------------------------------------------------- device, context */

CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) {
  *v = 13000;
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* c) {
  *c = 1;
  return CUDA_SUCCESS;
}
CUresult cuDeviceGet(int* d, int ordinal) {
  if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
  *d = 0;
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, int) {
  snprintf(name, (size_t)len, "emulated device (host CPU)");
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attribute, int device) {
  if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
  switch (attribute) {
    case 75: *v = 9; break;  /* compute capability 9.0 */
    case 76: *v = 0; break;
    case 16: *v = 1; break;  /* one multiprocessor: small grids, quick emulation */
    case 1: *v = 1024; break; /* threads per block */
    case 10: *v = 32; break;  /* warp size */
    default: *v = 0;
  }
  return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* b, int) {
  *b = memory_cap();
  return CUDA_SUCCESS;
}

static thread_local void* t_ctx = nullptr;
static char g_primary_ctx;

CUresult cuDevicePrimaryCtxRetain(void** ctx, int device) {
  if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
  *ctx = &g_primary_ctx;
  return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(void* ctx) {
  t_ctx = ctx;
  return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(void** ctx) {
  *ctx = t_ctx;
  return CUDA_SUCCESS;
}
CUresult cuCtxPushCurrent_v2(void* ctx) { return cuCtxSetCurrent(ctx); }
CUresult cuCtxPopCurrent_v2(void** ctx) {
  if (ctx) *ctx = t_ctx;
  return CUDA_SUCCESS;
}
CUresult cuCtxGetDevice(int* d) {
  *d = 0;
  return CUDA_SUCCESS;
}
CUresult cuCtxGetDevice_v2(int* d, void*) { return cuCtxGetDevice(d); }
CUresult cuCtxSynchronize(void) { return CUDA_SUCCESS; }
CUresult cuCtxSynchronize_v2(void*) { return CUDA_SUCCESS; }

/* ---------------------------------------------------------------- streams, events */

static void* new_handle() { return malloc(16); }

CUresult cuStreamCreate(void** s, unsigned) {
  *s = new_handle();
  return CUDA_SUCCESS;
}
CUresult cuStreamCreateWithPriority(void** s, unsigned, int) { return cuStreamCreate(s, 0); }
CUresult cuStreamDestroy_v2(void* s) {
  free(s);
  return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(void*) { return CUDA_SUCCESS; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return CUDA_SUCCESS; }
CUresult cuStreamQuery(void*) { return CUDA_SUCCESS; }

static double now_ms() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

CUresult cuEventCreate(void** e, unsigned) {
  double* t = (double*)malloc(sizeof(double));
  *t = now_ms();
  *e = t;
  return CUDA_SUCCESS;
}
CUresult cuEventRecord(void* e, void*) {
  *(double*)e = now_ms();
  return CUDA_SUCCESS;
}
CUresult cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }
CUresult cuEventSynchronize(void*) { return CUDA_SUCCESS; }
CUresult cuEventQuery(void*) { return CUDA_SUCCESS; }
CUresult cuEventDestroy_v2(void* e) {
  free(e);
  return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
  *ms = (float)(*(double*)b - *(double*)a);
  return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

/* ---------------------------------------------------------------- errors */

CUresult cuGetErrorString(CUresult e, const char** s) {
  switch (e) {
    case CUDA_SUCCESS: *s = "no error"; break;
    case CUDA_ERROR_INVALID_VALUE: *s = "invalid argument"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *s = "out of memory"; break;
    case CUDA_ERROR_INVALID_DEVICE: *s = "invalid device ordinal"; break;
    case CUDA_ERROR_INVALID_IMAGE: *s = "device kernel image is invalid"; break;
    case CUDA_ERROR_INVALID_HANDLE: *s = "invalid resource handle"; break;
    case CUDA_ERROR_NOT_FOUND: *s = "named symbol not found"; break;
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *s = "too many resources requested for launch"; break;
    default: *s = "unknown error";
  }
  return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
  switch (e) {
    case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
    case CUDA_ERROR_INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
    case CUDA_ERROR_INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
    case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *s = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
    default: *s = "CUDA_ERROR_UNKNOWN";
  }
  return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------- modules, launches */

static const char MAGIC[8] = {'J', 'E', 'M', 'U', '-', 'S', 'O', '1'};

typedef void (*Trampoline)(void** params, unsigned blocks, unsigned threads);

struct Module {
  void* lib;
};
struct Function {
  Trampoline run;
  std::string name;
};

static std::string temp_dir() {
  const char* d = getenv("JEMU_TMPDIR");
  if (!d) d = getenv("TMPDIR");
  return d ? d : "/tmp";
}

CUresult cuModuleLoadData(void** module, const void* image) {
  const unsigned char* p = (const unsigned char*)image;
  if (memcmp(p, MAGIC, 8) != 0) {
    jemu_say("cuModuleLoadData: the image is not one the emulated NVRTC made (a real cubin from a shared cache?)");
    return CUDA_ERROR_INVALID_IMAGE;
  }
  unsigned long long len;
  memcpy(&len, p + 8, 8);
  std::string path = temp_dir() + "/jemu-module-XXXXXX";
  std::vector<char> name(path.begin(), path.end());
  name.push_back(0);
  int fd = mkstemp(name.data());
  if (fd < 0) return CUDA_ERROR_INVALID_IMAGE;
  size_t off = 0;
  while (off < len) {
    ssize_t w = write(fd, p + 16 + off, len - off);
    if (w <= 0) break;
    off += (size_t)w;
  }
  close(fd);
  void* lib = off == len ? dlopen(name.data(), RTLD_NOW | RTLD_LOCAL) : nullptr;
  if (!lib) jemu_say("cuModuleLoadData: %s", dlerror() ? dlerror() : "short write");
  unlink(name.data());
  if (!lib) return CUDA_ERROR_INVALID_IMAGE;
  *module = new Module{lib};
  return CUDA_SUCCESS;
}
CUresult cuModuleLoadDataEx(void** module, const void* image, unsigned, void*, void*) {
  return cuModuleLoadData(module, image);
}
CUresult cuModuleUnload(void* module) {
  /* kept loaded: a function handle may outlive its module in a caller's cache */
  delete (Module*)module;
  return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
  std::string entry = std::string("jemu_launch_") + name;
  void* sym = dlsym(((Module*)module)->lib, entry.c_str());
  if (!sym) return CUDA_ERROR_NOT_FOUND;
  *f = new Function{(Trampoline)sym, name};
  return CUDA_SUCCESS;
}

static std::mutex g_launch_lock;

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared_bytes, void*, void** params, void** extra) {
  if (!f) return CUDA_ERROR_INVALID_HANDLE;
  if (gx == 0 || gy != 1 || gz != 1 || bx == 0 || bx > 1024 || by != 1 || bz != 1 || shared_bytes > 48 * 1024 ||
      extra) {
    jemu_say("cuLaunchKernel %s: unsupported launch shape (grid %llu, block %llu; only 1-D launches are emulated)",
             ((Function*)f)->name.c_str(), (unsigned long long)gx * gy * gz, (unsigned long long)bx * by * bz);
    return CUDA_ERROR_INVALID_VALUE;
  }
  std::lock_guard<std::mutex> g(g_launch_lock);
  g_launches++;
  ((Function*)f)->run(params, gx, bx);
  return CUDA_SUCCESS;
}

}  /* extern "C" (driver) */

/* ---------------------------------------------------------------- NVRTC */

struct Program {
  std::string source, log;
  std::vector<char> binary;
};

static std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\n"), b = s.find_last_not_of(" \t\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

/* One entry per __global__ function: unpacks the parameter array of a launch (a
   pointer to each argument, as cuLaunchKernel receives it) and runs the grid. */
static std::string entries(const std::string& src, std::string& error) {
  std::string out;
  size_t at = 0;
  const std::string key = "__global__ void ";
  while ((at = src.find(key, at)) != std::string::npos) {
    size_t name_start = at + key.size();
    size_t open = src.find('(', name_start);
    size_t close = src.find(')', open);
    if (open == std::string::npos || close == std::string::npos) {
      error = "cannot read a kernel's parameter list";
      return "";
    }
    std::string name = trim(src.substr(name_start, open - name_start));
    std::string params = src.substr(open + 1, close - open - 1);
    std::vector<std::string> args;
    size_t start = 0;
    while (start <= params.size()) {
      size_t comma = params.find(',', start);
      std::string p = trim(params.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (!p.empty()) {
        size_t r;
        while ((r = p.find("__restrict__")) != std::string::npos) p.erase(r, 12);
        size_t id = p.find_last_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
        std::string type = trim(p.substr(0, id + 1));
        args.push_back("*(" + type + "*)a[" + std::to_string(args.size()) + "]");
      }
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    bool coop = name.size() > 6 && name.compare(name.size() - 6, 6, "_block") == 0;
    std::string call = name + "(";
    for (size_t i = 0; i < args.size(); ++i) call += (i ? ", " : "") + args[i];
    call += ")";
    out += "extern \"C\" void jemu_launch_" + name + "(void** a, unsigned blocks, unsigned threads) {\n  " +
           (coop ? "j_run_par" : "j_run_seq") + "(blocks, threads, [&] { " + call + "; });\n}\n";
    at = close;
  }
  return out;
}

static bool read_file(const std::string& path, std::string& out) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) return false;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  fclose(f);
  return true;
}

extern "C" {

typedef int nvrtcResult;
enum { NVRTC_SUCCESS = 0, NVRTC_ERROR_INVALID_INPUT = 3, NVRTC_ERROR_INVALID_PROGRAM = 4, NVRTC_ERROR_COMPILATION = 6 };

const char* nvrtcGetErrorString(nvrtcResult r) {
  switch (r) {
    case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
    case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
    case NVRTC_ERROR_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
    case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION";
    default: return "NVRTC_ERROR_INTERNAL_ERROR";
  }
}

nvrtcResult nvrtcVersion(int* major, int* minor) {
  *major = 13;
  *minor = 0;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCreateProgram(void** prog, const char* src, const char*, int, const char* const*, const char* const*) {
  if (!prog || !src) return NVRTC_ERROR_INVALID_INPUT;
  *prog = new Program{src, "", {}};
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcDestroyProgram(void** prog) {
  if (!prog || !*prog) return NVRTC_ERROR_INVALID_PROGRAM;
  delete (Program*)*prog;
  *prog = nullptr;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCompileProgram(void* handle, int n_opts, const char* const* opts) {
  Program* prog = (Program*)handle;
  if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
  bool arch = false;
  for (int i = 0; i < n_opts; ++i) arch |= strcmp(opts[i], "--gpu-architecture=sm_90") == 0;
  if (!arch) {
    prog->log = "emulated NVRTC: the device is sm_90 and no --gpu-architecture=sm_90 option was given";
    return NVRTC_ERROR_COMPILATION;
  }
  std::string error;
  std::string tu = prog->source + "\n" + entries(prog->source, error);
  if (!error.empty()) {
    prog->log = "emulated NVRTC: " + error;
    return NVRTC_ERROR_COMPILATION;
  }
  g_compiles++;
  std::string base = temp_dir() + "/jemu-nvrtc-XXXXXX";
  std::vector<char> dir(base.begin(), base.end());
  dir.push_back(0);
  if (!mkdtemp(dir.data())) {
    prog->log = "emulated NVRTC: cannot make a temporary directory under " + temp_dir();
    return NVRTC_ERROR_COMPILATION;
  }
  std::string d = dir.data(), src = d + "/kernel.cpp", so = d + "/kernel.so", log = d + "/log.txt";
  FILE* f = fopen(src.c_str(), "wb");
  if (!f) {
    prog->log = "emulated NVRTC: cannot write " + src;
    return NVRTC_ERROR_COMPILATION;
  }
  fwrite(tu.data(), 1, tu.size(), f);
  fclose(f);
  std::string cmd = std::string(JEMU_CXX) + " -std=c++20 -O1 -w -shared -fPIC -pthread -include " JEMU_DIR
                    "/cuda_builtins.h -o " + so + " " + src + " > " + log + " 2>&1";
  int rc = system(cmd.c_str());
  std::string bin;
  nvrtcResult result = NVRTC_SUCCESS;
  if (rc != 0 || !read_file(so, bin)) {
    std::string text;
    read_file(log, text);
    prog->log = "emulated NVRTC (" JEMU_CXX "): \n" + text;
    result = NVRTC_ERROR_COMPILATION;
  } else {
    unsigned long long len = bin.size();
    prog->binary.assign(MAGIC, MAGIC + 8);
    prog->binary.insert(prog->binary.end(), (char*)&len, (char*)&len + 8);
    prog->binary.insert(prog->binary.end(), bin.begin(), bin.end());
  }
  unlink(src.c_str());
  unlink(so.c_str());
  unlink(log.c_str());
  rmdir(d.c_str());
  return result;
}

nvrtcResult nvrtcGetProgramLogSize(void* prog, size_t* n) {
  *n = ((Program*)prog)->log.size() + 1;
  return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetProgramLog(void* prog, char* out) {
  const std::string& l = ((Program*)prog)->log;
  memcpy(out, l.c_str(), l.size() + 1);
  return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetCUBINSize(void* prog, size_t* n) {
  *n = ((Program*)prog)->binary.size();
  return *n ? NVRTC_SUCCESS : NVRTC_ERROR_INVALID_PROGRAM;
}
nvrtcResult nvrtcGetCUBIN(void* prog, char* out) {
  const std::vector<char>& b = ((Program*)prog)->binary;
  memcpy(out, b.data(), b.size());
  return NVRTC_SUCCESS;
}

}  /* extern "C" (NVRTC) */

/* ---------------------------------------------------------------- cuBLAS */

typedef int cublasStatus_t;
enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1, CUBLAS_STATUS_INVALID_VALUE = 7,
       CUBLAS_STATUS_NOT_SUPPORTED = 15 };

static float f16_to_f32(uint16_t h) {
  _Float16 v;
  memcpy(&v, &h, 2);
  return (float)v;
}
static uint16_t f32_to_f16(float f) {
  _Float16 v = (_Float16)f;
  uint16_t h;
  memcpy(&h, &v, 2);
  return h;
}
static float bf16_to_f32(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

enum Kind { F32, F64, F16, BF16 };

static double load(const void* p, size_t i, Kind k) {
  switch (k) {
    case F32: return ((const float*)p)[i];
    case F64: return ((const double*)p)[i];
    case F16: return f16_to_f32(((const uint16_t*)p)[i]);
    default: return bf16_to_f32(((const uint16_t*)p)[i]);
  }
}
static void store(void* p, size_t i, Kind k, double v) {
  switch (k) {
    case F32: ((float*)p)[i] = (float)v; break;
    case F64: ((double*)p)[i] = v; break;
    case F16: ((uint16_t*)p)[i] = f32_to_f16((float)v); break;
    default: ((uint16_t*)p)[i] = f32_to_bf16((float)v); break;
  }
}
static size_t size_of(Kind k) { return k == F64 ? 8 : k == F32 ? 4 : 2; }

/* column-major C = alpha op(A) op(B) + beta C, batched with strides */
static cublasStatus_t gemm(const char* fn, int ta, int tb, int m, int n, int k, double alpha, const void* A, int lda,
                           long long sa, const void* B, int ldb, long long sb, double beta, void* C, int ldc,
                           long long sc, int batch, Kind kind) {
  if (m < 0 || n < 0 || k < 0 || batch < 0 || ta < 0 || ta > 2 || tb < 0 || tb > 2 ||
      lda < (ta == 0 ? (m > 1 ? m : 1) : (k > 1 ? k : 1)) || ldb < (tb == 0 ? (k > 1 ? k : 1) : (n > 1 ? n : 1)) ||
      ldc < (m > 1 ? m : 1)) {
    jemu_say("%s: invalid sizes or leading dimensions", fn);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  size_t es = size_of(kind);
  /* every element each operand's batch reads must lie in a live allocation */
  size_t a_cols = ta == 0 ? (size_t)k : (size_t)m, a_rows = ta == 0 ? (size_t)m : (size_t)k;
  size_t b_cols = tb == 0 ? (size_t)n : (size_t)k, b_rows = tb == 0 ? (size_t)k : (size_t)n;
  for (int b = 0; b < batch; b += batch - 1 > 0 ? batch - 1 : 1) {
    if (k > 0 && (check_range(fn, (CUdeviceptr)A + (size_t)(sa * b) * es, ((a_cols - 1) * lda + a_rows) * es) ||
                  check_range(fn, (CUdeviceptr)B + (size_t)(sb * b) * es, ((b_cols - 1) * ldb + b_rows) * es)))
      return CUBLAS_STATUS_INVALID_VALUE;
    if (check_range(fn, (CUdeviceptr)C + (size_t)(sc * b) * es, ((size_t)(n - 1) * ldc + m) * es))
      return CUBLAS_STATUS_INVALID_VALUE;
    if (batch == 1) break;
  }
  g_gemms++;
  for (int b = 0; b < batch; ++b) {
    const char* a = (const char*)A + (size_t)(sa * b) * es;
    const char* bb = (const char*)B + (size_t)(sb * b) * es;
    char* c = (char*)C + (size_t)(sc * b) * es;
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        double acc = 0;
        for (int l = 0; l < k; ++l) {
          double x = load(a, ta == 0 ? (size_t)i + (size_t)l * lda : (size_t)l + (size_t)i * lda, kind);
          double y = load(bb, tb == 0 ? (size_t)l + (size_t)j * ldb : (size_t)j + (size_t)l * ldb, kind);
          acc += x * y;
        }
        size_t at = (size_t)i + (size_t)j * ldc;
        double old = beta == 0 ? 0 : load(c, at, kind);
        store(c, at, kind, alpha * acc + beta * old);
      }
  }
  return CUBLAS_STATUS_SUCCESS;
}

static char g_blas_handle;

extern "C" {

cublasStatus_t cublasCreate_v2(void** h) {
  *h = &g_blas_handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(void*) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream_v2(void* h, void*) { return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED; }
cublasStatus_t cublasSetMathMode(void* h, int) { return h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED; }
const char* cublasGetStatusString(cublasStatus_t s) {
  return s == 0 ? "CUBLAS_STATUS_SUCCESS" : s == 7 ? "CUBLAS_STATUS_INVALID_VALUE" : "CUBLAS_STATUS_NOT_SUPPORTED";
}

cublasStatus_t cublasSgemmStridedBatched(void* h, int ta, int tb, int m, int n, int k, const float* alpha,
                                         const float* A, int lda, long long sa, const float* B, int ldb, long long sb,
                                         const float* beta, float* C, int ldc, long long sc, int batch) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  return gemm("cublasSgemmStridedBatched", ta, tb, m, n, k, *alpha, A, lda, sa, B, ldb, sb, *beta, C, ldc, sc, batch,
              F32);
}

cublasStatus_t cublasDgemmStridedBatched(void* h, int ta, int tb, int m, int n, int k, const double* alpha,
                                         const double* A, int lda, long long sa, const double* B, int ldb,
                                         long long sb, const double* beta, double* C, int ldc, long long sc,
                                         int batch) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  return gemm("cublasDgemmStridedBatched", ta, tb, m, n, k, *alpha, A, lda, sa, B, ldb, sb, *beta, C, ldc, sc, batch,
              F64);
}

cublasStatus_t cublasGemmStridedBatchedEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha,
                                          const void* A, int at, int lda, long long sa, const void* B, int bt, int ldb,
                                          long long sb, const void* beta, void* C, int ct, int ldc, long long sc,
                                          int batch, int compute, int) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  /* f16 (CUDA_R_16F = 2) or bf16 (CUDA_R_16BF = 14) storage, f32 compute (68) */
  if (at != bt || at != ct || (at != 2 && at != 14) || compute != 68) {
    jemu_say("cublasGemmStridedBatchedEx: unsupported types %d/%d (only f16 or bf16 with f32 compute)", at, compute);
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return gemm("cublasGemmStridedBatchedEx", ta, tb, m, n, k, *(const float*)alpha, A, lda, sa, B, ldb, sb,
              *(const float*)beta, C, ldc, sc, batch, at == 2 ? F16 : BF16);
}

}  /* extern "C" (cuBLAS) */

/* ---------------------------------------------------------------- cuDNN */

typedef int cudnnStatus_t;
enum { CUDNN_STATUS_SUCCESS = 0, CUDNN_STATUS_NOT_INITIALIZED = 1, CUDNN_STATUS_BAD_PARAM = 3,
       CUDNN_STATUS_NOT_SUPPORTED = 9 };
enum { CUDNN_DATA_FLOAT = 0, CUDNN_DATA_DOUBLE = 1, CUDNN_DATA_HALF = 2, CUDNN_DATA_BFLOAT16 = 9 };
enum { CUDNN_DEFAULT_MATH = 0, CUDNN_TENSOR_OP_MATH = 1, CUDNN_FMA_MATH = 3 };
/* the workspace every algorithm of the emulated cuDNN asks for (checked when it runs) */
static const size_t DNN_WORKSPACE = 4096;

struct TensorDesc {
  int n = 0, c = 0, h = 0, w = 0, dtype = -1;
};
struct FilterDesc {
  int k = 0, c = 0, h = 0, w = 0, dtype = -1;
};
struct ConvDesc {
  int ph = 0, pw = 0, sh = 0, sw = 0, dh = 0, dw = 0, mode = -1, compute = -1, groups = 1, math = 0;
};
struct AlgoPerf {
  int algo;
  int status;
  float time;
  size_t memory;
  int determinism;
  int math;
  int reserved[3];
};

static std::atomic<unsigned long long> g_convs{0};
static char g_dnn_handle;

static bool kind_of(int dtype, Kind& k) {
  switch (dtype) {
    case CUDNN_DATA_FLOAT: k = F32; return true;
    case CUDNN_DATA_DOUBLE: k = F64; return true;
    case CUDNN_DATA_HALF: k = F16; return true;
    case CUDNN_DATA_BFLOAT16: k = BF16; return true;
    default: return false;
  }
}

/* the checks cuDNN makes on a convolution's descriptors: shapes consistent, output
   size as the convolution computes it, one data type, f32/f64 compute as required */
static cudnnStatus_t check_conv(const char* fn, const TensorDesc* x, const FilterDesc* w, const ConvDesc* cv,
                                const TensorDesc* y) {
  if (!x || !w || !cv || !y) return CUDNN_STATUS_BAD_PARAM;
  auto fail = [fn](const char* why) {
    jemu_say("%s: %s", fn, why);
    return CUDNN_STATUS_BAD_PARAM;
  };
  if (x->dtype < 0 || y->dtype < 0 || w->dtype < 0) return fail("a descriptor was never set");
  if (x->dtype != y->dtype || x->dtype != w->dtype) return fail("the descriptors' data types differ");
  if (cv->mode != 1) return fail("only cross-correlation is emulated");
  int want_compute = x->dtype == CUDNN_DATA_DOUBLE ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  if (cv->compute != want_compute) return fail("the compute type does not suit the data type");
  if (cv->groups < 1 || x->c != w->c * cv->groups || w->k % cv->groups != 0)
    return fail("input channels, filter channels and groups disagree");
  if (cv->sh < 1 || cv->sw < 1 || cv->dh < 1 || cv->dw < 1 || cv->ph < 0 || cv->pw < 0)
    return fail("bad stride, dilation or padding");
  int oh = (x->h + 2 * cv->ph - cv->dh * (w->h - 1) - 1) / cv->sh + 1;
  int ow = (x->w + 2 * cv->pw - cv->dw * (w->w - 1) - 1) / cv->sw + 1;
  if (y->n != x->n || y->c != w->k || y->h != oh || y->w != ow) {
    jemu_say("%s: output descriptor [%d, %d, %d, %d], the convolution gives [%d, %d, %d, %d]", fn, y->n, y->c, y->h,
             y->w, x->n, w->k, oh, ow);
    return CUDNN_STATUS_BAD_PARAM;
  }
  return CUDNN_STATUS_SUCCESS;
}

static size_t count(const TensorDesc* t) { return (size_t)t->n * t->c * t->h * t->w; }
static size_t count(const FilterDesc* f) { return (size_t)f->k * f->c * f->h * f->w; }

enum Pass { FORWARD, BACKWARD_DATA, BACKWARD_FILTER };

/* one pass: out = alpha * pass(a, b) + beta * out, summed in double */
static cudnnStatus_t convolve(const char* fn, Pass pass, const void* alpha, const TensorDesc* x, const void* xp,
                              const FilterDesc* w, const void* wp, const ConvDesc* cv, void* ws, size_t ws_size,
                              const void* beta, const TensorDesc* y, const void* yp, void* out) {
  if (cudnnStatus_t r = check_conv(fn, x, w, cv, y)) return r;
  if (ws_size < DNN_WORKSPACE || check_range(fn, (CUdeviceptr)ws, DNN_WORKSPACE)) {
    jemu_say("%s: the workspace is missing or smaller than the %zu bytes asked for", fn, DNN_WORKSPACE);
    return CUDNN_STATUS_BAD_PARAM;
  }
  const char* tf32 = getenv("JIT_ALLOW_TF32");
  if (x->dtype == CUDNN_DATA_FLOAT && cv->math != CUDNN_FMA_MATH && !(tf32 && strcmp(tf32, "1") == 0)) {
    jemu_say("%s: f32 with math type %d, which may use TF32 (FMA math expected without JIT_ALLOW_TF32=1)", fn,
             cv->math);
    return CUDNN_STATUS_BAD_PARAM;
  }
  Kind k;
  kind_of(x->dtype, k);
  size_t es = size_of(k);
  const void* in_x = pass == FORWARD || pass == BACKWARD_FILTER ? xp : nullptr;
  const void* in_w = pass != BACKWARD_FILTER ? wp : nullptr;
  const void* in_y = pass != FORWARD ? yp : nullptr;
  if ((in_x && check_range(fn, (CUdeviceptr)in_x, count(x) * es)) ||
      (in_w && check_range(fn, (CUdeviceptr)in_w, count(w) * es)) ||
      (in_y && check_range(fn, (CUdeviceptr)in_y, count(y) * es)))
    return CUDNN_STATUS_BAD_PARAM;
  size_t out_n = pass == FORWARD ? count(y) : pass == BACKWARD_DATA ? count(x) : count(w);
  if (check_range(fn, (CUdeviceptr)out, out_n * es)) return CUDNN_STATUS_BAD_PARAM;
  g_convs++;
  std::vector<double> acc(out_n, 0.0);
  int cg = w->c, og = w->k / cv->groups;
  for (int n = 0; n < x->n; ++n)
    for (int o = 0; o < w->k; ++o) {
      int g = o / og;
      for (int oh = 0; oh < y->h; ++oh)
        for (int ow = 0; ow < y->w; ++ow) {
          size_t yi = (((size_t)n * y->c + o) * y->h + oh) * y->w + ow;
          double dy = in_y ? load(in_y, yi, k) : 0.0;
          double sum = 0.0;
          for (int ci = 0; ci < cg; ++ci)
            for (int kh = 0; kh < w->h; ++kh) {
              int ih = oh * cv->sh - cv->ph + kh * cv->dh;
              if (ih < 0 || ih >= x->h) continue;
              for (int kw = 0; kw < w->w; ++kw) {
                int iw = ow * cv->sw - cv->pw + kw * cv->dw;
                if (iw < 0 || iw >= x->w) continue;
                size_t xi = (((size_t)n * x->c + g * cg + ci) * x->h + ih) * x->w + iw;
                size_t wi = (((size_t)o * cg + ci) * w->h + kh) * w->w + kw;
                if (pass == FORWARD) sum += load(in_x, xi, k) * load(in_w, wi, k);
                else if (pass == BACKWARD_DATA) acc[xi] += dy * load(in_w, wi, k);
                else acc[wi] += dy * load(in_x, xi, k);
              }
            }
          if (pass == FORWARD) acc[yi] = sum;
        }
    }
  double a = k == F64 ? *(const double*)alpha : *(const float*)alpha;
  double b = k == F64 ? *(const double*)beta : *(const float*)beta;
  for (size_t i = 0; i < out_n; ++i) store(out, i, k, a * acc[i] + (b == 0 ? 0.0 : b * load(out, i, k)));
  return CUDNN_STATUS_SUCCESS;
}

/* two algorithms per pass: 1 with tensor-op math (what the heuristics offer first on
   a recent GPU), then 0 with the descriptor's math type */
static cudnnStatus_t algorithms(const char* fn, const TensorDesc* x, const FilterDesc* w, const ConvDesc* cv,
                                const TensorDesc* y, int requested, int* returned, AlgoPerf* perf) {
  if (cudnnStatus_t r = check_conv(fn, x, w, cv, y)) return r;
  if (requested < 1 || !returned || !perf) return CUDNN_STATUS_BAD_PARAM;
  AlgoPerf results[2] = {{1, 0, 0.1f, DNN_WORKSPACE, 1, CUDNN_TENSOR_OP_MATH, {0, 0, 0}},
                         {0, 0, 0.2f, DNN_WORKSPACE, 1, cv->math, {0, 0, 0}}};
  *returned = requested < 2 ? requested : 2;
  memcpy(perf, results, sizeof(AlgoPerf) * (size_t)*returned);
  return CUDNN_STATUS_SUCCESS;
}

extern "C" {

size_t cudnnGetVersion(void) { return 90000; }
const char* cudnnGetErrorString(cudnnStatus_t s) {
  return s == 0 ? "CUDNN_STATUS_SUCCESS" : s == 3 ? "CUDNN_STATUS_BAD_PARAM" : "CUDNN_STATUS_NOT_SUPPORTED";
}
cudnnStatus_t cudnnCreate(void** h) {
  *h = &g_dnn_handle;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(void*) { return CUDNN_STATUS_SUCCESS; }
cudnnStatus_t cudnnSetStream(void* h, void*) { return h ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_NOT_INITIALIZED; }

cudnnStatus_t cudnnCreateTensorDescriptor(TensorDesc** d) {
  *d = new TensorDesc();
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyTensorDescriptor(TensorDesc* d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetTensor4dDescriptor(TensorDesc* d, int format, int dtype, int n, int c, int h, int w) {
  Kind k;
  if (!d || format != 0 || !kind_of(dtype, k) || n < 1 || c < 1 || h < 1 || w < 1) return CUDNN_STATUS_BAD_PARAM;
  *d = TensorDesc{n, c, h, w, dtype};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateFilterDescriptor(FilterDesc** d) {
  *d = new FilterDesc();
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyFilterDescriptor(FilterDesc* d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetFilter4dDescriptor(FilterDesc* d, int dtype, int format, int k, int c, int h, int w) {
  Kind kind;
  if (!d || format != 0 || !kind_of(dtype, kind) || k < 1 || c < 1 || h < 1 || w < 1) return CUDNN_STATUS_BAD_PARAM;
  *d = FilterDesc{k, c, h, w, dtype};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateConvolutionDescriptor(ConvDesc** d) {
  *d = new ConvDesc();
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(ConvDesc* d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolution2dDescriptor(ConvDesc* d, int ph, int pw, int sh, int sw, int dh, int dw, int mode,
                                              int compute) {
  if (!d) return CUDNN_STATUS_BAD_PARAM;
  d->ph = ph, d->pw = pw, d->sh = sh, d->sw = sw, d->dh = dh, d->dw = dw, d->mode = mode, d->compute = compute;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionGroupCount(ConvDesc* d, int groups) {
  if (!d || groups < 1) return CUDNN_STATUS_BAD_PARAM;
  d->groups = groups;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(ConvDesc* d, int math) {
  if (!d || math < 0 || math > 3) return CUDNN_STATUS_BAD_PARAM;
  d->math = math;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(void*, TensorDesc* x, FilterDesc* w, ConvDesc* c, TensorDesc* y,
                                                     int n, int* got, AlgoPerf* perf) {
  return algorithms("cudnnGetConvolutionForwardAlgorithm_v7", x, w, c, y, n, got, perf);
}
cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(void*, TensorDesc* x, FilterDesc* w, ConvDesc* c, TensorDesc* y,
                                                   int n, int* got, AlgoPerf* perf) {
  return algorithms("cudnnFindConvolutionForwardAlgorithm", x, w, c, y, n, got, perf);
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(void*, FilterDesc* w, TensorDesc* dy, ConvDesc* c,
                                                          TensorDesc* dx, int n, int* got, AlgoPerf* perf) {
  return algorithms("cudnnGetConvolutionBackwardDataAlgorithm_v7", dx, w, c, dy, n, got, perf);
}
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(void*, FilterDesc* w, TensorDesc* dy, ConvDesc* c,
                                                        TensorDesc* dx, int n, int* got, AlgoPerf* perf) {
  return algorithms("cudnnFindConvolutionBackwardDataAlgorithm", dx, w, c, dy, n, got, perf);
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(void*, TensorDesc* x, TensorDesc* dy, ConvDesc* c,
                                                            FilterDesc* dw, int n, int* got, AlgoPerf* perf) {
  return algorithms("cudnnGetConvolutionBackwardFilterAlgorithm_v7", x, dw, c, dy, n, got, perf);
}
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(void*, TensorDesc* x, TensorDesc* dy, ConvDesc* c,
                                                          FilterDesc* dw, int n, int* got, AlgoPerf* perf) {
  return algorithms("cudnnFindConvolutionBackwardFilterAlgorithm", x, dw, c, dy, n, got, perf);
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(void*, TensorDesc* x, FilterDesc* w, ConvDesc* c, TensorDesc* y,
                                                      int, size_t* bytes) {
  *bytes = DNN_WORKSPACE;
  return check_conv("cudnnGetConvolutionForwardWorkspaceSize", x, w, c, y);
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(void*, FilterDesc* w, TensorDesc* dy, ConvDesc* c,
                                                           TensorDesc* dx, int, size_t* bytes) {
  *bytes = DNN_WORKSPACE;
  return check_conv("cudnnGetConvolutionBackwardDataWorkspaceSize", dx, w, c, dy);
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(void*, TensorDesc* x, TensorDesc* dy, ConvDesc* c,
                                                             FilterDesc* dw, int, size_t* bytes) {
  *bytes = DNN_WORKSPACE;
  return check_conv("cudnnGetConvolutionBackwardFilterWorkspaceSize", x, dw, c, dy);
}

cudnnStatus_t cudnnConvolutionForward(void* h, const void* alpha, TensorDesc* xd, const void* x, FilterDesc* wd,
                                      const void* w, ConvDesc* c, int, void* ws, size_t ws_size, const void* beta,
                                      TensorDesc* yd, void* y) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  return convolve("cudnnConvolutionForward", FORWARD, alpha, xd, x, wd, w, c, ws, ws_size, beta, yd, nullptr, y);
}
cudnnStatus_t cudnnConvolutionBackwardData(void* h, const void* alpha, FilterDesc* wd, const void* w, TensorDesc* dyd,
                                           const void* dy, ConvDesc* c, int, void* ws, size_t ws_size,
                                           const void* beta, TensorDesc* dxd, void* dx) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  return convolve("cudnnConvolutionBackwardData", BACKWARD_DATA, alpha, dxd, nullptr, wd, w, c, ws, ws_size, beta,
                  dyd, dy, dx);
}
cudnnStatus_t cudnnConvolutionBackwardFilter(void* h, const void* alpha, TensorDesc* xd, const void* x,
                                             TensorDesc* dyd, const void* dy, ConvDesc* c, int, void* ws,
                                             size_t ws_size, const void* beta, FilterDesc* dwd, void* dw) {
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  return convolve("cudnnConvolutionBackwardFilter", BACKWARD_FILTER, alpha, xd, x, dwd, nullptr, c, ws, ws_size, beta,
                  dyd, dy, dw);
}

}  /* extern "C" (cuDNN) */

/* ---------------------------------------------------------------- counters */

__attribute__((destructor)) static void jemu_report() {
  const char* v = getenv("JEMU_VERBOSE");
  if (v && strcmp(v, "1") == 0)
    fprintf(stderr, "[emulated device] %llu compiles, %llu launches, %llu gemms, %llu convolutions, %llu allocations\n",
            g_compiles.load(), g_launches.load(), g_gemms.load(), g_convs.load(), g_allocs_made.load());
}
