//! Contact sheets: images in a grid with a small label above each, drawn with a
//! built-in 3x5 pixel font (digits and lower-case letters), so no font file is
//! needed.

use image::{Rgb, RgbImage};

/// 3x5 glyphs, one row per `u8` (bits 2..0 = left..right).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'a' => [0, 7, 1, 7, 7],
        'b' => [4, 4, 7, 5, 7],
        'c' => [0, 7, 4, 4, 7],
        'd' => [1, 1, 7, 5, 7],
        'e' => [0, 7, 7, 4, 7],
        'f' => [3, 2, 7, 2, 2],
        'g' => [0, 7, 5, 7, 1],
        'h' => [4, 4, 7, 5, 5],
        'i' => [2, 0, 2, 2, 2],
        'l' => [6, 2, 2, 2, 7],
        'n' => [0, 6, 5, 5, 5],
        'o' => [0, 7, 5, 5, 7],
        'r' => [0, 7, 4, 4, 4],
        's' => [0, 7, 6, 1, 7],
        't' => [2, 7, 2, 2, 3],
        'y' => [0, 5, 7, 1, 7],
        ':' => [0, 2, 0, 2, 0],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        _ => [0, 0, 0, 0, 0],
    }
}

/// Draws `text` at (x, y) with `scale`-pixel dots in `color`; characters outside
/// the font are left blank.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, color: Rgb<u8>) {
    for (k, ch) in text.chars().enumerate() {
        let g = glyph(ch.to_ascii_lowercase());
        let ox = x + k as u32 * 4 * scale;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (px, py) = (ox + col * scale + dx, y + row as u32 * scale + dy);
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Lays `tiles` (label, image; all the size of the first) out in rows of `columns`
/// on white, each with its label above it.
pub fn contact_sheet(tiles: &[(String, RgbImage)], columns: u32) -> RgbImage {
    let (tw, th) = tiles.first().map_or((1, 1), |t| t.1.dimensions());
    let columns = columns.max(1);
    let rows = (tiles.len() as u32).div_ceil(columns);
    let (pad, scale) = (6, 2);
    let label = 5 * scale + 6;
    let mut sheet =
        RgbImage::from_pixel(columns * (tw + pad) + pad, rows * (th + label + pad) + pad, Rgb([255, 255, 255]));
    for (n, (name, img)) in tiles.iter().enumerate() {
        let (r, c) = (n as u32 / columns, n as u32 % columns);
        let (x, y) = (pad + c * (tw + pad), pad + r * (th + label + pad));
        draw_text(&mut sheet, x + 2, y + 2, name, scale, Rgb([0, 0, 0]));
        image::imageops::replace(&mut sheet, img, x as i64, (y + label) as i64);
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_has_the_grid_and_labels() {
        let tiles: Vec<(String, RgbImage)> =
            (0..9).map(|i| (i.to_string(), RgbImage::from_pixel(10, 8, Rgb([10 * i as u8, 0, 0])))).collect();
        let s = contact_sheet(&tiles, 4);
        // 4 columns, 3 rows
        assert_eq!(s.dimensions(), (4 * 16 + 6, 3 * (8 + 16 + 6) + 6));
        // the tile of index 5 (row 1, column 1) is where the layout puts it
        let (x, y) = (6 + 16, 6 + 30 + 16);
        assert_eq!(*s.get_pixel(x, y), Rgb([50, 0, 0]));
        // its label "5" draws black pixels in the label band
        let black = (0..12).flat_map(|dy| (0..8).map(move |dx| (x + 2 + dx, 6 + 30 + 2 + dy)));
        assert!(black.into_iter().any(|(px, py)| *s.get_pixel(px, py) == Rgb([0, 0, 0])));
    }
}
