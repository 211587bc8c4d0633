//! The scene of a synthetic clip: the camera, the canvas frames are drawn on, the court and
//! background, and the players.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Perspective camera behind the near baseline. World: `x` across the court (doubles lines at
/// ±1), `z` along it (near baseline 0, far baseline 1), `y` height.
#[derive(Clone, Copy)]
pub(super) struct Camera {
    pub(super) w: f32,
    pub(super) h: f32,
}

impl Camera {
    pub(super) fn depth(self, z: f32) -> f32 {
        1.0 + 1.4 * z
    }
    /// Screen position and scale (1 at the near baseline).
    pub(super) fn project(self, x: f32, y: f32, z: f32) -> (f32, f32, f32) {
        let d = self.depth(z).max(0.3);
        (
            self.w / 2.0 + x * 0.40 * self.w / d,
            0.08 * self.h + 0.84 * self.h / d - y * 0.84 * self.h / d,
            1.0 / d,
        )
    }
}

pub(super) struct Canvas {
    pub(super) w: usize,
    pub(super) h: usize,
    pub(super) px: Vec<f32>,
}

impl Canvas {
    pub(super) fn blend(&mut self, x: i64, y: i64, c: [f32; 3], a: f32) {
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
    pub(super) fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, c: [f32; 3], alpha: f32) {
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
    pub(super) fn segment(
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

    pub(super) fn to_rgb8(&self) -> Vec<u8> {
        self.px
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect()
    }
}

/// Per-clip look.
pub(super) struct Style {
    pub(super) surface: [f32; 3],
    pub(super) surround: [f32; 3],
    pub(super) stands: [f32; 3],
    pub(super) shirts: [[f32; 3]; 2],
}

pub(super) fn jitter(rng: &mut ChaCha8Rng, c: [f32; 3], amount: f32) -> [f32; 3] {
    c.map(|v| (v + rng.random_range(-amount..=amount)).clamp(0.0, 255.0))
}

pub(super) fn background(cam: Camera, style: &Style, rng: &mut ChaCha8Rng) -> Canvas {
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
pub(super) struct Player {
    pub(super) x: f32,
    pub(super) z: f32,
}

impl Player {
    /// `(cx, cy, rx, ry)` of the body ellipse and `(hx, hy, hr)` of the head.
    pub(super) fn shapes(self, cam: Camera) -> PlayerShapes {
        let (sx, sy, s) = cam.project(self.x, 0.0, self.z);
        let ry = 0.13 * cam.h * s;
        let rx = 0.035 * cam.w * s;
        let body = (sx, sy - ry, rx, ry);
        let hr = rx * 0.65;
        (body, (sx, sy - 2.0 * ry - hr * 0.8, hr))
    }

    pub(super) fn covers(self, cam: Camera, p: (f32, f32)) -> bool {
        let ((cx, cy, rx, ry), (hx, hy, hr)) = self.shapes(cam);
        ((p.0 - cx) / rx).powi(2) + ((p.1 - cy) / ry).powi(2) <= 1.0
            || (p.0 - hx).powi(2) + (p.1 - hy).powi(2) <= hr * hr
    }

    pub(super) fn draw(self, cam: Camera, cv: &mut Canvas, shirt: [f32; 3]) {
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
