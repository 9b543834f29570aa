//! Builds the emulated CUDA device (`integration_tests::fake_device`) into a
//! directory and prints it: put it first on `LD_LIBRARY_PATH` and set
//! `JIT_BACKEND=cuda` to run any program or test binary's CUDA backend on the host
//! (see `scripts/emulated-gpu-check.sh`).
//!
//! `cargo run --release -p integration-tests --example fake_device -- DIR`

use integration_tests::fake_device::FakeDevice;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: fake_device DIR");
        std::process::exit(2);
    };
    match FakeDevice::build(std::path::Path::new(&dir)) {
        Ok(f) => println!("{}", f.dir.display()),
        Err(e) => {
            eprintln!("error: cannot build the emulated device in {dir}: {e:?}");
            std::process::exit(1);
        }
    }
}
