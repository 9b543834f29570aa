//! Images as tensors: decode PNG, JPEG, BMP and WebP into `[1, 3, H, W]` f32 values
//! in `0..=1` (RGB; grey is repeated, alpha dropped), and encode `[3, H, W]` or
//! `[1, 3, H, W]` values back (clamped to `0..=1`, rounded to 8 bits) in the format
//! the file extension names. Writes are atomic.

use crate::safetensors_io::write_atomic;
use jit_core::{DType, Error, Result, Var};
use std::path::{Path, PathBuf};

/// The image at `path` as `[1, 3, H, W]` f32 in `0..=1`.
pub fn load_image(path: impl AsRef<Path>) -> Result<Var> {
    from_rgb8(&read_rgb8(path)?)
}

/// The memory the image decoder may allocate for a file of `file_bytes`: 1024 times
/// the file's size (deflate, and so PNG, compresses at most about 1032 to 1, and
/// the other formats less), at least the `image` crate's default of 512 MiB, at
/// most three quarters of what the system has available. A damaged header that
/// claims a huge picture in a small file is refused before the decoder allocates.
fn decode_budget(file_bytes: u64) -> u64 {
    let avail = jit_core::system_available_bytes().map_or(u64::MAX, |a| a as u64 / 4 * 3);
    file_bytes.saturating_mul(1024).max(512 << 20).min(avail.max(512 << 20))
}

/// Decodes the image file at `path` (PNG, JPEG, BMP or WebP, told by its content)
/// as 8-bit RGB: grey is repeated, alpha dropped, 16-bit channels rounded. Errors
/// name the file; a picture whose decoding needs more memory than the system has
/// available says so with its size, instead of failing part-way or being killed.
pub fn read_rgb8(path: impl AsRef<Path>) -> Result<image::RgbImage> {
    let path = path.as_ref();
    let open = || -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
        image::ImageReader::open(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?
            .with_guessed_format()
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))
    };
    let mut reader = open()?;
    let file_bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let budget = decode_budget(file_bytes);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(budget);
    reader.limits(limits);
    match reader.decode() {
        Ok(img) => Ok(img.to_rgb8()),
        Err(image::ImageError::Limits(e)) => {
            // the header alone, read without limits (they would refuse it too)
            let dims = open().map(|mut r| {
                r.no_limits();
                r.into_dimensions()
            });
            let size = match dims {
                Ok(Ok((w, h))) => format!(" of {w}x{h} pixels"),
                _ => String::new(),
            };
            Err(Error::file(
                path,
                format!(
                    "not a readable image: decoding the picture{size} needs more than the {budget} bytes allowed \
                     for a {file_bytes}-byte file (1024 times its size, at least 512 MiB, at most 3/4 of the \
                     memory available) ({e}); a damaged header, or a picture to scale down first"
                ),
            ))
        }
        Err(e) => Err(Error::file(path, format!("not a readable image: {e}"))),
    }
}

/// An 8-bit RGB image as `[1, 3, H, W]` f32 in `0..=1`.
///
/// Converted here rather than in the graph: the interleaved 8-bit layout would make
/// every kernel that reads the image gather bytes lane by lane.
pub fn from_rgb8(img: &image::RgbImage) -> Result<Var> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut planar = vec![0.0f32; 3 * h * w];
    let (r, gb) = planar.split_at_mut(h * w);
    let (g, b) = gb.split_at_mut(h * w);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        // the same f32 division the graph would do
        r[i] = px[0] as f32 / 255.0;
        g[i] = px[1] as f32 / 255.0;
        b[i] = px[2] as f32 / 255.0;
    }
    Var::from_vec(planar, &[1, 3, h, w])
}

/// `[3, H, W]` or `[1, 3, H, W]` values in `0..=1` as an 8-bit RGB image (values are
/// clamped; NaN becomes 0).
pub fn to_rgb8(x: &Var) -> Result<image::RgbImage> {
    let (h, w) = match *x.shape() {
        [3, h, w] | [1, 3, h, w] => (h, w),
        _ => {
            return Err(Error::shape(
                "save_image",
                format!(
                    "expected an image of shape [3, H, W] or [1, 3, H, W], got {:?} (save a batch with save_images)",
                    x.shape()
                ),
            ))
        }
    };
    let chw = x.reshape(&[3, h as isize, w as isize])?.cast(DType::F32);
    let hwc = jit_ops::ShapeOps::permute(&chw, &[1, 2, 0])?;
    let v = hwc.to_vec::<f32>()?;
    let bytes: Vec<u8> = v.iter().map(|&f| (f.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    image::RgbImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| Error::shape("save_image", format!("cannot make a {w}x{h} image")))
}

/// Writes `x` (`[3, H, W]` or `[1, 3, H, W]`) to `path` as PNG, JPEG (quality 95),
/// BMP or WebP (lossless), by extension.
pub fn save_image(x: &Var, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    let img = to_rgb8(x)?;
    let mut out = std::io::Cursor::new(Vec::new());
    let encoded = match ext.as_str() {
        "png" => img.write_to(&mut out, image::ImageFormat::Png),
        "jpg" | "jpeg" => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
            img.write_with_encoder(enc)
        }
        "bmp" => img.write_to(&mut out, image::ImageFormat::Bmp),
        "webp" => img.write_to(&mut out, image::ImageFormat::WebP),
        _ => {
            return Err(Error::file(path, "unknown image extension; use .png, .jpg, .jpeg, .bmp or .webp"));
        }
    };
    encoded.map_err(|e| Error::file(path, format!("cannot encode the image: {e}")))?;
    write_atomic(path, out.get_ref())
}

/// Writes each image of a `[N, 3, H, W]` batch to `stem_{i}.ext` next to `path`;
/// returns the paths written.
pub fn save_images(x: &Var, path: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let path = path.as_ref();
    let n = match *x.shape() {
        [n, 3, _, _] => n,
        _ => return Err(Error::shape("save_images", format!("expected [N, 3, H, W], got {:?}", x.shape()))),
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let p = path.with_file_name(format!("{stem}_{i}.{ext}"));
        save_image(&jit_ops::ShapeOps::narrow(x, 0, i, 1)?, &p)?;
        out.push(p);
    }
    Ok(out)
}
