//! Images as tensors: round trips through PNG (exact) and JPEG (close), channel
//! order, clamping, batches, and clear errors for files that are not images.

use jit_nn::image_io::{load_image, save_image, save_images};
use jit_ops::prelude::*;

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("jit-img-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn png_round_trip_is_exact_and_channels_keep_their_order() {
    let d = dir("png");
    // red ramp in channel 0, constant green, blue zero: values on the 8-bit grid
    let (h, w) = (5, 7);
    let mut data = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            data[y * w + x] = (x * 30) as f32 / 255.0;
            data[h * w + y * w + x] = 200.0 / 255.0;
        }
    }
    let img = Var::from_vec(data.clone(), &[1, 3, h, w]).unwrap();
    let p = d.join("ramp.png");
    save_image(&img, &p).unwrap();
    let back = load_image(&p).unwrap();
    assert_eq!(back.shape(), &[1, 3, h, w]);
    assert_eq!(back.to_vec::<f32>().unwrap(), data);
    // the file itself is RGB in the right order
    let decoded = image::open(&p).unwrap().to_rgb8();
    assert_eq!(decoded.get_pixel(6, 0).0, [180, 200, 0]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn jpeg_is_close_values_are_clamped_and_batches_are_split() {
    let d = dir("jpg");
    let x = Var::rand(&[3, 16, 12], DType::F32).unwrap();
    let p = d.join("noise.jpg");
    save_image(&x, &p).unwrap();
    let back = load_image(&p).unwrap();
    assert_eq!(back.shape(), &[1, 3, 16, 12]);
    let out_of_range = Var::from_vec(vec![-1.0f32, 2.0, f32::NAN, 0.5, 0.5, 0.5], &[3, 1, 2]).unwrap();
    let q = d.join("clamped.png");
    save_image(&out_of_range, &q).unwrap();
    let v = load_image(&q).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(v[..3], [0.0, 1.0, 0.0]);
    let batch = Var::rand(&[3, 3, 4, 5], DType::F32).unwrap();
    let written = save_images(&batch, d.join("frame.png")).unwrap();
    assert_eq!(written.len(), 3);
    assert!(written[2].ends_with("frame_2.png") && written[2].exists());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_images_and_shapes_give_clear_errors() {
    let d = dir("bad");
    let p = d.join("notes.png");
    std::fs::write(&p, "not an image").unwrap();
    let e = load_image(&p).unwrap_err().to_string();
    assert!(e.contains("notes.png: not a readable image"), "{e}");
    assert!(load_image(d.join("missing.png")).unwrap_err().to_string().contains("missing.png: cannot read"));
    // a PNG whose header promises 2^30 x 2^30 pixels (3 EiB of RGB): refused before
    // the decoder allocates, with the size
    let huge = d.join("huge.png");
    std::fs::write(&huge, png_header_only(1 << 30, 1 << 30)).unwrap();
    let e = load_image(&huge).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "huge.png: not a readable image: decoding the picture of 1073741824x1073741824 pixels needs more than the \
             536870912 bytes allowed for a {}-byte file",
            std::fs::metadata(&huge).unwrap().len()
        )),
        "{e}"
    );
    assert!(e.contains("a damaged header, or a picture to scale down first"), "{e}");
    let e = save_image(&Var::rand(&[2, 3, 4, 4], DType::F32).unwrap(), d.join("x.png")).unwrap_err().to_string();
    assert!(e.contains("expected an image of shape [3, H, W] or [1, 3, H, W], got [2, 3, 4, 4]"), "{e}");
    let e = save_image(&Var::rand(&[3, 4, 4], DType::F32).unwrap(), d.join("x.tiff")).unwrap_err().to_string();
    assert!(e.contains("unknown image extension"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A PNG of `w` x `h` 8-bit RGB pixels with a valid header and an empty data stream.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = vec![];
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]); // an empty zlib stream
    chunk(&mut out, b"IEND", &[]);
    out
}
