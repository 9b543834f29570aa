//! Image datasets: a folder of images (searched recursively), transforms on the
//! decoded pictures, and a loader that decodes on worker threads, prefetches,
//! batches, shuffles with a seed and can sample forever. An image that cannot be
//! read or decoded is skipped, counted and reported once; it never stops a run.

use crate::image_io::from_rgb8;
use image::imageops::FilterType;
use image::RgbImage;
use jit_core::{Error, Result, Var};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// File extensions a folder dataset picks up (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// The image files under a directory, sorted by path.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// Every image file found.
    pub files: Vec<PathBuf>,
}

impl ImageFolder {
    /// Lists the images under `root` recursively. A missing root, or one without
    /// images, is an error naming it.
    pub fn new(root: impl AsRef<Path>) -> Result<ImageFolder> {
        let root = root.as_ref();
        let mut files = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            let entries =
                std::fs::read_dir(&d).map_err(|e| Error::file(&d, format!("cannot list the directory: {e}")))?;
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                {
                    files.push(p);
                }
            }
        }
        if files.is_empty() {
            return Err(Error::file(root, format!("no images ({}) found", IMAGE_EXTENSIONS.join(", "))));
        }
        files.sort();
        Ok(ImageFolder { files })
    }
}

/// One step of preprocessing, applied in order to a decoded picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// Resize so that the shorter side has this length (aspect kept; bilinear).
    ResizeShorter(u32),
    /// Resize to exactly `[height, width]`.
    Resize([u32; 2]),
    /// The centre `[height, width]` crop (an error for smaller pictures).
    CenterCrop([u32; 2]),
    /// A random `[height, width]` crop (position from the loader's seed).
    RandomCrop([u32; 2]),
    /// Mirror left-right with probability one half.
    RandomHorizontalFlip,
}

/// splitmix64: the loader's seeded random numbers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Applies `transforms` to `img`; `seed` drives the random ones.
pub fn apply(img: RgbImage, transforms: &[Transform], seed: u64) -> std::result::Result<RgbImage, String> {
    let mut img = img;
    for (k, t) in transforms.iter().enumerate() {
        let r = mix(seed ^ (k as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        img = match *t {
            Transform::ResizeShorter(s) => {
                let (w, h) = img.dimensions();
                let (nw, nh) = if w <= h {
                    (s, ((h as f64) * s as f64 / w as f64).round() as u32)
                } else {
                    (((w as f64) * s as f64 / h as f64).round() as u32, s)
                };
                image::imageops::resize(&img, nw.max(1), nh.max(1), FilterType::Triangle)
            }
            Transform::Resize([h, w]) => image::imageops::resize(&img, w, h, FilterType::Triangle),
            Transform::CenterCrop([h, w]) | Transform::RandomCrop([h, w]) => {
                let (iw, ih) = img.dimensions();
                if iw < w || ih < h {
                    return Err(format!("a {iw}x{ih} picture is smaller than the {w}x{h} crop"));
                }
                let (x, y) = if matches!(t, Transform::CenterCrop(_)) {
                    ((iw - w) / 2, (ih - h) / 2)
                } else {
                    ((r % u64::from(iw - w + 1)) as u32, ((r >> 32) % u64::from(ih - h + 1)) as u32)
                };
                image::imageops::crop_imm(&img, x, y, w, h).to_image()
            }
            Transform::RandomHorizontalFlip => {
                if r & 1 == 1 {
                    image::imageops::flip_horizontal(&img)
                } else {
                    img
                }
            }
        };
    }
    Ok(img)
}

/// Per-channel `(x - mean) / std` on `[N, 3, H, W]` (torchvision's `Normalize`).
pub fn normalize(x: &Var, mean: [f64; 3], std: [f64; 3]) -> Result<Var> {
    let m = Var::from_vec(mean.map(|v| v as f32).to_vec(), &[1, 3, 1, 1])?;
    let s = Var::from_vec(std.map(|v| v as f32).to_vec(), &[1, 3, 1, 1])?;
    x.try_sub(&m)?.try_div(&s)
}

/// How a [`Loader`] iterates.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// Images per batch.
    pub batch_size: usize,
    /// Shuffle every epoch (from `seed`).
    pub shuffle: bool,
    /// Seed of the shuffles and random transforms.
    pub seed: u64,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Never stop: epoch after epoch.
    pub infinite: bool,
    /// Decoding threads.
    pub workers: usize,
    /// Batches decoded ahead.
    pub prefetch: usize,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 1,
            shuffle: false,
            seed: 0,
            drop_last: false,
            infinite: false,
            workers: 2,
            prefetch: 2,
        }
    }
}

/// A batch: the images and the files they came from.
pub struct Batch {
    /// `[N, 3, H, W]` in `0..=1`.
    pub images: Var,
    /// One path per image.
    pub paths: Vec<PathBuf>,
}

/// Batches of a dataset, decoded on worker threads. Iterate it; every item is a
/// batch or the error that stopped the loader (pictures of different sizes in one
/// batch, say: add a resize or crop).
pub struct Loader {
    rx: mpsc::Receiver<Result<Batch>>,
    skipped: Arc<AtomicUsize>,
    _workers: Vec<std::thread::JoinHandle<()>>,
}

impl Loader {
    /// Starts loading `dataset` with `transforms`.
    pub fn new(dataset: &ImageFolder, transforms: Vec<Transform>, opts: LoaderOptions) -> Result<Loader> {
        if opts.batch_size == 0 || opts.workers == 0 {
            return Err(Error::argument("Loader", "batch_size and workers must be positive"));
        }
        let files = Arc::new(dataset.files.clone());
        let skipped = Arc::new(AtomicUsize::new(0));
        // the order of (epoch, file) jobs, one batch per job list
        let jobs = Arc::new(Mutex::new(BatchPlan::new(files.len(), &opts)));
        let (tx, rx) = mpsc::sync_channel(opts.prefetch.max(1));
        let transforms = Arc::new(transforms);
        let mut handles = Vec::new();
        // one producer thread hands out batches in order; workers decode its images
        let (files2, skipped2) = (files.clone(), skipped.clone());
        handles.push(std::thread::spawn(move || loop {
            let Some(batch) = jobs.lock().unwrap_or_else(|e| e.into_inner()).next() else { return };
            let decoded = decode_batch(&files2, &batch, &transforms, opts.seed, opts.workers, &skipped2);
            if tx.send(decoded).is_err() {
                return;
            }
        }));
        Ok(Loader { rx, skipped, _workers: handles })
    }

    /// Pictures skipped so far because they could not be read or decoded.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        self.rx.recv().ok()
    }
}

/// The file indices of each batch, epoch after epoch.
struct BatchPlan {
    n: usize,
    opts: LoaderOptions,
    epoch: u64,
    order: Vec<usize>,
    pos: usize,
}

impl BatchPlan {
    fn new(n: usize, opts: &LoaderOptions) -> BatchPlan {
        let mut p = BatchPlan { n, opts: opts.clone(), epoch: 0, order: vec![], pos: 0 };
        p.order = p.epoch_order();
        p
    }

    fn epoch_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.n).collect();
        if self.opts.shuffle {
            let mut s = mix(self.opts.seed ^ self.epoch.wrapping_mul(0xA076_1D64_78BD_642F));
            for i in (1..order.len()).rev() {
                s = mix(s);
                order.swap(i, (s % (i as u64 + 1)) as usize);
            }
        }
        order
    }

    /// `(epoch, file index)` of the next batch.
    fn next(&mut self) -> Option<Vec<(u64, usize)>> {
        let b = self.opts.batch_size;
        if self.pos >= self.n || (self.opts.drop_last && self.pos + b > self.n) {
            if !self.opts.infinite || (self.n < b && self.opts.drop_last) {
                return None;
            }
            self.epoch += 1;
            self.order = self.epoch_order();
            self.pos = 0;
        }
        let end = (self.pos + b).min(self.n);
        let batch = self.order[self.pos..end].iter().map(|&i| (self.epoch, i)).collect();
        self.pos = end;
        Some(batch)
    }
}

fn decode_batch(
    files: &[PathBuf],
    batch: &[(u64, usize)],
    transforms: &[Transform],
    seed: u64,
    workers: usize,
    skipped: &AtomicUsize,
) -> Result<Batch> {
    let results: Vec<Option<(PathBuf, std::result::Result<RgbImage, String>)>> = std::thread::scope(|s| {
        let chunks: Vec<&[(u64, usize)]> = batch.chunks(batch.len().div_ceil(workers).max(1)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&(epoch, i)| {
                            let path = &files[i];
                            let img = match crate::image_io::read_rgb8(path) {
                                Ok(img) => img,
                                Err(e) => {
                                    if skipped.fetch_add(1, Ordering::Relaxed) == 0 {
                                        eprintln!("warning: skipping {e} (further skips are only counted)");
                                    }
                                    return None;
                                }
                            };
                            let s = mix(seed ^ mix(epoch) ^ (i as u64).wrapping_mul(0x9E37_79B9));
                            Some((path.clone(), apply(img, transforms, s)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut images = Vec::new();
    let mut paths = Vec::new();
    for (path, img) in results.into_iter().flatten() {
        let img = img.map_err(|e| Error::file(&path, e))?;
        if let Some(first) = images.first().map(|v: &Var| v.shape().to_vec()) {
            let (w, h) = img.dimensions();
            if first[2..] != [h as usize, w as usize] {
                return Err(Error::file(
                    &path,
                    format!(
                        "is {w}x{h} but the batch's first image is {}x{}; add a resize or crop transform",
                        first[3], first[2]
                    ),
                ));
            }
        }
        images.push(from_rgb8(&img)?);
        paths.push(path);
    }
    if images.is_empty() {
        return Err(Error::argument("Loader", "every image of a batch was unreadable"));
    }
    Ok(Batch { images: jit_ops::cat(&images, 0)?, paths })
}
