//! `stylize adain | mccnet | sanet | gatys | train-adain`: the VGG-based networks
//! with checkpoints the user brings (PyTorch `.pth` in the reference layouts, or
//! `.safetensors` with the same keys).

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use jit_nn::image_io::{from_rgb8, to_rgb8};
use jit_nn::prelude::*;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use style_models::adain::{coral, AdaIn};
use style_models::gatys::{Gatys, GatysOptimizer, GatysOptions};
use style_models::mccnet::MccNet;
use style_models::pretrained::reflect_pad_to;
use style_models::sanet::SaNet;
use style_models::train::{train, AdaInTraining, TrainOptions};
use style_models::vgg::Vgg19;

/// The subcommand names `main` hands over to this module.
pub const COMMANDS: [&str; 5] = ["adain", "mccnet", "sanet", "gatys", "train-adain"];

/// Shown at the end of `stylize --help`.
pub const AFTER_HELP: &str = "\
Networks with your own checkpoints (see `stylize <command> --help`):
  stylize adain photo.jpg --style painting.jpg --vgg vgg_normalised.pth --decoder decoder.pth
  stylize mccnet photo.jpg --style painting.jpg --vgg .. --decoder .. --mcc-module mcc_module.pth
  stylize sanet photo.jpg --style painting.jpg --vgg .. --decoder .. --transformer transformer.pth
  stylize gatys photo.jpg --style painting.jpg --vgg vgg_normalised.pth --steps 300
  stylize train-adain --content-dir coco/ --style-dir wikiart/ --vgg vgg_normalised.pth";

#[derive(Parser, Debug)]
#[command(name = "stylize", version, about = "Style transfer with VGG-based networks and your checkpoints")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every inference command shares.
#[derive(clap::Args, Debug)]
struct Common {
    /// The content picture.
    content: PathBuf,
    /// The style picture (repeat --style for AdaIN interpolation).
    #[arg(long, required = true)]
    style: Vec<PathBuf>,
    /// `vgg_normalised.pth` (or .safetensors).
    #[arg(long)]
    vgg: PathBuf,
    /// Output image (default: next to the content image, named CONTENT_COMMAND.png, e.g. photo_adain.png).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Scale both pictures down so the longer side is at most this (0: no limit).
    #[arg(long, default_value_t = 512)]
    max_size: u32,
    /// Keep the content's colours (the style picture's colours are matched to the
    /// content's first, as the reference `--preserve_color`).
    #[arg(long)]
    preserve_color: bool,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// AdaIN (Huang and Belongie): encoder, adaptive instance norm, decoder.
    Adain {
        #[command(flatten)]
        common: Common,
        /// `decoder.pth` (or .safetensors).
        #[arg(long)]
        decoder: PathBuf,
        /// Style strength 0..1 (content-style trade-off).
        #[arg(long, default_value_t = 1.0)]
        alpha: f64,
        /// Interpolation weights, one per --style (normalised to sum 1).
        #[arg(long, value_delimiter = ',')]
        weights: Vec<f64>,
    },
    /// MCCNet (multi-channel correlation).
    Mccnet {
        #[command(flatten)]
        common: Common,
        /// `decoder.pth` of MCCNet.
        #[arg(long)]
        decoder: PathBuf,
        /// `mcc_module.pth`.
        #[arg(long)]
        mcc_module: PathBuf,
        /// Style strength 0..1.
        #[arg(long, default_value_t = 1.0)]
        alpha: f64,
    },
    /// SANet (style-attentional network).
    Sanet {
        #[command(flatten)]
        common: Common,
        /// `decoder.pth` of SANet.
        #[arg(long)]
        decoder: PathBuf,
        /// `transformer.pth`.
        #[arg(long)]
        transformer: PathBuf,
    },
    /// Gatys et al.: optimise the picture itself.
    Gatys {
        #[command(flatten)]
        common: Common,
        /// Optimisation steps (L-BFGS: steps of 20 iterations each).
        #[arg(long, default_value_t = 300)]
        steps: usize,
        /// adam or lbfgs.
        #[arg(long, value_enum, default_value_t = Opt::Adam)]
        optimizer: Opt,
        /// Adam's learning rate (pixels in 0..1).
        #[arg(long, default_value_t = 0.02)]
        lr: f64,
        /// Content weight.
        #[arg(long, default_value_t = 1.0)]
        content_weight: f64,
        /// Style weight.
        #[arg(long, default_value_t = 1e4)]
        style_weight: f64,
        /// Total-variation weight.
        #[arg(long, default_value_t = 1e-3)]
        tv_weight: f64,
    },
    /// Train an AdaIN decoder (the reference train.py).
    TrainAdain {
        /// Folder of content pictures.
        #[arg(long)]
        content_dir: PathBuf,
        /// Folder of style pictures.
        #[arg(long)]
        style_dir: PathBuf,
        /// `vgg_normalised.pth` (or .safetensors).
        #[arg(long)]
        vgg: PathBuf,
        /// Where checkpoints and samples go.
        #[arg(long, default_value = "experiments")]
        save_dir: PathBuf,
        /// Last step.
        #[arg(long, default_value_t = 160_000)]
        max_iter: u64,
        /// Images per batch.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Learning rate.
        #[arg(long, default_value_t = 1e-4)]
        lr: f64,
        /// Inverse decay per step.
        #[arg(long, default_value_t = 5e-5)]
        lr_decay: f64,
        /// Content weight.
        #[arg(long, default_value_t = 1.0)]
        content_weight: f64,
        /// Style weight.
        #[arg(long, default_value_t = 10.0)]
        style_weight: f64,
        /// Pictures are resized to this square, then cropped.
        #[arg(long, default_value_t = 512)]
        image_size: u32,
        /// Random crop size (a multiple of 8).
        #[arg(long, default_value_t = 256)]
        crop: u32,
        /// Steps between checkpoints.
        #[arg(long, default_value_t = 10_000)]
        save_interval: u64,
        /// Steps between sample pictures (0: none).
        #[arg(long, default_value_t = 1000)]
        sample_interval: u64,
        /// Seed of the batches.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Continue from the latest checkpoint in --save-dir.
        #[arg(long)]
        resume: bool,
        /// f32, or mixed precision: convolutions in f16 / bf16 under autocast, f32
        /// weights, dynamic loss scaling (skipped steps are reported).
        #[arg(long, value_enum, default_value_t = Precision::F32)]
        precision: Precision,
        /// Starting loss scale with --precision f16/bf16 (halved after each step
        /// whose gradients overflow, doubled after 2000 clean steps).
        #[arg(long, default_value_t = 65536.0)]
        loss_scale: f64,
        /// No progress bar.
        #[arg(short, long)]
        quiet: bool,
    },
}

/// `train-adain --precision`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Precision {
    F32,
    F16,
    Bf16,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Opt {
    Adam,
    Lbfgs,
}

type Res<T> = std::result::Result<T, String>;

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Parses the command line for a network command and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stylize: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A picture as `[1, 3, H, W]` in 0..1, scaled so its longer side is at most `max`.
fn picture(path: &Path, max: u32) -> Res<Var> {
    let img = jit_nn::image_io::read_rgb8(path).map_err(|e| e.to_string())?;
    let (w, h) = img.dimensions();
    let img = if max > 0 && w.max(h) > max {
        let k = f64::from(max) / f64::from(w.max(h));
        let (nw, nh) = (((f64::from(w) * k).round() as u32).max(1), ((f64::from(h) * k).round() as u32).max(1));
        image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Lanczos3)
    } else {
        img
    };
    from_rgb8(&img).map_err(s)
}

fn check_inputs(c: &Common) -> Res<()> {
    for p in std::iter::once(&c.content).chain(&c.style) {
        if !p.is_file() {
            return Err(format!("{}: no such file", p.display()));
        }
    }
    Ok(())
}

fn out_path(c: &Common, tag: &str) -> PathBuf {
    c.output.clone().unwrap_or_else(|| {
        let stem = c.content.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
        c.content.with_file_name(format!("{stem}_{tag}.png"))
    })
}

/// Runs `f` on the content (read from `path`) reflect-padded to a multiple of `m`,
/// and crops back.
fn padded(content: &Var, path: &Path, m: usize, f: impl FnOnce(&Var) -> Result<Var>) -> Res<Var> {
    let (h, w) = (content.shape()[2], content.shape()[3]);
    let x = reflect_pad_to(content, h.div_ceil(m) * m, w.div_ceil(m) * m)
        .map_err(|e| format!("{}: {e} (both sides need at least 2 pixels)", path.display()))?;
    let y = f(&x).map_err(s)?;
    y.narrow(2, 0, h).and_then(|y| y.narrow(3, 0, w)).map_err(s)
}

fn save(y: &Var, dest: &Path) -> Res<()> {
    let ext = dest.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if !["png", "jpg", "jpeg", "bmp", "webp"].contains(&ext.as_str()) {
        return Err(format!("{}: unknown image type; name the output .png, .jpg, .bmp or .webp", dest.display()));
    }
    let img = to_rgb8(&y.clamp(Some(0.0), Some(1.0)).map_err(s)?).map_err(s)?;
    img.save(dest).map_err(|e| format!("{}: cannot write: {e}", dest.display()))
}

/// The style pictures, colour-matched to the content when asked.
fn styles(c: &Common, content: &Var) -> Res<Vec<Var>> {
    c.style
        .iter()
        .map(|p| {
            let st = picture(p, c.max_size)?;
            if c.preserve_color {
                coral(&st, content).map_err(|e| format!("{}: {e}", p.display()))
            } else {
                Ok(st)
            }
        })
        .collect()
}

fn report(c: &Common, dest: &Path, y: &Var, t: Instant, what: &str) {
    if !c.quiet {
        eprintln!(
            "stylize: {what}: {} -> {} ({}x{}, {:.2}s)",
            c.content.display(),
            dest.display(),
            y.shape()[3],
            y.shape()[2],
            t.elapsed().as_secs_f64()
        );
    }
}

/// Loss weights must be finite and non-negative; the error names the flag.
fn check_weights(weights: &[(&str, f64)]) -> Res<()> {
    for (flag, v) in weights {
        if !(v.is_finite() && *v >= 0.0) {
            return Err(format!("{flag} must be a finite number >= 0, got {v}"));
        }
    }
    Ok(())
}

fn one_style(c: &Common, cmd: &str) -> Res<()> {
    if c.style.len() != 1 {
        return Err(format!("{cmd} takes one --style picture, got {}", c.style.len()));
    }
    Ok(())
}

fn run(cmd: Cmd) -> Res<()> {
    match cmd {
        Cmd::Adain { common: c, decoder, alpha, weights } => {
            check_inputs(&c)?;
            if !(0.0..=1.0).contains(&alpha) {
                return Err(format!("--alpha must be between 0 and 1, got {alpha}"));
            }
            let w = match weights.len() {
                0 if c.style.len() == 1 => None,
                0 => return Err(format!("{} style pictures need --weights (one each)", c.style.len())),
                n if n != c.style.len() => return Err(format!("{n} --weights for {} style pictures", c.style.len())),
                _ if weights.iter().any(|v| !v.is_finite() || *v < 0.0) || weights.iter().sum::<f64>() <= 0.0 => {
                    return Err(format!("--weights must be non-negative with a positive sum, got {weights:?}"))
                }
                _ => {
                    let total: f64 = weights.iter().sum();
                    Some(weights.iter().map(|v| v / total).collect::<Vec<_>>())
                }
            };
            let net = AdaIn::load(&c.vgg, &decoder).map_err(s)?;
            let t = Instant::now();
            let content = picture(&c.content, c.max_size)?;
            let st = styles(&c, &content)?;
            let y = padded(&content, &c.content, 8, |x| net.stylize(x, &st, w.as_deref(), alpha))?;
            let dest = out_path(&c, "adain");
            save(&y, &dest)?;
            report(&c, &dest, &y, t, "adain");
            Ok(())
        }
        Cmd::Mccnet { common: c, decoder, mcc_module, alpha } => {
            check_inputs(&c)?;
            one_style(&c, "mccnet")?;
            if !(0.0..=1.0).contains(&alpha) {
                return Err(format!("--alpha must be between 0 and 1, got {alpha}"));
            }
            let net = MccNet::load(&c.vgg, &decoder, &mcc_module).map_err(s)?;
            let t = Instant::now();
            let content = picture(&c.content, c.max_size)?;
            let st = styles(&c, &content)?;
            let y = padded(&content, &c.content, 8, |x| net.stylize(x, &st[0], alpha))?;
            let dest = out_path(&c, "mccnet");
            save(&y, &dest)?;
            report(&c, &dest, &y, t, "mccnet");
            Ok(())
        }
        Cmd::Sanet { common: c, decoder, transformer } => {
            check_inputs(&c)?;
            one_style(&c, "sanet")?;
            let net = SaNet::load(&c.vgg, &decoder, &transformer).map_err(s)?;
            let t = Instant::now();
            let content = picture(&c.content, c.max_size)?;
            let st = styles(&c, &content)?;
            let y = padded(&content, &c.content, 16, |x| net.stylize(x, &st[0]))?;
            let dest = out_path(&c, "sanet");
            save(&y, &dest)?;
            report(&c, &dest, &y, t, "sanet");
            Ok(())
        }
        Cmd::Gatys { common: c, steps, optimizer, lr, content_weight, style_weight, tv_weight } => {
            check_inputs(&c)?;
            one_style(&c, "gatys")?;
            if !(lr.is_finite() && lr > 0.0) || steps == 0 {
                return Err(format!("--lr and --steps must be positive, got {lr} and {steps}"));
            }
            check_weights(&[
                ("--content-weight", content_weight),
                ("--style-weight", style_weight),
                ("--tv-weight", tv_weight),
            ])?;
            let vgg = Vgg19::load(&c.vgg).map_err(s)?;
            let t = Instant::now();
            let content = picture(&c.content, c.max_size)?;
            let st = styles(&c, &content)?;
            let optimizer = match optimizer {
                Opt::Adam => GatysOptimizer::Adam(lr),
                Opt::Lbfgs => GatysOptimizer::Lbfgs(20),
            };
            let opts = GatysOptions { content_weight, style_weight, tv_weight, optimizer };
            let g = Gatys::new(&vgg, &content, &st[0], opts).map_err(s)?;
            let img = content.detach().try_add(0.0).map_err(s)?;
            img.sync().map_err(s)?;
            let img = img.requires_grad_(true).map_err(s)?;
            let bar = bar(steps as u64, c.quiet);
            g.run(&img, steps, &mut |_, l| {
                if let Some(b) = &bar {
                    b.set_message(format!("loss {l:.4e}"));
                    b.inc(1);
                }
            })
            .map_err(s)?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let dest = out_path(&c, "gatys");
            save(&img.detach(), &dest)?;
            report(&c, &dest, &img, t, "gatys");
            Ok(())
        }
        Cmd::TrainAdain {
            content_dir,
            style_dir,
            vgg,
            save_dir,
            max_iter,
            batch_size,
            lr,
            lr_decay,
            content_weight,
            style_weight,
            image_size,
            crop,
            save_interval,
            sample_interval,
            seed,
            resume,
            precision,
            loss_scale,
            quiet,
        } => {
            check_weights(&[("--content-weight", content_weight), ("--style-weight", style_weight)])?;
            if crop % 8 != 0 {
                return Err(format!("--crop must be a multiple of 8 (the decoder's), got {crop}"));
            }
            let mut net = AdaIn::new().map_err(s)?;
            net.vgg = Vgg19::load(&vgg).map_err(s)?;
            let job = AdaInTraining { net, content_weight, style_weight };
            let o = TrainOptions {
                content_dir,
                style_dir,
                save_dir,
                max_iter,
                batch_size,
                lr,
                lr_decay,
                image_size,
                crop,
                save_interval,
                sample_interval,
                seed,
                resume,
                mixed_precision: match precision {
                    Precision::F32 => None,
                    Precision::F16 => Some(DType::F16),
                    Precision::Bf16 => Some(DType::BF16),
                },
                init_scale: loss_scale,
            };
            let bar = bar(max_iter, quiet);
            let t = Instant::now();
            let mut skipped = 0u64;
            let done = train(&job, &o, &mut |r| {
                let scale = match r.scaling {
                    Some((scale, skip)) => {
                        skipped += skip as u64;
                        format!(" scale {scale} ({skipped} skipped)")
                    }
                    None => String::new(),
                };
                if let Some(b) = &bar {
                    b.set_position(r.step);
                    let terms: Vec<String> = r.terms.iter().map(|(n, v)| format!("{n} {v:.3}")).collect();
                    b.set_message(format!("loss {:.3} ({}) lr {:.2e}{scale}", r.loss, terms.join(", "), r.lr));
                    if let Some(p) = &r.checkpoint {
                        b.println(format!("checkpoint {}", p.display()));
                    }
                }
            })
            .map_err(s)?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if !quiet {
                let skips = if skipped > 0 {
                    format!("; {skipped} steps skipped (gradients overflowed)")
                } else {
                    String::new()
                };
                eprintln!("stylize: train-adain reached step {done} in {:.1}s{skips}", t.elapsed().as_secs_f64());
            }
            Ok(())
        }
    }
}

fn bar(len: u64, quiet: bool) -> Option<ProgressBar> {
    if quiet {
        return None;
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(b)
}
