//! Synthetic TrackNet-style clips: a tennis court seen from behind the near baseline, two
//! players as moving blobs, and a small yellow-green ball on ballistic arcs with bounces.
//!
//! Labels follow TrackNet: visibility 0 when the ball is out of frame or out of play (x/y
//! blank), 1 when clearly visible, 2 when hard to see (motion-blurred streak or partly hidden
//! behind a player), 3 when fully hidden behind a player but its position is known. Status is
//! 1 on a hit, 2 on a bounce, 0 otherwise. Everything is drawn from a ChaCha stream seeded per
//! clip from `(seed, game, clip)`, so the same options give byte-identical files.
//!
//! The set is written into a temporary sibling directory and renamed into place at the end, so
//! a half-written set never looks complete.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::ImageEncoder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::DataError;
use crate::io::temp_sibling;
use crate::preprocess::splitmix64;

/// Generator settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    /// Games (`game1..gameG`).
    pub games: usize,
    /// Clips per game (`Clip1..ClipC`).
    pub clips: usize,
    /// Frames per clip (`0000.jpg..`).
    pub frames: usize,
    /// Frame `(width, height)`.
    pub size: (u32, u32),
    /// Seed; the same seed and options give byte-identical output.
    pub seed: u64,
    /// Replace an existing non-empty output directory.
    pub overwrite: bool,
    /// JPEG quality (1-100).
    pub jpeg_quality: u8,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            games: 2,
            clips: 2,
            frames: 30,
            size: (512, 288),
            seed: 0,
            overwrite: false,
            jpeg_quality: 90,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SynthSummary {
    /// Output directory.
    pub root: PathBuf,
    /// Games written.
    pub games: usize,
    /// Clips written in total.
    pub clips: usize,
    /// Frames written in total.
    pub frames: usize,
    /// Frames per visibility class 0..=3.
    pub by_visibility: [usize; 4],
}

/// Writes a synthetic data set to `out` in the TrackNet layout.
pub fn generate(out: &Path, opts: &SynthOptions) -> Result<SynthSummary, DataError> {
    if opts.games == 0 || opts.clips == 0 || opts.frames == 0 {
        return Err(DataError::Options(format!(
            "games, clips and frames must be at least 1, got {}/{}/{}",
            opts.games, opts.clips, opts.frames
        )));
    }
    if opts.size.0 < 32 || opts.size.1 < 18 {
        return Err(DataError::Options(format!(
            "size must be at least 32x18, got {}x{}",
            opts.size.0, opts.size.1
        )));
    }
    if opts.jpeg_quality == 0 || opts.jpeg_quality > 100 {
        return Err(DataError::Options(format!(
            "jpeg_quality must be 1-100, got {}",
            opts.jpeg_quality
        )));
    }
    let exists_non_empty = match std::fs::read_dir(out) {
        Ok(mut it) => it.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) if out.is_file() => return Err(DataError::OutputExists(out.to_path_buf())),
        Err(e) => return Err(DataError::io(out, "read directory", e)),
    };
    if exists_non_empty && !opts.overwrite {
        return Err(DataError::OutputExists(out.to_path_buf()));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| DataError::io(parent, "create directory", e))?;
    }
    let tmp = temp_sibling(out);
    let result = write_all(&tmp, out, opts);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    if out.exists() {
        let old = temp_sibling(out);
        std::fs::rename(out, &old).map_err(|e| DataError::io(out, "rename", e))?;
        std::fs::rename(&tmp, out).map_err(|e| DataError::io(out, "rename", e))?;
        std::fs::remove_dir_all(&old).map_err(|e| DataError::io(&old, "remove", e))?;
    } else {
        std::fs::rename(&tmp, out).map_err(|e| DataError::io(out, "rename", e))?;
    }
    result
}

fn write_all(tmp: &Path, out: &Path, opts: &SynthOptions) -> Result<SynthSummary, DataError> {
    let mut summary = SynthSummary {
        root: out.to_path_buf(),
        games: opts.games,
        clips: opts.games * opts.clips,
        frames: 0,
        by_visibility: [0; 4],
    };
    for g in 1..=opts.games {
        for c in 1..=opts.clips {
            let dir = tmp.join(format!("game{g}")).join(format!("Clip{c}"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| DataError::io(&dir, "create directory", e))?;
            let clip_seed = splitmix64(opts.seed) ^ splitmix64(((g as u64) << 32) | c as u64);
            let labels = render_clip(&dir, opts, clip_seed)?;
            let mut csv = String::from("file name,visibility,x-coordinate,y-coordinate,status\n");
            for (i, l) in labels.iter().enumerate() {
                summary.by_visibility[usize::from(l.visibility)] += 1;
                match l.xy {
                    Some((x, y)) => {
                        let _ = writeln!(
                            csv,
                            "{i:04}.jpg,{},{x:.1},{y:.1},{}",
                            l.visibility, l.status
                        );
                    }
                    None => {
                        let _ = writeln!(csv, "{i:04}.jpg,0,,,");
                    }
                }
            }
            let path = dir.join("Label.csv");
            std::fs::write(&path, csv).map_err(|e| DataError::io(&path, "write", e))?;
            summary.frames += labels.len();
        }
    }
    Ok(summary)
}

struct Label {
    visibility: u8,
    xy: Option<(f32, f32)>,
    status: u8,
}

/// Perspective camera behind the near baseline. World: `x` across the court (doubles lines at
/// ±1), `z` along it (near baseline 0, far baseline 1), `y` height.
#[derive(Clone, Copy)]
struct Camera {
    w: f32,
    h: f32,
}

impl Camera {
    fn depth(self, z: f32) -> f32 {
        1.0 + 1.4 * z
    }
    /// Screen position and scale (1 at the near baseline).
    fn project(self, x: f32, y: f32, z: f32) -> (f32, f32, f32) {
        let d = self.depth(z).max(0.3);
        (
            self.w / 2.0 + x * 0.40 * self.w / d,
            0.08 * self.h + 0.84 * self.h / d - y * 0.84 * self.h / d,
            1.0 / d,
        )
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<f32>,
}

impl Canvas {
    fn blend(&mut self, x: i64, y: i64, c: [f32; 3], a: f32) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 || a <= 0.0 {
            return;
        }
        let i = 3 * (y as usize * self.w + x as usize);
        let a = a.min(1.0);
        for (v, ck) in self.px[i..i + 3].iter_mut().zip(c) {
            *v = *v * (1.0 - a) + ck * a;
        }
    }

    /// Anti-aliased filled ellipse.
    fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, c: [f32; 3], alpha: f32) {
        let (rx, ry) = (rx.max(0.5), ry.max(0.5));
        for y in (cy - ry - 1.0).floor() as i64..=(cy + ry + 1.0).ceil() as i64 {
            for x in (cx - rx - 1.0).floor() as i64..=(cx + rx + 1.0).ceil() as i64 {
                let dx = (x as f32 - cx) / rx;
                let dy = (y as f32 - cy) / ry;
                let d = (dx * dx + dy * dy).sqrt();
                let cov = ((1.0 - d) * rx.min(ry) + 0.5).clamp(0.0, 1.0);
                self.blend(x, y, c, cov * alpha);
            }
        }
    }

    /// Anti-aliased thick segment; `alpha_at(t)` gives the opacity along it (t: 0 at a, 1 at b).
    fn segment(
        &mut self,
        a: (f32, f32),
        b: (f32, f32),
        half: f32,
        c: [f32; 3],
        alpha_at: impl Fn(f32) -> f32,
    ) {
        let (x0, x1) = (a.0.min(b.0) - half - 1.0, a.0.max(b.0) + half + 1.0);
        let (y0, y1) = (a.1.min(b.1) - half - 1.0, a.1.max(b.1) + half + 1.0);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = (dx * dx + dy * dy).max(1e-6);
        for y in y0.floor().max(-1.0) as i64..=y1.ceil().min(self.h as f32) as i64 {
            for x in x0.floor().max(-1.0) as i64..=x1.ceil().min(self.w as f32) as i64 {
                let (px, py) = (x as f32 - a.0, y as f32 - a.1);
                let t = ((px * dx + py * dy) / len2).clamp(0.0, 1.0);
                let d = ((px - t * dx).powi(2) + (py - t * dy).powi(2)).sqrt();
                let cov = (half + 0.5 - d).clamp(0.0, 1.0);
                self.blend(x, y, c, cov * alpha_at(t));
            }
        }
    }

    fn to_rgb8(&self) -> Vec<u8> {
        self.px
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect()
    }
}

/// Per-clip look.
struct Style {
    surface: [f32; 3],
    surround: [f32; 3],
    stands: [f32; 3],
    shirts: [[f32; 3]; 2],
}

fn jitter(rng: &mut ChaCha8Rng, c: [f32; 3], amount: f32) -> [f32; 3] {
    c.map(|v| (v + rng.random_range(-amount..=amount)).clamp(0.0, 255.0))
}

fn background(cam: Camera, style: &Style, rng: &mut ChaCha8Rng) -> Canvas {
    let (w, h) = (cam.w as usize, cam.h as usize);
    let mut cv = Canvas {
        w,
        h,
        px: vec![0.0; w * h * 3],
    };
    let (_, back_y, _) = cam.project(0.0, 0.0, 1.25);
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = (x as f32 + 0.5, y as f32 + 0.5);
            let c = if sy < back_y {
                style.stands
            } else {
                // Invert the ground projection to find the court position of this pixel.
                let d = 0.84 * cam.h / (sy - 0.08 * cam.h).max(1e-3);
                let z = (d - 1.0) / 1.4;
                let wx = (sx - cam.w / 2.0) * d / (0.40 * cam.w);
                if (0.0..=1.0).contains(&z) && wx.abs() <= 1.0 {
                    style.surface
                } else {
                    style.surround
                }
            };
            let i = 3 * (y * w + x);
            cv.px[i..i + 3].copy_from_slice(&c);
        }
    }
    // Crowd / sponsor clutter in the stands (never yellow-green, so the ball stays distinct).
    let n_boards = rng.random_range(6..14);
    for _ in 0..n_boards {
        let bw = rng.random_range(0.03..0.12) * cam.w;
        let bh = rng.random_range(0.01..0.05) * cam.h;
        let bx = rng.random_range(0.0..cam.w);
        let by = rng.random_range(0.0..back_y.max(1.0));
        let c = [
            rng.random_range(20.0..255.0),
            rng.random_range(0.0..120.0),
            rng.random_range(20.0..255.0),
        ];
        cv.segment((bx, by), (bx + bw, by), bh / 2.0, c, |_| 0.8);
    }
    // Court lines (projected straight segments, thinner with distance).
    let white = [245.0, 245.0, 240.0];
    let line = |cv: &mut Canvas, a: (f32, f32), b: (f32, f32)| {
        let pa = cam.project(a.0, 0.0, a.1);
        let pb = cam.project(b.0, 0.0, b.1);
        let half = (0.0035 * cam.w * (pa.2 + pb.2) / 2.0).max(0.6);
        cv.segment((pa.0, pa.1), (pb.0, pb.1), half, white, |_| 0.95);
    };
    for &(a, b) in &[
        ((-1.0, 0.0), (1.0, 0.0)),
        ((-1.0, 1.0), (1.0, 1.0)),
        ((-1.0, 0.0), (-1.0, 1.0)),
        ((1.0, 0.0), (1.0, 1.0)),
        ((-0.75, 0.0), (-0.75, 1.0)),
        ((0.75, 0.0), (0.75, 1.0)),
        ((-0.75, 0.23), (0.75, 0.23)),
        ((-0.75, 0.77), (0.75, 0.77)),
        ((0.0, 0.23), (0.0, 0.77)),
        ((0.0, 0.0), (0.0, 0.02)),
        ((0.0, 0.98), (0.0, 1.0)),
    ] {
        line(&mut cv, a, b);
    }
    // Net: dark mesh band with a white tape on top.
    let (lx, ly, s) = cam.project(-1.1, 0.0, 0.5);
    let (rx, _, _) = cam.project(1.1, 0.0, 0.5);
    let (_, ty, _) = cam.project(0.0, 0.06, 0.5);
    for y in ty.floor() as i64..=ly.ceil() as i64 {
        for x in lx.floor() as i64..=rx.ceil() as i64 {
            let mesh = (x + y) % 3 == 0 || (x - y).rem_euclid(3) == 0;
            cv.blend(x, y, [25.0, 25.0, 30.0], if mesh { 0.75 } else { 0.35 });
        }
    }
    cv.segment(
        (lx, ty),
        (rx, ty),
        (0.004 * cam.w * s).max(0.7),
        white,
        |_| 1.0,
    );
    for x in [lx, rx] {
        cv.segment(
            (x, ty - 2.0),
            (x, ly),
            (0.003 * cam.w * s).max(0.7),
            [40.0, 40.0, 40.0],
            |_| 1.0,
        );
    }
    // Sensor-like noise so frames are not perfectly flat.
    for v in cv.px.iter_mut() {
        *v += rng.random_range(-5.0f32..5.0);
    }
    cv
}

/// Screen-space body ellipse `(cx, cy, rx, ry)` and head circle `(hx, hy, r)`.
type PlayerShapes = ((f32, f32, f32, f32), (f32, f32, f32));

/// A player: world position plus screen-space blob geometry for drawing and occlusion tests.
#[derive(Clone, Copy)]
struct Player {
    x: f32,
    z: f32,
}

impl Player {
    /// `(cx, cy, rx, ry)` of the body ellipse and `(hx, hy, hr)` of the head.
    fn shapes(self, cam: Camera) -> PlayerShapes {
        let (sx, sy, s) = cam.project(self.x, 0.0, self.z);
        let ry = 0.13 * cam.h * s;
        let rx = 0.035 * cam.w * s;
        let body = (sx, sy - ry, rx, ry);
        let hr = rx * 0.65;
        (body, (sx, sy - 2.0 * ry - hr * 0.8, hr))
    }

    fn covers(self, cam: Camera, p: (f32, f32)) -> bool {
        let ((cx, cy, rx, ry), (hx, hy, hr)) = self.shapes(cam);
        ((p.0 - cx) / rx).powi(2) + ((p.1 - cy) / ry).powi(2) <= 1.0
            || (p.0 - hx).powi(2) + (p.1 - hy).powi(2) <= hr * hr
    }

    fn draw(self, cam: Camera, cv: &mut Canvas, shirt: [f32; 3]) {
        let ((cx, cy, rx, ry), (hx, hy, hr)) = self.shapes(cam);
        let (_, sy, s) = cam.project(self.x, 0.0, self.z);
        cv.ellipse(
            cx,
            sy,
            rx * 1.3,
            (0.012 * cam.h * s).max(1.0),
            [20.0, 20.0, 20.0],
            0.35,
        );
        cv.ellipse(cx, cy, rx, ry, shirt, 1.0);
        cv.ellipse(hx, hy, hr, hr, [205.0, 160.0, 125.0], 1.0);
    }
}

/// Simulates and renders one clip; returns its labels.
fn render_clip(dir: &Path, opts: &SynthOptions, seed: u64) -> Result<Vec<Label>, DataError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cam = Camera {
        w: opts.size.0 as f32,
        h: opts.size.1 as f32,
    };
    const SURFACES: [[f32; 3]; 5] = [
        [40.0, 90.0, 160.0],
        [60.0, 130.0, 70.0],
        [185.0, 100.0, 60.0],
        [95.0, 70.0, 140.0],
        [70.0, 110.0, 130.0],
    ];
    let base = SURFACES[rng.random_range(0..SURFACES.len())];
    let surface = jitter(&mut rng, base, 15.0);
    let style = Style {
        surface,
        surround: jitter(&mut rng, surface.map(|v| v * 0.7), 20.0),
        stands: jitter(&mut rng, [50.0, 50.0, 60.0], 20.0),
        shirts: [
            jitter(&mut rng, [230.0, 60.0, 60.0], 25.0),
            jitter(&mut rng, [240.0, 240.0, 245.0], 10.0),
        ],
    };
    let bg = background(cam, &style, &mut rng);
    let ball_colour = jitter(&mut rng, [215.0, 240.0, 45.0], 10.0);
    let ball_r0 = 0.009 * cam.w;

    let mut near = Player {
        x: rng.random_range(-0.3..0.3),
        z: -0.06,
    };
    let mut far = Player {
        x: rng.random_range(-0.3..0.3),
        z: 1.06,
    };
    let from_near = rng.random_bool(0.5);
    let mut ball = BallSim::serve(&mut rng, from_near);
    // Start mid-rally so clips begin in varied states.
    for _ in 0..rng.random_range(0..20) {
        ball.step(&mut rng);
    }
    let mut prev_screen: Option<(f32, f32)> = None;
    let mut labels = Vec::with_capacity(opts.frames);
    for i in 0..opts.frames {
        let status = ball.step(&mut rng);
        // Players drift towards the ball's lateral position (with lag and a little noise).
        near.x += (ball.pos[0].clamp(-1.2, 1.2) - near.x) * 0.12 + rng.random_range(-0.01..0.01);
        far.x += (ball.pos[0].clamp(-1.2, 1.2) - far.x) * 0.10 + rng.random_range(-0.01..0.01);

        let mut cv = Canvas {
            w: bg.w,
            h: bg.h,
            px: bg.px.clone(),
        };
        far.draw(cam, &mut cv, style.shirts[1]);
        let (bx, by, s) = cam.project(ball.pos[0], ball.pos[1], ball.pos[2]);
        let r = (ball_r0 * s).max(1.5);
        let in_frame = bx >= 0.0 && by >= 0.0 && bx < cam.w && by < cam.h;
        let mut label = Label {
            visibility: 0,
            xy: None,
            status: 0,
        };
        if ball.in_play && in_frame {
            let (gx, gy, _) = cam.project(ball.pos[0], 0.0, ball.pos[2]);
            cv.ellipse(gx, gy, r * 1.2, r * 0.45, [15.0, 15.0, 15.0], 0.3);
            let speed =
                prev_screen.map_or(0.0, |p| ((bx - p.0).powi(2) + (by - p.1).powi(2)).sqrt());
            // A streak is drawn from 3 radii per frame; labelled "hard" (2) only from 7.
            let streak = speed > 3.0 * r;
            let blurred = speed > 7.0 * r;
            if let (true, Some(p)) = (streak, prev_screen) {
                // Motion streak from 60% of the way back to the head, fading towards the tail.
                let tail = (bx + (p.0 - bx) * 0.6, by + (p.1 - by) * 0.6);
                cv.segment(tail, (bx, by), r * 0.8, ball_colour, |t| {
                    0.25 + 0.6 * (1.0 - t)
                });
            }
            cv.ellipse(bx, by, r, r, ball_colour, 1.0);
            cv.ellipse(
                bx - 0.3 * r,
                by - 0.3 * r,
                r * 0.4,
                r * 0.4,
                [250.0, 255.0, 200.0],
                0.6,
            );
            // Fraction of the ball covered by the near player (always in front of the ball).
            let samples = [
                (0.0, 0.0),
                (0.7, 0.0),
                (-0.7, 0.0),
                (0.0, 0.7),
                (0.0, -0.7),
                (0.5, 0.5),
                (-0.5, 0.5),
                (0.5, -0.5),
                (-0.5, -0.5),
            ];
            let covered = samples
                .iter()
                .filter(|(dx, dy)| near.covers(cam, (bx + dx * r, by + dy * r)))
                .count();
            let visibility = if covered == samples.len() {
                3
            } else if covered >= 3 || blurred {
                2
            } else {
                1
            };
            label = Label {
                visibility,
                xy: Some((bx, by)),
                status,
            };
        }
        near.draw(cam, &mut cv, style.shirts[0]);
        prev_screen = (ball.in_play && in_frame).then_some((bx, by));
        labels.push(label);

        let rgb = cv.to_rgb8();
        let mut bytes = Vec::with_capacity(rgb.len() / 8);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, opts.jpeg_quality)
            .write_image(
                &rgb,
                opts.size.0,
                opts.size.1,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| DataError::Image {
                path: dir.join(format!("{i:04}.jpg")),
                message: e.to_string(),
            })?;
        let path = dir.join(format!("{i:04}.jpg"));
        std::fs::write(&path, bytes).map_err(|e| DataError::io(&path, "write", e))?;
    }
    Ok(labels)
}

/// Ball physics in world units per frame.
struct BallSim {
    pos: [f32; 3],
    vel: [f32; 3],
    g: f32,
    in_play: bool,
    /// Frames left out of play before the next serve.
    dead: u32,
    bounces: u32,
}

impl BallSim {
    fn serve(rng: &mut ChaCha8Rng, from_near: bool) -> Self {
        let z = if from_near { -0.03 } else { 1.03 };
        let mut b = BallSim {
            pos: [rng.random_range(-0.4..0.4), 0.25, z],
            vel: [0.0; 3],
            g: 0.0,
            in_play: true,
            dead: 0,
            bounces: 0,
        };
        b.hit(rng);
        b
    }

    /// Aims at a random spot on the other side so the ball lands after `t` frames, peaking at
    /// `apex` (sometimes a lob high enough to leave the frame, sometimes wide out of it).
    fn hit(&mut self, rng: &mut ChaCha8Rng) {
        let towards_far = self.pos[2] < 0.5;
        let tz = if towards_far {
            rng.random_range(0.6..0.95)
        } else {
            rng.random_range(0.05..0.4)
        };
        let wide = rng.random_bool(0.1);
        let tx = if wide {
            rng.random_range(1.4..2.2) * if rng.random_bool(0.5) { 1.0 } else { -1.0 }
        } else {
            rng.random_range(-0.8..0.8)
        };
        let t: f32 = rng.random_range(13.0..22.0);
        let h0 = self.pos[1].max(0.05);
        let apex: f32 = if rng.random_bool(0.12) {
            rng.random_range(1.4..1.9)
        } else {
            rng.random_range(h0 + 0.08..h0 + 0.3)
        };
        let sg = ((2.0 * (apex - h0)).sqrt() + (2.0 * apex).sqrt()) / t;
        self.g = sg * sg;
        self.pos[1] = h0;
        self.vel = [
            (tx - self.pos[0]) / t,
            (2.0 * self.g * (apex - h0)).sqrt(),
            (tz - self.pos[2]) / t,
        ];
        self.bounces = 0;
    }

    /// Advances one frame and returns the TrackNet status of the new frame.
    fn step(&mut self, rng: &mut ChaCha8Rng) -> u8 {
        if !self.in_play {
            if self.dead == 0 {
                let from_near = rng.random_bool(0.5);
                *self = BallSim::serve(rng, from_near);
                return 1;
            }
            self.dead -= 1;
            return 0;
        }
        for k in 0..3 {
            self.pos[k] += self.vel[k];
        }
        self.vel[1] -= self.g;
        let mut status = 0;
        if self.pos[1] < 0.0 {
            self.pos[1] = -self.pos[1] * 0.6;
            self.vel[1] = -self.vel[1] * 0.6;
            self.bounces += 1;
            status = 2;
        }
        let at_far = self.vel[2] > 0.0 && self.pos[2] >= 1.03;
        let at_near = self.vel[2] < 0.0 && self.pos[2] <= -0.03;
        if at_far || at_near {
            if self.pos[0].abs() > 1.3 || self.bounces > 1 || rng.random_bool(0.2) {
                // Point over: the ball leaves play for a while.
                self.in_play = false;
                self.dead = rng.random_range(4..14);
            } else {
                self.hit(rng);
                status = 1;
            }
        }
        status
    }
}
