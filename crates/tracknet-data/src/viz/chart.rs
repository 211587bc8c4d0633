//! Charts drawn with plotters on its bitmap backend: panels of line series with labelled axes
//! (training curves, the bench's memory-vs-batch chart) and a clip's trajectory figure.
//!
//! Text uses an embedded DejaVu Sans subset (`assets/`, registered with plotters' `ab_glyph`
//! font table), so a chart looks the same on every machine and needs no system fonts.

use std::path::Path;
use std::sync::OnceLock;

use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::frame::{PRED_COLOUR, TARGET_COLOUR, draw_track, rgb, save_png};
use crate::error::DataError;
use crate::preprocess::decode_rgb;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");
/// The family name the embedded font is registered under.
const FAMILY: &str = "sans-serif";

/// Series colours in order (matplotlib's "tab10" start, which users read without a legend).
pub const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];

/// Registers the embedded font once per process.
fn font_ready() -> Result<(), String> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ok = *READY
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err("the embedded DejaVu Sans subset is not a readable font".into())
    }
}

fn draw_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A tick label with no noise digits: `50`, `0.25`, `1e-4`.
fn tick(v: &f32) -> String {
    let v = *v;
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// Which y axis of a panel a series is read against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Axis {
    /// The left axis (the panel's `y_label`).
    #[default]
    Left,
    /// The right axis (the panel's `right_label`).
    Right,
}

/// One named line. Non-finite points break the line (a gap, not a jump to zero).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points in drawing order.
    pub points: Vec<(f32, f32)>,
    /// Axis the `y` values belong to.
    pub axis: Axis,
    /// Line colour; `None` takes the next [`PALETTE`] entry.
    pub colour: Option<[u8; 3]>,
}

impl Series {
    /// A series on the left axis with a palette colour.
    pub fn new(name: impl Into<String>, points: Vec<(f32, f32)>) -> Self {
        Self {
            name: name.into(),
            points,
            axis: Axis::Left,
            colour: None,
        }
    }

    /// Reads this series against the panel's right axis.
    pub fn on_right(mut self) -> Self {
        self.axis = Axis::Right;
        self
    }

    /// Draws this series in `colour`.
    pub fn coloured(mut self, colour: [u8; 3]) -> Self {
        self.colour = Some(colour);
        self
    }
}

/// One chart of a figure: a title, labelled axes and its series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Panel {
    /// Caption above the chart.
    pub title: String,
    /// Text under the x axis.
    pub x_label: String,
    /// Text beside the left axis.
    pub y_label: String,
    /// Text beside the right axis; the axis is drawn only when set.
    pub right_label: Option<String>,
    /// The lines.
    pub series: Vec<Series>,
    /// The x values are counts (epochs, batch sizes): ticks at whole numbers only.
    pub integer_x: bool,
    /// Fixed left-axis range (e.g. `0..1` for scores); `None` fits the data.
    pub y_range: Option<(f32, f32)>,
}

impl Panel {
    /// An empty panel with its title and axis labels.
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            ..Self::default()
        }
    }

    /// Adds a series.
    pub fn with(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Labels the right axis (for series made with [`Series::on_right`]).
    pub fn right_axis(mut self, label: &str) -> Self {
        self.right_label = Some(label.into());
        self
    }

    /// Whole-number x ticks.
    pub fn integer_x(mut self) -> Self {
        self.integer_x = true;
        self
    }

    /// Fixes the left axis to `lo..hi`.
    pub fn y_range(mut self, lo: f32, hi: f32) -> Self {
        self.y_range = Some((lo, hi));
        self
    }
}

/// Smallest and largest finite value, `None` when there is none.
fn bounds(values: impl Iterator<Item = f32>) -> Option<(f32, f32)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A drawable range: never empty, 5 % head room on both sides of fitted data.
fn fit(b: Option<(f32, f32)>, pad: bool) -> (f32, f32) {
    let (lo, hi) = b.unwrap_or((0.0, 1.0));
    if hi - lo <= f32::EPSILON * lo.abs().max(1.0) {
        let d = lo.abs().max(1.0) * 0.5;
        return (lo - d, hi + d);
    }
    if pad {
        let d = (hi - lo) * 0.05;
        (lo - d, hi + d)
    } else {
        (lo, hi)
    }
}

/// Runs of consecutive finite points (a non-finite point ends a run).
fn runs(points: &[(f32, f32)]) -> Vec<Vec<(f32, f32)>> {
    let mut out = vec![Vec::new()];
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            if let Some(r) = out.last_mut() {
                r.push((x, y));
            }
        } else if out.last().is_some_and(|r| !r.is_empty()) {
            out.push(Vec::new());
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// Draws one series' runs (lines, plus a dot where a run is a single point) and its legend
/// entry with `$draw` of `$chart` (`draw_series` for the left axis, `draw_secondary_series`
/// for the right one).
macro_rules! draw_runs {
    ($chart:expr, $draw:ident, $name:expr, $points:expr, $colour:expr) => {{
        let colour: RGBColor = $colour;
        let mut labelled = false;
        for run in runs($points) {
            let anno = if run.len() == 1 {
                $chart
                    .$draw(std::iter::once(Circle::new(run[0], 3, colour.filled())))
                    .map_err(draw_err)?
            } else {
                $chart
                    .$draw(LineSeries::new(run, colour.stroke_width(2)))
                    .map_err(draw_err)?
            };
            if !labelled {
                anno.label($name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(3))
                });
                labelled = true;
            }
        }
    }};
}

/// The legend box of `$chart`, upper right.
macro_rules! legend {
    ($chart:expr) => {
        $chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(190, 190, 190))
            .label_font((FAMILY, 13))
            .draw()
            .map_err(draw_err)?
    };
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<(), String> {
    let side = |axis: Axis| {
        p.series
            .iter()
            .filter(move |s| s.axis == axis)
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (mut x0, mut x1) = fit(
        bounds(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0))),
        false,
    );
    if p.integer_x {
        (x0, x1) = (x0.floor(), x1.ceil().max(x0.floor() + 1.0));
    }
    let (y0, y1) = p
        .y_range
        .unwrap_or_else(|| fit(bounds(side(Axis::Left).map(|q| q.1)), true));
    let (r0, r1) = fit(bounds(side(Axis::Right).map(|q| q.1)), true);
    let right = p.right_label.is_some();
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .right_y_label_area_size(if right { 64 } else { 0 })
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(draw_err)?
        .set_secondary_coord(x0..x1, r0..r1);
    let ticks = if p.integer_x {
        ((x1 - x0) as usize + 1).min(11)
    } else {
        10
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(243, 243, 243))
        .x_labels(ticks)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick);
    mesh.draw().map_err(draw_err)?;
    if let Some(label) = &p.right_label {
        chart
            .configure_secondary_axes()
            .y_desc(label.as_str())
            .y_label_formatter(&tick)
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .draw()
            .map_err(draw_err)?;
    }
    for (k, s) in p.series.iter().enumerate() {
        let colour = rgb(s.colour.unwrap_or(PALETTE[k % PALETTE.len()]));
        match s.axis {
            Axis::Left => draw_runs!(chart, draw_series, s.name.as_str(), &s.points, colour),
            Axis::Right => draw_runs!(
                chart,
                draw_secondary_series,
                format!("{} (right axis)", s.name),
                &s.points,
                colour
            ),
        }
    }
    if p.series.iter().any(|s| !runs(&s.points).is_empty()) {
        legend!(chart);
    }
    Ok(())
}

/// Renders `panels` stacked top to bottom under `title`, on a white `width × height` canvas.
pub fn panels_image(title: &str, size: (u32, u32), panels: &[Panel]) -> Result<RgbImage, String> {
    font_ready()?;
    let (w, h) = size;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let body = if title.is_empty() {
            root.clone()
        } else {
            root.titled(title, (FAMILY, 22)).map_err(draw_err)?
        };
        let areas = body.split_evenly((panels.len().max(1), 1));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present().map_err(draw_err)?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| "canvas buffer has the wrong size".into())
}

/// Writes [`panels_image`] as PNG (atomically).
pub fn save_panels_png(
    path: &Path,
    title: &str,
    size: (u32, u32),
    panels: &[Panel],
) -> Result<(), DataError> {
    let img = panels_image(title, size, panels).map_err(|message| DataError::Image {
        path: path.to_path_buf(),
        message,
    })?;
    save_png(path, &img)
}

/// `(index, coordinate)` points of one track, NaN where the ball is absent (a gap).
fn over_frames(points: &[Option<(f32, f32)>], pick: fn((f32, f32)) -> f32) -> Vec<(f32, f32)> {
    points
        .iter()
        .enumerate()
        .map(|(i, p)| (i as f32, p.map_or(f32::NAN, pick)))
        .collect()
}

/// A clip's trajectory figure: the first frame with the target (cyan) and predicted (red)
/// tracks, axes in frame pixels, then the x and y coordinates over the frames.
pub fn trajectory_figure(
    first_frame: &RgbImage,
    title: &str,
    pred: &[Option<(f32, f32)>],
    target: &[Option<(f32, f32)>],
) -> Result<RgbImage, String> {
    font_ready()?;
    let (fw, fh) = first_frame.dimensions();
    if fw == 0 || fh == 0 {
        return Err("the first frame is empty".into());
    }
    // Wide enough for readable labels, small enough to open at a glance.
    let shown_w = fw.clamp(480, 1280);
    let shown_h = ((fh as f32 * shown_w as f32 / fw as f32).round() as u32).max(1);
    let (w, top_h, panel_h) = (shown_w + 100, shown_h + 110, 240);
    let h = top_h + 2 * panel_h;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(top_h);
        let mut chart = ChartBuilder::on(&top)
            .caption(title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f32..fw as f32, fh as f32..0f32)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("x (frame px)")
            .y_desc("y (frame px)")
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 14))
            .draw()
            .map_err(draw_err)?;
        // The frame fills the plotting area exactly, so (0, 0) is its top-left pixel.
        let (xs, ys) = chart.plotting_area().get_pixel_range();
        let (pw, ph) = ((xs.end - xs.start) as u32, (ys.end - ys.start) as u32);
        let scaled =
            image::imageops::resize(first_frame, pw, ph, image::imageops::FilterType::Triangle);
        let frame = BitMapElement::with_owned_buffer((0f32, 0f32), (pw, ph), scaled.into_raw())
            .ok_or("frame buffer has the wrong size")?;
        chart
            .draw_series(std::iter::once(frame))
            .map_err(draw_err)?;
        let area = chart.plotting_area();
        draw_track(area, target, TARGET_COLOUR, |p| p)?;
        draw_track(area, pred, PRED_COLOUR, |p| p)?;
        for (name, colour) in [("target", TARGET_COLOUR), ("prediction", PRED_COLOUR)] {
            chart
                .draw_series(std::iter::empty::<Circle<(f32, f32), i32>>())
                .map_err(draw_err)?
                .label(name)
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, rgb(colour).filled()));
        }
        legend!(chart);
        let coordinate = |label: &str, pick: fn((f32, f32)) -> f32| {
            Panel::new(
                &format!("ball {label} over the clip"),
                "frame",
                &format!("{label} (frame px)"),
            )
            .integer_x()
            .with(Series::new("target", over_frames(target, pick)).coloured([0, 170, 190]))
            .with(Series::new("prediction", over_frames(pred, pick)).coloured(PRED_COLOUR))
        };
        let rows = bottom.split_evenly((2, 1));
        draw_panel(&rows[0], &coordinate("x", |p| p.0))?;
        draw_panel(&rows[1], &coordinate("y", |p| p.1))?;
        root.present().map_err(draw_err)?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| "canvas buffer has the wrong size".into())
}

/// Writes the trajectory figure of a clip ([`trajectory_figure`]) over the decoded
/// `first_frame_path`: predictions red, targets cyan, then x and y over the frames.
pub fn save_trajectory_png(
    path: &Path,
    first_frame_path: &Path,
    pred: &[Option<(f32, f32)>],
    target: &[Option<(f32, f32)>],
) -> Result<(), DataError> {
    let frame = decode_rgb(first_frame_path).map_err(DataError::Dataset)?;
    let clip = first_frame_path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = if clip.is_empty() {
        "Ball trajectory".to_string()
    } else {
        format!("Ball trajectory: {clip}")
    };
    let img =
        trajectory_figure(&frame, &title, pred, target).map_err(|message| DataError::Image {
            path: path.to_path_buf(),
            message,
        })?;
    save_png(path, &img)
}
