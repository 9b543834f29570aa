//! Errors raised below the graph (backends, libraries, buffers).

/// An error from a backend or a library probe.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// A run-time library (libcuda, libnvrtc, cuBLAS, cuDNN) could not be loaded.
    #[error("{library} could not be loaded ({detail}); {hint}")]
    LibraryMissing {
        /// The library that was looked for.
        library: String,
        /// What the loader said.
        detail: String,
        /// What the user can do about it.
        hint: String,
    },
    /// A backend was given an operation it cannot run.
    #[error("{backend} backend cannot run {op}: {reason}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// Operation name.
        op: String,
        /// Why.
        reason: String,
    },
    /// An allocation failed.
    #[error("out of memory on {device}: could not allocate {bytes} bytes ({what})")]
    OutOfMemory {
        /// Where.
        device: String,
        /// How much was asked for.
        bytes: u128,
        /// For what.
        what: String,
    },
    /// A backend failed to compile a kernel. Carries the kernel's IR so that the
    /// report shows what was being compiled.
    #[error("{backend} backend could not compile a kernel: {message}\n--- kernel IR ---\n{ir}")]
    Compile {
        /// Backend name.
        backend: &'static str,
        /// The compiler's message.
        message: String,
        /// Canonical text of the kernel.
        ir: String,
    },
    /// Internal invariant broken: a bug in the framework, reported instead of a panic.
    #[error("internal error in {op}: {reason}")]
    Internal {
        /// Operation name.
        op: String,
        /// What went wrong.
        reason: String,
    },
}
