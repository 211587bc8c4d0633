//! PNG outputs drawn with the `image` crate only: heatmaps, overlays, trajectories and
//! training curves (with a tiny built-in 3×5 font for titles, ticks and legends).

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::DataError;
use crate::io::write_atomic;
use crate::preprocess::decode_rgb;

/// Colour of predicted positions.
pub const PRED_COLOUR: [u8; 3] = [255, 40, 40];
/// Colour of target positions.
pub const TARGET_COLOUR: [u8; 3] = [40, 255, 255];

/// Encodes an image as PNG and writes it atomically.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<(), DataError> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| DataError::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Inferno-like colour map for values in [0, 1] (clamped).
pub fn colormap(v: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [0.0, 0.0, 4.0],
        [87.0, 16.0, 110.0],
        [188.0, 55.0, 84.0],
        [249.0, 142.0, 9.0],
        [252.0, 255.0, 164.0],
    ];
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = v * (STOPS.len() - 1) as f32;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let t = pos - i as f32;
    let mut out = [0u8; 3];
    for c in 0..3 {
        out[c] = (STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * t).round() as u8;
    }
    out
}

fn check_plane(values: &[f32], w: usize, h: usize) -> Result<(), DataError> {
    if w == 0 || h == 0 || values.len() != w * h {
        return Err(DataError::Shape(format!(
            "heatmap of {w}x{h} needs {} values, got {}",
            w * h,
            values.len()
        )));
    }
    Ok(())
}

/// Colour-mapped heatmap (values clamped to [0, 1], which matches sigmoid outputs and targets).
pub fn heatmap_image(values: &[f32], w: usize, h: usize) -> Result<RgbImage, DataError> {
    check_plane(values, w, h)?;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        Rgb(colormap(values[y as usize * w + x as usize]))
    }))
}

/// Writes [`heatmap_image`] as PNG.
pub fn save_heatmap_png(path: &Path, values: &[f32], w: usize, h: usize) -> Result<(), DataError> {
    save_png(path, &heatmap_image(values, w, h)?)
}

fn blend(img: &mut RgbImage, x: i64, y: i64, c: [u8; 3], a: f32) {
    if x < 0 || y < 0 || x >= i64::from(img.width()) || y >= i64::from(img.height()) {
        return;
    }
    let p = img.get_pixel_mut(x as u32, y as u32);
    for (v, ck) in p.0.iter_mut().zip(c) {
        *v = (f32::from(*v) * (1.0 - a) + f32::from(ck) * a).round() as u8;
    }
}

/// Draws a 1-2 px circle outline.
pub fn draw_circle(img: &mut RgbImage, cx: f32, cy: f32, r: f32, c: [u8; 3]) {
    let r_out = r + 1.0;
    let (x0, x1) = ((cx - r_out).floor() as i64, (cx + r_out).ceil() as i64);
    let (y0, y1) = ((cy - r_out).floor() as i64, (cy + r_out).ceil() as i64);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            if (d - r).abs() <= 0.8 {
                blend(img, x, y, c, 1.0);
            }
        }
    }
}

/// Draws a `+` of half-size `s`.
pub fn draw_cross(img: &mut RgbImage, cx: f32, cy: f32, s: f32, c: [u8; 3]) {
    draw_line(img, (cx - s, cy), (cx + s, cy), c);
    draw_line(img, (cx, cy - s), (cx, cy + s), c);
}

/// Draws a 1 px line (DDA).
pub fn draw_line(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), c: [u8; 3]) {
    let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0);
    if !steps.is_finite() || steps > 1e5 {
        return;
    }
    let n = steps as usize;
    for i in 0..=n {
        let t = i as f32 / steps;
        let x = a.0 + (b.0 - a.0) * t;
        let y = a.1 + (b.1 - a.1) * t;
        blend(img, x.round() as i64, y.round() as i64, c, 1.0);
    }
}

/// Heatmap blended over `frame` (alpha `0.6 * value`), predicted ball as a circle and target
/// as a cross. `pred` / `target` are in heatmap pixels of a `heatmap_wh` heatmap and are scaled
/// to the frame by `frame_w / Wh`, `frame_h / Hh`.
pub fn overlay_image(
    frame: &RgbImage,
    heatmap: &[f32],
    heatmap_wh: (usize, usize),
    pred: Option<(f32, f32)>,
    target: Option<(f32, f32)>,
) -> Result<RgbImage, DataError> {
    let (hw, hh) = heatmap_wh;
    check_plane(heatmap, hw, hh)?;
    let mut img = frame.clone();
    let (fw, fh) = img.dimensions();
    let (sx, sy) = (fw as f32 / hw as f32, fh as f32 / hh as f32);
    for y in 0..fh {
        let hy = ((y as f32 / sy) as usize).min(hh - 1);
        for x in 0..fw {
            let hx = ((x as f32 / sx) as usize).min(hw - 1);
            let v = heatmap[hy * hw + hx];
            let v = if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                0.0
            };
            if v > 0.01 {
                blend(&mut img, i64::from(x), i64::from(y), colormap(v), 0.6 * v);
            }
        }
    }
    let r = (fw as f32 / 80.0).max(4.0);
    if let Some((x, y)) = target {
        draw_cross(&mut img, x * sx, y * sy, r, TARGET_COLOUR);
    }
    if let Some((x, y)) = pred {
        draw_circle(&mut img, x * sx, y * sy, r, PRED_COLOUR);
    }
    Ok(img)
}

/// Decodes `frame_path` and writes [`overlay_image`] as PNG.
pub fn save_overlay_png(
    path: &Path,
    frame_path: &Path,
    heatmap: &[f32],
    heatmap_wh: (usize, usize),
    pred: Option<(f32, f32)>,
    target: Option<(f32, f32)>,
) -> Result<(), DataError> {
    let frame = decode_rgb(frame_path).map_err(DataError::Dataset)?;
    save_png(
        path,
        &overlay_image(&frame, heatmap, heatmap_wh, pred, target)?,
    )
}

/// A track for [`trajectory_image`]: points (frame pixels, `None` = no ball) and a colour.
pub type Track<'a> = (&'a [Option<(f32, f32)>], [u8; 3]);

/// Draws trajectories (points in frame pixels; `None` = no ball) over `first_frame`: dots joined
/// by lines between consecutive present points.
pub fn trajectory_image(first_frame: &RgbImage, tracks: &[Track<'_>]) -> RgbImage {
    let mut img = first_frame.clone();
    for (points, colour) in tracks {
        let mut prev: Option<(f32, f32)> = None;
        for p in points.iter() {
            if let Some(p) = *p {
                if let Some(q) = prev {
                    draw_line(&mut img, q, p, *colour);
                }
                draw_circle(&mut img, p.0, p.1, 2.0, *colour);
            }
            prev = *p;
        }
    }
    img
}

/// Writes a trajectory PNG over the decoded `first_frame_path`: predictions red, targets cyan.
pub fn save_trajectory_png(
    path: &Path,
    first_frame_path: &Path,
    pred: &[Option<(f32, f32)>],
    target: &[Option<(f32, f32)>],
) -> Result<(), DataError> {
    let frame = decode_rgb(first_frame_path).map_err(DataError::Dataset)?;
    let img = trajectory_image(&frame, &[(target, TARGET_COLOUR), (pred, PRED_COLOUR)]);
    save_png(path, &img)
}

/// 3×5 glyph rows (3 bits each, MSB left); unknown characters render as blanks.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        _ => [0; 5],
    }
}

/// Draws `text` with the 3×5 font scaled by `scale`, top-left at `(x, y)`.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: i64, c: [u8; 3]) {
    for (i, ch) in text.chars().enumerate() {
        let gx = x + i as i64 * 4 * scale;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            blend(
                                img,
                                gx + col * scale + dx,
                                y + row as i64 * scale + dy,
                                c,
                                1.0,
                            );
                        }
                    }
                }
            }
        }
    }
}

fn fmt_tick(v: f32) -> String {
    let a = v.abs();
    if a != 0.0 && !(0.01..10000.0).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];

/// Line chart of `(x, y)` series (e.g. loss per step) as a 800×480 PNG with axes, 5 ticks per
/// axis, a title and a legend. Non-finite points are ignored.
pub fn plot_curves(
    path: &Path,
    title: &str,
    series: &[(&str, Vec<(f32, f32)>)],
) -> Result<(), DataError> {
    let (w, h) = (800i64, 480i64);
    let (left, right, top, bottom) = (80i64, 40i64, 40i64, 40i64);
    let mut img = RgbImage::from_pixel(w as u32, h as u32, Rgb([255, 255, 255]));
    let finite = series
        .iter()
        .flat_map(|(_, pts)| pts.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
    for &(x, y) in finite {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    let (pw, ph) = ((w - left - right) as f32, (h - top - bottom) as f32);
    let to_px = |x: f32, y: f32| {
        (
            left as f32 + (x - x0) / (x1 - x0) * pw,
            (h - bottom) as f32 - (y - y0) / (y1 - y0) * ph,
        )
    };
    let black = [0, 0, 0];
    let grey = [225, 225, 225];
    for i in 0..=4 {
        let t = i as f32 / 4.0;
        let (gx, _) = to_px(x0 + t * (x1 - x0), y0);
        let (_, gy) = to_px(x0, y0 + t * (y1 - y0));
        draw_line(&mut img, (gx, top as f32), (gx, (h - bottom) as f32), grey);
        draw_line(&mut img, (left as f32, gy), ((w - right) as f32, gy), grey);
        let xl = fmt_tick(x0 + t * (x1 - x0));
        draw_text(
            &mut img,
            gx as i64 - 4 * xl.len() as i64,
            h - bottom + 8,
            &xl,
            2,
            black,
        );
        let yl = fmt_tick(y0 + t * (y1 - y0));
        draw_text(
            &mut img,
            left - 8 - 8 * yl.len() as i64,
            gy as i64 - 5,
            &yl,
            2,
            black,
        );
    }
    let (ox, oy) = (left as f32, (h - bottom) as f32);
    draw_line(&mut img, (ox, top as f32), (ox, oy), black);
    draw_line(&mut img, (ox, oy), ((w - right) as f32, oy), black);
    draw_text(&mut img, left, 12, title, 3, black);
    for (k, (name, pts)) in series.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let mut prev: Option<(f32, f32)> = None;
        for &(x, y) in pts.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
            let p = to_px(x, y);
            if let Some(q) = prev {
                draw_line(&mut img, q, p, c);
            } else {
                draw_circle(&mut img, p.0, p.1, 1.0, c);
            }
            prev = Some(p);
        }
        let ly = top + 8 + 16 * k as i64;
        let lx = w - right - 200;
        for dy in 0..4 {
            draw_line(
                &mut img,
                (lx as f32, (ly + 3 + dy) as f32),
                ((lx + 20) as f32, (ly + 3 + dy) as f32),
                c,
            );
        }
        draw_text(&mut img, lx + 26, ly, name, 2, black);
    }
    save_png(path, &img)
}
