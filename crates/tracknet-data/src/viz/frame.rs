//! Pictures on a frame: colour-mapped heatmaps, overlays with the predicted and target ball,
//! tracks drawn over a frame (pixel work with `image`; markers and lines with plotters).

use std::path::Path;

use image::{Rgb, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::DataError;
use crate::io::write_atomic;
use crate::preprocess::decode_rgb;

pub(crate) fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

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

fn blend(img: &mut RgbImage, x: u32, y: u32, c: [u8; 3], a: f32) {
    let p = img.get_pixel_mut(x, y);
    for (v, ck) in p.0.iter_mut().zip(c) {
        *v = (f32::from(*v) * (1.0 - a) + f32::from(ck) * a).round() as u8;
    }
}

/// Plotters drawing area over an image's own pixels (pixel coordinates, origin top-left).
fn with_canvas(
    img: &mut RgbImage,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<(), DataError> {
    let size = img.dimensions();
    let result = {
        let root = BitMapBackend::with_buffer(img.as_mut(), size).into_drawing_area();
        draw(&root).and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    result.map_err(|message| DataError::Image {
        path: "<in-memory image>".into(),
        message,
    })
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
                blend(&mut img, x, y, colormap(v), 0.6 * v);
            }
        }
    }
    let r = (fw as f32 / 80.0).max(4.0).round() as i32;
    let px = |(x, y): (f32, f32)| ((x * sx).round() as i32, (y * sy).round() as i32);
    with_canvas(&mut img, |root| {
        if let Some(t) = target {
            root.draw(&Cross::new(px(t), r, rgb(TARGET_COLOUR).stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        if let Some(p) = pred {
            root.draw(&Circle::new(px(p), r, rgb(PRED_COLOUR).stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
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
pub fn trajectory_image(
    first_frame: &RgbImage,
    tracks: &[Track<'_>],
) -> Result<RgbImage, DataError> {
    let mut img = first_frame.clone();
    with_canvas(&mut img, |root| {
        for (points, colour) in tracks {
            draw_track(root, points, *colour, |(x, y)| {
                (x.round() as i32, y.round() as i32)
            })?;
        }
        Ok(())
    })?;
    Ok(img)
}

/// Draws a track (frame pixels, `None` = no ball) on a chart over the frame: dots joined by
/// lines between consecutive present points.
pub(crate) fn draw_track<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    points: &[Option<(f32, f32)>],
    colour: [u8; 3],
    at: impl Fn((f32, f32)) -> CT::From,
) -> Result<(), String>
where
    CT::From: Clone + 'static,
{
    let colour = rgb(colour);
    let mut run: Vec<CT::From> = Vec::new();
    let flush = |run: &mut Vec<CT::From>| -> Result<(), String> {
        if run.len() > 1 {
            area.draw(&PathElement::new(
                std::mem::take(run),
                colour.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        }
        run.clear();
        Ok(())
    };
    for p in points {
        match p {
            Some(p) => {
                area.draw(&Circle::new(at(*p), 3, colour.filled()))
                    .map_err(|e| e.to_string())?;
                run.push(at(*p));
            }
            None => flush(&mut run)?,
        }
    }
    flush(&mut run)
}
