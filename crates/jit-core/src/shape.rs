//! Shape helpers: dims, broadcasting.

use crate::error::{Error, Result};

/// Number of elements of a shape, or `None` when the product overflows.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Turns a possibly negative dim into an index in `0..ndim`.
/// A scalar (rank 0) accepts dims -1 and 0, as PyTorch does.
pub fn normalize_dim(op: &str, dim: isize, shape: &[usize]) -> Result<usize> {
    let ndim = shape.len();
    let n = ndim.max(1) as isize;
    if dim < -n || dim >= n {
        return Err(Error::Dim { op: op.to_string(), dim, ndim, shape: shape.to_vec() });
    }
    Ok(if dim < 0 { (dim + n) as usize } else { dim as usize })
}

/// Normalises a list of dims; repeated dims are an error.
pub fn normalize_dims(op: &str, dims: &[isize], shape: &[usize]) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(dims.len());
    for &d in dims {
        let k = normalize_dim(op, d, shape)?;
        if out.contains(&k) {
            return Err(Error::argument(op, format!("dim {d} appears more than once in {dims:?}")));
        }
        out.push(k);
    }
    Ok(out)
}

/// NumPy broadcasting of two shapes.
pub fn broadcast_shapes(op: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(
                op,
                format!(
                    "shapes {a:?} and {b:?} cannot be broadcast together (dim {}: {da} vs {db})",
                    i as isize - n as isize
                ),
            ));
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_rules() {
        assert_eq!(broadcast_shapes("t", &[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
        assert_eq!(broadcast_shapes("t", &[], &[5]).unwrap(), vec![5]);
        assert_eq!(broadcast_shapes("t", &[0, 1], &[1, 3]).unwrap(), vec![0, 3]);
        let e = broadcast_shapes("add", &[2, 3], &[4]).unwrap_err().to_string();
        assert_eq!(e, "add: shapes [2, 3] and [4] cannot be broadcast together (dim -1: 3 vs 4)");
    }

    #[test]
    fn dims() {
        assert_eq!(normalize_dim("t", -1, &[2, 3]).unwrap(), 1);
        assert_eq!(normalize_dim("t", 0, &[]).unwrap(), 0);
        let e = normalize_dim("sum", 2, &[2, 3]).unwrap_err().to_string();
        assert!(e.starts_with("sum: dimension 2 is out of range for a tensor of rank 2"), "{e}");
        assert!(normalize_dims("t", &[1, -1], &[2, 3]).is_err());
    }
}
