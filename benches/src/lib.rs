//! Benchmarks of the framework. The criterion benches live in `benches/benches/`.

#![warn(missing_docs)]
