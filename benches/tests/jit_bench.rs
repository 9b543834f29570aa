//! `jit_bench --quick` (what CI runs): the output files are well formed and hold a
//! fused and an unfused row for every quick workload; merging PyTorch rows works.
//! No timing is asserted.

use benches::report::{Report, Row};
use std::process::Command;

#[test]
fn quick_run_writes_a_well_formed_table_json_csv_and_chart() {
    let out = std::env::temp_dir().join(format!("jit-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    // a PyTorch row to merge, as benches/jit_bench.py writes them
    let torch = out.join("torch.json");
    std::fs::write(
        &torch,
        r#"[{"workload":"softmax","impl":"torch-eager","device":"cpu","size":"same","reps":3,"median_ms":0.5,
             "min_ms":0.4,"max_ms":0.6,"kernels":null,"bytes":null,"flops":null,"gbps":null,"pct_copy":null,
             "gflops":null,"compile_ms":null,"cache_hits":null,"cache_misses":null}]"#,
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_jit_bench"))
        .args(["--quick", "--reps", "2", "--out"])
        .arg(&out)
        .arg("--merge")
        .arg(&torch)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("| workload | size | impl |"), "{stdout}");

    let report: Report = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(report.copy_gbps > 0.0 && report.matmul_gflops > 0.0);
    let quick: Vec<&str> = benches::suite::all().into_iter().filter(|w| w.quick).map(|w| w.name).collect::<Vec<_>>();
    assert!(quick.len() >= 5);
    let find = |w: &str, i: &str| -> &Row {
        report.rows.iter().find(|r| r.workload == w && r.implementation == i).unwrap_or_else(|| panic!("{w} {i}"))
    };
    for w in &quick {
        let (f, u) = (find(w, "jit-fused"), find(w, "jit-unfused"));
        for r in [f, u] {
            assert!(r.median_ms.is_finite() && r.median_ms > 0.0, "{r:?}");
            assert!(r.min_ms <= r.median_ms && r.median_ms <= r.max_ms, "{r:?}");
            assert!(r.kernels.unwrap() >= 1.0, "{r:?}");
            assert!(r.bytes.is_some() || r.flops.is_some(), "{r:?}");
        }
        assert!(f.kernels.unwrap() <= u.kernels.unwrap(), "{w}: fused launches more kernels than unfused");
    }
    let t = find("softmax", "torch-eager");
    assert_eq!(t.size, find("softmax", "jit-fused").size);
    assert!(t.gbps.unwrap() > 0.0);

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + report.rows.len());
    let cols = lines[0].split(',').count();
    assert_eq!(cols, 17);
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for w in &quick {
        assert!(svg.contains(&format!(">{w}</text>")), "chart lacks {w}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_arguments_are_named() {
    for (args, needle) in [
        (vec!["--device", "tpu"], "--device must be cpu or cuda"),
        (vec!["--only", "nope"], "unknown workload \"nope\""),
        (vec!["--bogus"], "unknown argument"),
        (vec!["--quick", "--only", "softmax", "--merge", "/nonexistent/torch.json"], "/nonexistent/torch.json"),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_jit_bench")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && err.contains(needle), "{args:?}: {err}");
    }
}
