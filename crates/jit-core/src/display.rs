//! `Display` (computes and prints values, PyTorch-like) and `Debug` (never computes).

use crate::var::Var;
use kernels::{DType, HostBuffer};
use std::fmt;

const SUMMARY_THRESHOLD: usize = 1000;
const EDGE: usize = 3;

fn format_elem(buf: &HostBuffer, i: usize) -> String {
    let dt = buf.dtype();
    if dt == DType::Bool {
        return if buf.get_i64(i) != 0 { "true".into() } else { "false".into() };
    }
    if !dt.is_float() {
        return buf.get_i64(i).to_string();
    }
    let v = buf.get_f64(i);
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else if v != 0.0 && (v.abs() >= 1e8 || v.abs() < 1e-4) {
        format!("{v:.4e}")
    } else {
        format!("{v:.4}")
    }
}

fn write_dim(out: &mut String, buf: &HostBuffer, shape: &[usize], offset: usize, depth: usize, summarize: bool) {
    if shape.is_empty() {
        out.push_str(&format_elem(buf, offset));
        return;
    }
    let n = shape[0];
    let inner: usize = shape[1..].iter().product();
    out.push('[');
    let shown: Vec<Option<usize>> = if summarize && n > 2 * EDGE {
        (0..EDGE).map(Some).chain([None]).chain((n - EDGE..n).map(Some)).collect()
    } else {
        (0..n).map(Some).collect()
    };
    for (k, i) in shown.iter().enumerate() {
        if k > 0 {
            out.push(',');
            if shape.len() > 1 {
                out.push('\n');
                out.push_str(&" ".repeat(depth + 8));
            } else {
                out.push(' ');
            }
        }
        match i {
            Some(i) => write_dim(out, buf, &shape[1..], offset + i * inner, depth + 1, summarize),
            None => out.push_str("..."),
        }
    }
    out.push(']');
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_host() {
            Ok(buf) => {
                let mut s = String::new();
                write_dim(&mut s, &buf, self.shape(), 0, 0, buf.len() > SUMMARY_THRESHOLD);
                write!(f, "tensor({s}, shape={:?}, dtype={}, device={})", self.shape(), self.dtype(), self.device())
            }
            Err(e) => write!(f, "tensor(<not computable: {e}>, shape={:?}, dtype={})", self.shape(), self.dtype()),
        }
    }
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.is_realized() { "realized" } else { "pending" };
        write!(
            f,
            "Var(id={}, op={}, shape={:?}, dtype={}, device={}, {state})",
            self.id(),
            self.op_name(),
            self.shape(),
            self.dtype(),
            self.device()
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::Var;

    #[test]
    fn display_prints_values() {
        let x = Var::from_vec(vec![1.0f32, 2.5, -3.0, 0.0], &[2, 2]).unwrap();
        let s = x.to_string();
        assert_eq!(s, "tensor([[1.0000, 2.5000],\n        [-3.0000, 0.0000]], shape=[2, 2], dtype=f32, device=cpu)");
        let b = Var::from_vec(vec![true, false], &[2]).unwrap();
        assert_eq!(b.to_string(), "tensor([true, false], shape=[2], dtype=bool, device=cpu)");
        assert_eq!(Var::scalar(7i64).to_string(), "tensor(7, shape=[], dtype=i64, device=cpu)");
    }

    #[test]
    fn long_values_are_summarised() {
        let x = Var::arange(5000);
        let s = x.to_string();
        assert!(s.starts_with("tensor([0, 1, 2, ..., 4997, 4998, 4999]"), "{s}");
    }

    #[test]
    fn debug_does_not_compute() {
        let x = Var::arange(4) * 2;
        let d = format!("{x:?}");
        assert!(d.contains("op=mul") && d.contains("pending"), "{d}");
        assert!(!x.is_realized());
    }
}
