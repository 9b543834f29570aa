//! Folder datasets and the loader: every image exactly once per epoch with shuffle
//! on, seeded orders, drop_last, infinite sampling, transforms, and a corrupt file
//! that is skipped and counted instead of stopping the run.

use jit_nn::data::{apply, normalize, ImageFolder, Loader, LoaderOptions, Transform};
use jit_ops::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;

/// 7 readable pictures of different sizes (some in a subfolder), one corrupt JPEG
/// and a text file.
fn folder(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("jit-data-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("sub")).unwrap();
    for i in 0..7u32 {
        let img = image::RgbImage::from_fn(10 + i, 12 + 2 * i, |x, y| {
            image::Rgb([(x * 20) as u8, (y * 10) as u8, (i * 30) as u8])
        });
        let p = if i % 2 == 0 { d.join(format!("img{i}.png")) } else { d.join("sub").join(format!("img{i}.PNG")) };
        img.save(p).unwrap();
    }
    std::fs::write(d.join("broken.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    std::fs::write(d.join("notes.txt"), "ignored").unwrap();
    d
}

fn opts(batch: usize) -> LoaderOptions {
    LoaderOptions { batch_size: batch, shuffle: true, seed: 42, workers: 3, ..Default::default() }
}

const SQUARE: [Transform; 2] = [Transform::ResizeShorter(8), Transform::CenterCrop([8, 8])];

#[test]
fn every_image_once_per_epoch_and_corrupt_files_are_skipped() {
    let d = folder("epoch");
    let ds = ImageFolder::new(&d).unwrap();
    assert_eq!(ds.files.len(), 8, "7 pictures and the corrupt one; the text file is ignored");
    let loader = Loader::new(&ds, SQUARE.to_vec(), opts(3)).unwrap();
    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    let mut sizes = Vec::new();
    let mut loader = loader;
    for batch in loader.by_ref() {
        let b = batch.unwrap();
        assert_eq!(b.images.shape()[1..], [3, 8, 8]);
        sizes.push(b.paths.len());
        for p in b.paths {
            *seen.entry(p).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(seen.values().all(|&c| c == 1), "each picture exactly once: {seen:?}");
    assert_eq!(loader.skipped(), 1);
    assert_eq!(sizes.iter().sum::<usize>(), 7);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn seeded_orders_drop_last_and_infinite_sampling() {
    let d = folder("order");
    let ds = ImageFolder::new(&d).unwrap();
    let order = |seed: u64| -> Vec<PathBuf> {
        let o = LoaderOptions { seed, ..opts(2) };
        Loader::new(&ds, SQUARE.to_vec(), o).unwrap().flat_map(|b| b.unwrap().paths).collect()
    };
    assert_eq!(order(7), order(7), "the same seed gives the same order");
    let orders: Vec<Vec<PathBuf>> = (0..4).map(order).collect();
    assert!(orders.windows(2).any(|w| w[0] != w[1]), "different seeds shuffle differently");
    // drop_last: 8 files, batches of 3 -> two full batches
    let o = LoaderOptions { drop_last: true, ..opts(3) };
    let batches: Vec<usize> = Loader::new(&ds, SQUARE.to_vec(), o).unwrap().map(|b| b.unwrap().paths.len()).collect();
    assert_eq!(batches.len(), 2);
    // infinite: keeps going across epochs
    let o = LoaderOptions { infinite: true, ..opts(4) };
    let n: usize = Loader::new(&ds, SQUARE.to_vec(), o).unwrap().take(10).map(|b| b.unwrap().paths.len()).sum();
    assert!(n >= 30, "10 batches across several epochs gave {n} images");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn transforms_and_errors() {
    let img = image::RgbImage::from_fn(20, 10, |x, _| image::Rgb([x as u8, 0, 0]));
    let r = apply(img.clone(), &[Transform::ResizeShorter(5)], 0).unwrap();
    assert_eq!(r.dimensions(), (10, 5));
    let c = apply(img.clone(), &[Transform::CenterCrop([4, 6])], 0).unwrap();
    assert_eq!(c.dimensions(), (6, 4));
    assert_eq!(c.get_pixel(0, 0).0[0], 7, "centre crop starts at x = (20 - 6) / 2");
    let a = apply(img.clone(), &[Transform::RandomCrop([4, 6]), Transform::RandomHorizontalFlip], 9).unwrap();
    let b = apply(img.clone(), &[Transform::RandomCrop([4, 6]), Transform::RandomHorizontalFlip], 9).unwrap();
    assert_eq!(a, b, "random transforms are a function of the seed");
    let e = apply(img, &[Transform::CenterCrop([40, 6])], 0).unwrap_err();
    assert_eq!(e, "a 20x10 picture is smaller than the 6x40 crop");
    let x = Var::ones(&[2, 3, 2, 2], DType::F32);
    let n = normalize(&x, [0.5, 0.25, 0.0], [0.5, 0.25, 2.0]).unwrap().to_vec::<f32>().unwrap();
    assert_eq!((n[0], n[4], n[8]), (1.0, 3.0, 0.5));
    // pictures of different sizes in one batch need a resize
    let d = folder("sizes");
    let ds = ImageFolder::new(&d).unwrap();
    let first = Loader::new(&ds, vec![], opts(4)).unwrap().next().unwrap();
    let e = first.err().expect("mixed sizes").to_string();
    assert!(e.contains("but the batch's first image is") && e.contains("add a resize or crop transform"), "{e}");
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(ImageFolder::new(&empty).unwrap_err().to_string().contains("no images"));
    assert!(ImageFolder::new(d.join("nope")).unwrap_err().to_string().contains("cannot list the directory"));
    std::fs::remove_dir_all(&d).unwrap();
}
