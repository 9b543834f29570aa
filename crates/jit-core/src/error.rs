//! The framework's error type.

use kernels::KernelError;

/// Result with the framework's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Every failure a user can see. Messages name the op and the shapes or dtypes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit the op.
    #[error("{op}: {msg}")]
    Shape {
        /// The op.
        op: String,
        /// What is wrong, with the shapes.
        msg: String,
    },
    /// A dtype the op does not accept.
    #[error("{op}: {msg}")]
    DType {
        /// The op.
        op: String,
        /// What is wrong, with the dtypes.
        msg: String,
    },
    /// A dimension index outside `[-ndim, ndim)`.
    #[error("{op}: dimension {dim} is out of range for a tensor of rank {ndim} with shape {shape:?} (expected a dim in [{lo}, {hi}])", lo = -(*ndim as i64).max(1), hi = (*ndim as i64).max(1) - 1)]
    Dim {
        /// The op.
        op: String,
        /// The dim as given.
        dim: isize,
        /// The rank of the tensor.
        ndim: usize,
        /// The shape of the tensor.
        shape: Vec<usize>,
    },
    /// Inputs on different devices, or a device that cannot be used.
    #[error("{op}: {msg}")]
    Device {
        /// The op.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// A bad argument that is not a shape, dtype or dim.
    #[error("{op}: {msg}")]
    Argument {
        /// The op.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// A file that cannot be read, written or understood.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A backend or library failure.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

impl Error {
    /// Shapes that do not fit `op`.
    pub fn shape(op: &str, msg: impl Into<String>) -> Error {
        Error::Shape { op: op.to_string(), msg: msg.into() }
    }
    /// A dtype that `op` does not accept.
    pub fn dtype(op: &str, msg: impl Into<String>) -> Error {
        Error::DType { op: op.to_string(), msg: msg.into() }
    }
    /// A problem with the file at `path`.
    pub fn file(path: impl AsRef<std::path::Path>, msg: impl Into<String>) -> Error {
        Error::File { path: path.as_ref().display().to_string(), msg: msg.into() }
    }
    /// A bad argument of `op`.
    pub fn argument(op: &str, msg: impl Into<String>) -> Error {
        Error::Argument { op: op.to_string(), msg: msg.into() }
    }
}
