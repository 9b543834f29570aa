//! An emulated CUDA device for processes without a GPU: `tests/emu/fake_cuda.cpp`
//! (the driver API, NVRTC and cuBLAS calls the CUDA backend makes, implemented on
//! the host; kernels are the emitted CUDA C compiled by the host C++ compiler) built
//! into a directory under the names cudarc loads. A child process started with
//! [`FakeDevice::command`] finds it first on the loader path, so its CUDA backend runs there:
//! the runtime, allocator, copies, launches and the disk cache of "cubins" are the
//! real code; only the device underneath is emulated.

use crate::cuda_emu::{compiler, BuildError};
use std::path::{Path, PathBuf};
use std::process::Command;

const FAKE: &str = include_str!("../emu/fake_cuda.cpp");
const BUILTINS: &str = include_str!("../emu/cuda_builtins.h");

/// The library names cudarc tries that the emulated device answers to.
const NAMES: &[&str] = &["libcuda.so", "libcuda.so.1", "libnvrtc.so", "libcublas.so", "libcudnn.so"];

/// A built emulated device.
pub struct FakeDevice {
    /// The directory to put first on `LD_LIBRARY_PATH`.
    pub dir: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> Result<(), BuildError> {
    let out = cmd.output().map_err(|e| BuildError::NoCompiler(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(BuildError::Compile(format!("{what}:\n{}", err.lines().take(40).collect::<Vec<_>>().join("\n"))))
    }
}

impl FakeDevice {
    /// Builds the library into `dir` (created), with a precompiled header of the
    /// CUDA built-ins that its "NVRTC" compiles every kernel against.
    pub fn build(dir: &Path) -> Result<FakeDevice, BuildError> {
        let cxx = compiler().ok_or_else(|| BuildError::NoCompiler("no g++ or c++ on the PATH".into()))?;
        let io = |e: std::io::Error| BuildError::Compile(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let dir = dir.canonicalize().map_err(io)?;
        std::fs::write(dir.join("cuda_builtins.h"), BUILTINS).map_err(io)?;
        std::fs::write(dir.join("fake_cuda.cpp"), FAKE).map_err(io)?;
        let lib = dir.join("libjemu.so");
        run(
            Command::new(&cxx)
                .args(["-std=c++17", "-O1", "-Wall", "-shared", "-fPIC", "-pthread"])
                .arg(format!("-DJEMU_DIR=\"{}\"", dir.display()))
                .arg(format!("-DJEMU_CXX=\"{cxx}\""))
                .arg("-o")
                .arg(&lib)
                .arg(dir.join("fake_cuda.cpp")),
            "building the emulated device",
        )?;
        // the kernels' compile flags, so that the compiler uses it
        run(
            Command::new(&cxx)
                .args(["-std=c++20", "-O1", "-w", "-fPIC", "-pthread", "-x", "c++-header"])
                .arg(dir.join("cuda_builtins.h"))
                .arg("-o")
                .arg(dir.join("cuda_builtins.h.gch")),
            "precompiling the CUDA built-ins header",
        )?;
        for name in NAMES {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("libjemu.so", &link).map_err(io)?;
        }
        Ok(FakeDevice { dir })
    }

    /// `program` set up to run on the emulated device: the library first on the
    /// loader path, every kernel on the CUDA backend, the kernel cache's disk level
    /// in `cache_dir`, temporary files in `cache_dir/tmp`.
    pub fn command(&self, program: &Path, cache_dir: &Path) -> Command {
        let mut cmd = Command::new(program);
        let path = match std::env::var("LD_LIBRARY_PATH") {
            Ok(p) if !p.is_empty() => format!("{}:{p}", self.dir.display()),
            _ => self.dir.display().to_string(),
        };
        let tmp = cache_dir.join("tmp");
        let _ = std::fs::create_dir_all(&tmp);
        cmd.env("LD_LIBRARY_PATH", path)
            .env("JIT_BACKEND", "cuda")
            .env("JIT_CACHE_DIR", cache_dir)
            .env("JEMU_TMPDIR", tmp)
            .env_remove("JIT_DEVICE");
        cmd
    }
}
