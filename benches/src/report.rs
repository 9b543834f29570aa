//! `jit-bench` results: rows, the terminal table, CSV and the SVG chart.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One measurement of one workload by one implementation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// Workload name.
    pub workload: String,
    /// `jit-fused`, `jit-unfused`, `torch-eager`, `torch-compile`.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Sizes in words.
    pub size: String,
    /// Timed repetitions (after one warm-up).
    pub reps: usize,
    /// Median milliseconds per step.
    pub median_ms: f64,
    /// Fastest.
    pub min_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Kernels launched per step (ours only).
    pub kernels: Option<f64>,
    /// Minimum bytes moved per step.
    pub bytes: Option<u64>,
    /// Floating-point operations per step.
    pub flops: Option<u64>,
    /// Achieved bandwidth, GB/s (from `bytes`).
    pub gbps: Option<f64>,
    /// `gbps` as a percentage of the measured copy bandwidth.
    pub pct_copy: Option<f64>,
    /// Achieved GFLOP/s (from `flops`).
    pub gflops: Option<f64>,
    /// Compile time during the warm-up, ms (ours only).
    pub compile_ms: Option<f64>,
    /// Kernel-cache hits during the timed steps (ours only).
    pub cache_hits: Option<u64>,
    /// Kernels compiled during the warm-up (ours only).
    pub cache_misses: Option<u64>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The command line that made it.
    pub command: String,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Worker threads (CPU).
    pub threads: usize,
    /// Measured copy bandwidth, GB/s (bytes read + written per second).
    pub copy_gbps: f64,
    /// Measured f32 matrix-product rate of this framework, GFLOP/s.
    pub matmul_gflops: f64,
    /// Every measurement.
    pub rows: Vec<Row>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// Median of the fused row of `workload`, if measured.
fn fused_ms(rows: &[Row], workload: &str) -> Option<f64> {
    rows.iter().find(|r| r.workload == workload && r.implementation == "jit-fused").map(|r| r.median_ms)
}

impl Report {
    /// The markdown table printed on the terminal and kept in RESULTS.md.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "device {}, {} threads; measured copy bandwidth {:.1} GB/s, f32 matmul {:.1} GFLOP/s\n",
            self.device, self.threads, self.copy_gbps, self.matmul_gflops
        );
        s.push_str("| workload | size | impl | median ms | min..max ms | vs fused | kernels | GB/s | % copy | GFLOP/s | compile ms | cache hits |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let rel = fused_ms(&self.rows, &r.workload).map(|f| r.median_ms / f);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} | {:.3}..{:.3} | {} | {} | {} | {} | {} | {} | {} |",
                r.workload,
                r.size,
                r.implementation,
                r.median_ms,
                r.min_ms,
                r.max_ms,
                opt(rel, 2),
                opt(r.kernels, 0),
                opt(r.gbps, 1),
                opt(r.pct_copy, 0),
                opt(r.gflops, 1),
                opt(r.compile_ms, 1),
                r.cache_hits.map_or_else(|| "-".into(), |v| v.to_string())
            );
        }
        s
    }

    /// Comma-separated values, one row per measurement.
    pub fn csv(&self) -> String {
        let mut s = String::from(
            "workload,impl,device,size,reps,median_ms,min_ms,max_ms,kernels,bytes,flops,gbps,pct_copy,gflops,compile_ms,cache_hits,cache_misses\n",
        );
        let o = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
        let u = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{},{},{},\"{}\",{},{},{},{},{},{},{},{},{},{},{},{},{}",
                r.workload,
                r.implementation,
                r.device,
                r.size.replace('"', "'"),
                r.reps,
                r.median_ms,
                r.min_ms,
                r.max_ms,
                o(r.kernels),
                u(r.bytes),
                u(r.flops),
                o(r.gbps),
                o(r.pct_copy),
                o(r.gflops),
                o(r.compile_ms),
                u(r.cache_hits),
                u(r.cache_misses)
            );
        }
        s
    }

    /// A bar chart: per workload, each implementation's time relative to ours fused
    /// (shorter is faster), on a log scale, with the ratio written at each bar.
    pub fn svg(&self) -> String {
        let mut workloads: Vec<&str> = Vec::new();
        let mut impls: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !workloads.contains(&r.workload.as_str()) {
                workloads.push(&r.workload);
            }
            if !impls.contains(&r.implementation.as_str()) {
                impls.push(&r.implementation);
            }
        }
        let colours = ["#2b6cb0", "#e53e3e", "#38a169", "#d69e2e", "#805ad5"];
        let (bar_h, gap, left, width) = (14.0, 10.0, 150.0, 560.0);
        let group_h = bar_h * impls.len() as f64 + gap;
        let height = 60.0 + group_h * workloads.len() as f64 + 30.0;
        // log scale from 1/4 to 64 times ours fused
        let (lo, hi) = (0.25f64.ln(), 64f64.ln());
        let x_of = |ratio: f64| left + (ratio.clamp(0.25, 64.0).ln() - lo) / (hi - lo) * width;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">",
            left + width + 150.0
        );
        let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"18\" font-size=\"13\">jit-bench on {}: time relative to ours fused (log scale, shorter is faster)</text>",
            self.device
        );
        for (k, t) in [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0].iter().enumerate() {
            let x = x_of(*t);
            let dash = if *t == 1.0 { "" } else { " stroke-dasharray=\"2,3\"" };
            let _ = writeln!(
                s,
                "<line x1=\"{x:.1}\" y1=\"40\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#bbb\"{dash}/><text x=\"{x:.1}\" y=\"36\" text-anchor=\"middle\">{t}x</text>",
                height - 30.0
            );
            let _ = k;
        }
        for (wi, w) in workloads.iter().enumerate() {
            let y0 = 48.0 + wi as f64 * group_h;
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{w}</text>",
                left - 6.0,
                y0 + group_h / 2.0
            );
            let Some(base) = fused_ms(&self.rows, w) else { continue };
            for (ii, imp) in impls.iter().enumerate() {
                let Some(r) = self.rows.iter().find(|r| r.workload == *w && r.implementation == *imp) else {
                    continue;
                };
                let ratio = r.median_ms / base;
                let y = y0 + ii as f64 * bar_h;
                let x1 = x_of(ratio);
                let _ = writeln!(
                    s,
                    "<rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{ratio:.2}x ({:.2} ms)</text>",
                    (x1 - left).max(1.0),
                    bar_h - 2.0,
                    colours[ii % colours.len()],
                    x1 + 4.0,
                    y + bar_h - 4.0,
                    r.median_ms
                );
            }
        }
        for (ii, imp) in impls.iter().enumerate() {
            let y = height - 14.0;
            let x = left + ii as f64 * 130.0;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{y:.1}\">{imp}</text>",
                y - 9.0,
                colours[ii % colours.len()],
                x + 14.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}
