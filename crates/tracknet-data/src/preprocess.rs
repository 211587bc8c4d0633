//! Frame preprocessing: decode → resize (triangle / bilinear) → optional horizontal flip →
//! CHW `f32` in [0,1] → optional ImageNet normalisation.
//!
//! Flip convention: the resized image column `j` moves to `W - 1 - j`, and the heatmap target
//! centre `cx` (in heatmap pixels, see [`crate::target`]) moves to `Wh - 1 - cx`, so the flipped
//! target is exactly the mirror image of the unflipped one.

use std::path::Path;

use image::RgbImage;
use image::imageops::{self, FilterType};

use crate::error::{DataError, Issue, IssueKind};

/// ImageNet channel means (RGB), used when `normalize` is set.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How frames are turned into model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessOptions {
    /// Output `[W, H]`.
    pub resize: [u32; 2],
    /// Apply ImageNet mean/std normalisation.
    pub normalize: bool,
}

/// A preprocessed frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// `[3, H, W]` values, row-major.
    pub chw: Vec<f32>,
    /// Original `(width, height)` of the decoded image.
    pub orig_size: (u32, u32),
}

/// SplitMix64 finaliser: a cheap, well-mixed hash used for seed-derived decisions.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether sample `index` (its position in the dataset index, not in the shuffled order) is
/// flipped in `epoch`. A pure function of its inputs, so the result never depends on which
/// worker thread processes the sample.
pub fn flip_decision(seed: u64, epoch: u64, index: u64, flip_prob: f32) -> bool {
    if flip_prob <= 0.0 {
        return false;
    }
    let h = splitmix64(seed ^ splitmix64(epoch ^ splitmix64(index ^ 0xF11F)));
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    u < f64::from(flip_prob)
}

/// Decodes an image file into RGB8, reporting failures as a [`IssueKind::Decode`] issue.
pub fn decode_rgb(path: &Path) -> Result<RgbImage, Issue> {
    let fail = |message: String| Issue {
        file: path.to_path_buf(),
        line: None,
        kind: IssueKind::Decode,
        message,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| fail(format!("cannot open image: {e}")))?
        .with_guessed_format()
        .map_err(|e| fail(format!("cannot read image: {e}")))?;
    let img = reader
        .decode()
        .map_err(|e| fail(format!("expected a decodable JPEG/PNG image: {e}")))?;
    Ok(img.to_rgb8())
}

/// Resizes (when needed), flips and converts an RGB image into CHW `f32`.
pub fn image_to_chw(img: &RgbImage, opts: &PreprocessOptions, flip: bool) -> Vec<f32> {
    let [w, h] = opts.resize;
    let mut resized = if img.dimensions() == (w, h) {
        img.clone()
    } else {
        imageops::resize(img, w, h, FilterType::Triangle)
    };
    if flip {
        imageops::flip_horizontal_in_place(&mut resized);
    }
    let plane = (w as usize) * (h as usize);
    let mut out = vec![0.0f32; 3 * plane];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            let mut v = f32::from(px.0[c]) / 255.0;
            if opts.normalize {
                v = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
            out[c * plane + i] = v;
        }
    }
    out
}

/// Decodes and preprocesses one frame (for prediction on arbitrary files).
pub fn preprocess_image(
    path: &Path,
    opts: &PreprocessOptions,
    flip: bool,
) -> Result<Preprocessed, DataError> {
    validate(opts)?;
    let img = decode_rgb(path).map_err(DataError::Dataset)?;
    let orig_size = img.dimensions();
    Ok(Preprocessed {
        chw: image_to_chw(&img, opts, flip),
        orig_size,
    })
}

pub(crate) fn validate(opts: &PreprocessOptions) -> Result<(), DataError> {
    if opts.resize[0] == 0 || opts.resize[1] == 0 {
        return Err(DataError::Options(format!(
            "resize must be positive, got {:?}",
            opts.resize
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_decision_is_pure_and_roughly_calibrated() {
        let a: Vec<bool> = (0..1000).map(|i| flip_decision(7, 2, i, 0.5)).collect();
        let b: Vec<bool> = (0..1000).map(|i| flip_decision(7, 2, i, 0.5)).collect();
        assert_eq!(a, b);
        let n = a.iter().filter(|&&f| f).count();
        assert!((400..600).contains(&n), "{n}");
        assert!((0..100).all(|i| !flip_decision(1, 0, i, 0.0)));
        assert!((0..100).all(|i| flip_decision(1, 0, i, 1.0)));
        let other: Vec<bool> = (0..1000).map(|i| flip_decision(7, 3, i, 0.5)).collect();
        assert_ne!(a, other);
    }

    #[test]
    fn chw_layout_and_normalisation() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        img.put_pixel(1, 0, image::Rgb([0, 255, 0]));
        let o = PreprocessOptions {
            resize: [2, 1],
            normalize: false,
        };
        assert_eq!(
            image_to_chw(&img, &o, false),
            vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
        );
        assert_eq!(
            image_to_chw(&img, &o, true),
            vec![0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        );
        let n = PreprocessOptions {
            normalize: true,
            ..o
        };
        let v = image_to_chw(&img, &n, false);
        assert!((v[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((v[4] - (0.0 - 0.406) / 0.225).abs() < 1e-6);
    }
}
