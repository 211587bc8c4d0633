//! Heatmap targets, flips and deterministic batch order.
use crate::common;

use std::sync::Arc;

use common::TempDir;
use tracknet_data::{
    Batch, BatchLoader, DatasetIndex, LoaderOptions, SynthOptions, gaussian_heatmap, generate,
};

/// One clip of 128x72 frames: left half red, right half blue, labelled rows as given.
fn handmade(dir: &TempDir, rows: &[&str]) -> DatasetIndex {
    let clip = dir.path().join("game1/Clip1");
    std::fs::create_dir_all(&clip).unwrap();
    let img = image::RgbImage::from_fn(128, 72, |x, y| {
        if x < 64 {
            image::Rgb([200, (y * 3) as u8, 0])
        } else {
            image::Rgb([0, 0, 200])
        }
    });
    let mut csv = String::from("file name,visibility,x-coordinate,y-coordinate,status\n");
    for (i, row) in rows.iter().enumerate() {
        img.save(clip.join(format!("{i:04}.png"))).unwrap();
        csv.push_str(&format!("{i:04}.png,{row}\n"));
    }
    std::fs::write(clip.join("Label.csv"), csv).unwrap();
    DatasetIndex::scan(dir.path(), &["game1".to_string()], true)
        .unwrap()
        .0
}

fn opts() -> LoaderOptions {
    LoaderOptions {
        batch_size: 4,
        shuffle: false,
        num_workers: 1,
        prefetch: 1,
        resize: [128, 72],
        normalize: false,
        flip_prob: 0.0,
        heatmap_size: [64, 36],
        sigma: 2.0,
        ..Default::default()
    }
}

fn load_all(index: &Arc<DatasetIndex>, o: LoaderOptions) -> Vec<Batch> {
    BatchLoader::new(index.clone(), o)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn gaussian_formula_at_pixels() {
    let mut hm = vec![0.0; 10 * 8];
    let mask = gaussian_heatmap(&mut hm, [10, 8], Some((3.5, 2.0)), 1.5);
    assert_eq!(mask, 1.0);
    for &(x, y) in &[(3usize, 2usize), (4, 2), (0, 0), (9, 7), (5, 4)] {
        let want =
            (-((x as f32 - 3.5).powi(2) + (y as f32 - 2.0).powi(2)) / (2.0 * 1.5 * 1.5)).exp();
        assert!((hm[y * 10 + x] - want).abs() < 1e-6, "({x},{y})");
    }
    assert_eq!(gaussian_heatmap(&mut hm, [10, 8], None, 1.5), 0.0);
    assert!(hm.iter().all(|&v| v == 0.0));
}

#[test]
fn targets_peak_at_scaled_coordinate_and_zero_when_invisible() {
    let dir = TempDir::new("targets");
    let index = Arc::new(handmade(&dir, &["1,40,20,0", "0,,,", "3,100,50,1"]));
    let b = &load_all(&index, opts())[0];
    assert_eq!(b.batch_size, 3);
    assert_eq!(b.heatmap_hw, (36, 64));
    assert_eq!(b.image_hw, (72, 128));
    let plane = 36 * 64;
    // Frame 0: (40, 20) in 128x72 -> (20, 10) in 64x36.
    assert_eq!(b.meta[0].xy_heatmap, Some((20.0, 10.0)));
    assert_eq!(b.meta[0].xy_orig, Some((40.0, 20.0)));
    assert_eq!(b.meta[0].orig_size, (128, 72));
    let hm0 = &b.heatmaps[..plane];
    let (imax, vmax) = hm0
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
    assert_eq!((imax % 64, imax / 64), (20, 10));
    assert!((vmax - 1.0).abs() < 1e-6);
    let at = |x: usize, y: usize| hm0[y * 64 + x];
    assert!((at(22, 10) - (-4.0f32 / 8.0).exp()).abs() < 1e-6);
    assert!((at(21, 11) - (-2.0f32 / 8.0).exp()).abs() < 1e-6);
    assert!((at(20, 13) - (-9.0f32 / 8.0).exp()).abs() < 1e-6);
    assert!(b.masks[..plane].iter().all(|&m| m == 1.0));
    // Frame 1: invisible -> zeros everywhere.
    assert_eq!(b.meta[1].xy_heatmap, None);
    assert!(b.heatmaps[plane..2 * plane].iter().all(|&v| v == 0.0));
    assert!(b.masks[plane..2 * plane].iter().all(|&v| v == 0.0));
    // Frame 2: occluded-but-labelled (visibility 3) still gets a target.
    assert_eq!(b.meta[2].xy_heatmap, Some((50.0, 25.0)));
    assert!(b.masks[2 * plane..].iter().all(|&m| m == 1.0));
    // Pixel values: red channel of the left half is 200/255.
    assert!((b.images[0] - 200.0 / 255.0).abs() < 1e-6);
}

#[test]
fn flip_mirrors_image_and_target() {
    let dir = TempDir::new("flip");
    let index = Arc::new(handmade(&dir, &["1,40,20,0", "0,,,"]));
    for resize in [[128u32, 72u32], [96, 54]] {
        let plain = &load_all(&index, LoaderOptions { resize, ..opts() })[0];
        let flipped = &load_all(
            &index,
            LoaderOptions {
                resize,
                flip_prob: 1.0,
                ..opts()
            },
        )[0];
        assert!(flipped.meta.iter().all(|m| m.flipped));
        assert!(plain.meta.iter().all(|m| !m.flipped));
        let (w, h) = (resize[0] as usize, resize[1] as usize);
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let a = plain.images[(c * h + y) * w + x];
                    let b = flipped.images[(c * h + y) * w + (w - 1 - x)];
                    assert_eq!(a, b, "c{c} ({x},{y})");
                }
            }
        }
        // The flipped target is the unflipped pipeline's target for the mirrored label
        // (pixel 40 of 128 → 87), not the mirrored heatmap grid (which is 0.5 px off here).
        assert_eq!(
            flipped.meta[0].xy_heatmap,
            Some((87.0 * 64.0 / 128.0, 10.0))
        );
        assert_eq!(flipped.meta[0].xy_orig, Some((40.0, 20.0)));
        let mirrored_dir = TempDir::new(&format!("flip-mirrored-{}", resize[0]));
        let mirrored = Arc::new(handmade(&mirrored_dir, &["1,87,20,0", "0,,,"]));
        let reference = &load_all(&mirrored, LoaderOptions { resize, ..opts() })[0];
        assert_eq!(flipped.heatmaps, reference.heatmaps);
        assert_eq!(flipped.masks, reference.masks);
    }
}

/// A bright 3×3 ball at the label: after the flip, the target sits where the flipped image's
/// ball is, mapped to the heatmap as the pipeline maps any label (`x · Wh / W`).
#[test]
fn flipped_target_follows_the_flipped_images_ball() {
    let dir = TempDir::new("flip-ball");
    let clip = dir.path().join("game1/Clip1");
    std::fs::create_dir_all(&clip).unwrap();
    let (bx, by) = (40u32, 20u32);
    let img = image::RgbImage::from_fn(128, 72, |x, y| {
        if x.abs_diff(bx) <= 1 && y.abs_diff(by) <= 1 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    img.save(clip.join("0000.png")).unwrap();
    std::fs::write(
        clip.join("Label.csv"),
        format!("file name,visibility,x-coordinate,y-coordinate,status\n0000.png,1,{bx},{by},0\n"),
    )
    .unwrap();
    let index = Arc::new(
        DatasetIndex::scan(dir.path(), &["game1".to_string()], true)
            .unwrap()
            .0,
    );
    let b = &load_all(
        &index,
        LoaderOptions {
            flip_prob: 1.0,
            ..opts()
        },
    )[0];
    // Centroid of the ball in the flipped image (red channel), in input pixels.
    let (w, h) = (128usize, 72usize);
    let (mut sx, mut sy, mut n) = (0.0f32, 0.0f32, 0.0f32);
    for y in 0..h {
        for x in 0..w {
            let v = b.images[y * w + x];
            sx += v * x as f32;
            sy += v * y as f32;
            n += v;
        }
    }
    let (cx, cy) = (sx / n, sy / n);
    assert_eq!((cx, cy), (87.0, 20.0));
    let want = (cx * 64.0 / 128.0, cy * 36.0 / 72.0);
    assert_eq!(b.meta[0].xy_heatmap, Some(want));
    // And the Gaussian peaks there: the two pixels around x = 43.5 are equal maxima.
    let plane = &b.heatmaps[..64 * 36];
    let row = &plane[10 * 64..11 * 64];
    assert!((row[43] - row[44]).abs() < 1e-6);
    assert!(row[43] > row[42] && row[44] > row[45]);
}

#[test]
fn normalisation_uses_imagenet_stats() {
    let dir = TempDir::new("norm");
    let index = Arc::new(handmade(&dir, &["0,,,"]));
    let b = &load_all(
        &index,
        LoaderOptions {
            normalize: true,
            ..opts()
        },
    )[0];
    let plane = 128 * 72;
    assert!((b.images[0] - (200.0 / 255.0 - 0.485) / 0.229).abs() < 1e-5);
    assert!((b.images[2 * plane + 127] - (200.0 / 255.0 - 0.406) / 0.225).abs() < 1e-5);
}

fn synth_index(dir: &TempDir) -> Arc<DatasetIndex> {
    let root = dir.path().join("s");
    let o = SynthOptions {
        games: 2,
        clips: 1,
        frames: 11,
        size: (64, 36),
        seed: 5,
        ..Default::default()
    };
    generate(&root, &o).unwrap();
    Arc::new(DatasetIndex::scan(&root, &[], true).unwrap().0)
}

#[test]
fn loader_order_is_deterministic_across_worker_counts() {
    let dir = TempDir::new("order");
    let index = synth_index(&dir);
    let base = LoaderOptions {
        batch_size: 3,
        shuffle: true,
        seed: 42,
        epoch: 1,
        resize: [32, 18],
        heatmap_size: [16, 9],
        flip_prob: 0.5,
        ..opts()
    };
    let one = load_all(
        &index,
        LoaderOptions {
            num_workers: 1,
            prefetch: 1,
            ..base.clone()
        },
    );
    let three = load_all(
        &index,
        LoaderOptions {
            num_workers: 3,
            prefetch: 4,
            ..base.clone()
        },
    );
    assert_eq!(one, three);
    // `num_workers: 0`: no loader thread at all, batches built on this thread, same output.
    let inline_opts = LoaderOptions {
        num_workers: 0,
        ..base.clone()
    };
    let loader = BatchLoader::new(index.clone(), inline_opts.clone()).unwrap();
    assert_eq!(loader.worker_threads(), 0);
    let threaded = BatchLoader::new(
        index.clone(),
        LoaderOptions {
            num_workers: 3,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!(threaded.worker_threads(), 3);
    drop(threaded);
    assert_eq!(load_all(&index, inline_opts), one);
    assert_eq!(
        one.iter().map(|b| b.batch_size).collect::<Vec<_>>(),
        vec![3, 3, 3, 3, 3, 3, 3, 1]
    );
    let order: Vec<usize> = one
        .iter()
        .flat_map(|b| b.meta.iter().map(|m| m.index))
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..22).collect::<Vec<_>>(),
        "each sample exactly once"
    );
    assert_ne!(order, sorted, "shuffled");
    let flips = one
        .iter()
        .flat_map(|b| b.meta.iter())
        .filter(|m| m.flipped)
        .count();
    assert!(flips > 0 && flips < 22, "{flips}");
    // Another epoch gives another order; drop_last drops the short batch.
    let next = load_all(
        &index,
        LoaderOptions {
            epoch: 2,
            drop_last: true,
            ..base
        },
    );
    let order2: Vec<usize> = next
        .iter()
        .flat_map(|b| b.meta.iter().map(|m| m.index))
        .collect();
    assert_eq!(order2.len(), 21);
    assert_ne!(order[..21], order2[..]);
}

#[test]
fn dropping_a_loader_early_stops_workers() {
    let dir = TempDir::new("drop");
    let index = synth_index(&dir);
    let mut loader = BatchLoader::new(
        index,
        LoaderOptions {
            batch_size: 1,
            num_workers: 3,
            resize: [32, 18],
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(loader.num_batches(), 22);
    assert_eq!(loader.next().unwrap().unwrap().meta[0].index, 0);
    drop(loader); // must not hang
}

#[test]
fn invalid_options_are_rejected() {
    let dir = TempDir::new("badopts");
    let index = synth_index(&dir);
    for o in [
        LoaderOptions {
            batch_size: 0,
            ..opts()
        },
        LoaderOptions {
            flip_prob: 1.5,
            ..opts()
        },
        LoaderOptions {
            sigma: 0.0,
            ..opts()
        },
        LoaderOptions {
            heatmap_size: [0, 9],
            ..opts()
        },
    ] {
        let err = BatchLoader::new(index.clone(), o).err().unwrap();
        assert!(err.to_string().starts_with("invalid options"), "{err}");
    }
}

#[test]
fn throughput_counts_frames() {
    let dir = TempDir::new("tput");
    let index = synth_index(&dir);
    let r = tracknet_data::measure_throughput(
        &index,
        &LoaderOptions {
            resize: [32, 18],
            ..opts()
        },
        7,
    )
    .unwrap();
    assert_eq!(r.frames, 7);
    assert!(r.frames_per_sec > 0.0);
}

/// Two clips of `n` frames each; frame `i` of clip `c` has red `20·i + 100·(c-1)` on the left
/// half and blue 200 on the right half, so every frame and its orientation can be told apart.
fn numbered_clips(dir: &TempDir, n: usize) -> DatasetIndex {
    for c in 1..=2usize {
        let clip = dir.path().join(format!("game1/Clip{c}"));
        std::fs::create_dir_all(&clip).unwrap();
        let mut csv = String::from("file name,visibility,x-coordinate,y-coordinate,status\n");
        for i in 0..n {
            let red = (20 * i + 100 * (c - 1)) as u8;
            let img = image::RgbImage::from_fn(128, 72, |x, _| {
                if x < 64 {
                    image::Rgb([red, 0, 0])
                } else {
                    image::Rgb([0, 0, 200])
                }
            });
            img.save(clip.join(format!("{i:04}.png"))).unwrap();
            csv.push_str(&format!("{i:04}.png,1,{},20,0\n", 10 + i));
        }
        std::fs::write(clip.join("Label.csv"), csv).unwrap();
    }
    DatasetIndex::scan(dir.path(), &["game1".to_string()], true)
        .unwrap()
        .0
}

#[test]
fn sequence_frames_end_at_the_label_repeat_the_clip_start_and_never_cross_clips() {
    let dir = TempDir::new("sequence-index");
    let index = numbered_clips(&dir, 4);
    assert_eq!(index.len(), 8);
    // Clip 1 is frames 0..4, clip 2 is 4..8.
    assert_eq!(index.sequence(3, 3, 1), vec![1, 2, 3]);
    assert_eq!(index.sequence(1, 3, 1), vec![0, 0, 1]);
    assert_eq!(index.sequence(3, 3, 2), vec![0, 1, 3]);
    assert_eq!(index.sequence(0, 2, 1), vec![0, 0]);
    // The first frames of clip 2 repeat clip 2's first frame, never clip 1's last.
    assert_eq!(index.sequence(4, 3, 1), vec![4, 4, 4]);
    assert_eq!(index.sequence(5, 3, 1), vec![4, 4, 5]);
    assert_eq!(index.sequence(7, 1, 5), vec![7]);
}

#[test]
fn sequence_samples_stack_frames_oldest_first_and_flip_them_together() {
    let dir = TempDir::new("sequence-loader");
    let index = Arc::new(numbered_clips(&dir, 4));
    let seq = LoaderOptions {
        batch_size: 8,
        sequence_length: 3,
        sequence_stride: 1,
        ..opts()
    };
    let single = &load_all(
        &index,
        LoaderOptions {
            batch_size: 8,
            ..opts()
        },
    )[0];
    let b = &load_all(&index, seq.clone())[0];
    let plane = 72 * 128;
    assert_eq!(single.channels, 3);
    assert_eq!(b.channels, 9);
    assert_eq!(b.images.len(), 8 * 9 * plane);
    // Sample k's channels 3f..3f+3 are frame sequence(k)[f], exactly as loaded alone.
    for k in 0..8 {
        let frames = index.sequence(k, 3, 1);
        for (f, &j) in frames.iter().enumerate() {
            let got = &b.images[(k * 9 + 3 * f) * plane..(k * 9 + 3 * f + 3) * plane];
            let want = &single.images[j * 3 * plane..(j + 1) * 3 * plane];
            assert_eq!(got, want, "sample {k} frame {f}");
        }
        assert_eq!(
            b.meta[k].inputs,
            frames
                .iter()
                .map(|&j| index.frames[j].path.clone())
                .collect::<Vec<_>>()
        );
        // The target is the labelled (last) frame's, as for a single frame.
        assert_eq!(b.meta[k].xy_heatmap, single.meta[k].xy_heatmap);
        assert_eq!(
            &b.heatmaps[k * 36 * 64..(k + 1) * 36 * 64],
            &single.heatmaps[k * 36 * 64..(k + 1) * 36 * 64]
        );
    }
    // Frame 3 of clip 1 is red 60 on its left half; its two predecessors 20 and 40.
    let red_at = |k: usize, f: usize, x: usize| b.images[(k * 9 + 3 * f) * plane + x];
    assert_eq!(
        [red_at(3, 0, 0), red_at(3, 1, 0), red_at(3, 2, 0)],
        [20.0 / 255.0, 40.0 / 255.0, 60.0 / 255.0]
    );
    // Flipped: every frame of the sample is mirrored (the red half moves right in all three).
    let flipped = &load_all(
        &index,
        LoaderOptions {
            flip_prob: 1.0,
            ..seq
        },
    )[0];
    for k in 0..8 {
        for f in 0..3 {
            for c in 0..3 {
                for y in [0usize, 35, 71] {
                    for x in [0usize, 10, 63, 64, 127] {
                        let at = |v: &[f32], x: usize| v[((k * 9 + 3 * f + c) * 72 + y) * 128 + x];
                        assert_eq!(
                            at(&flipped.images, x),
                            at(&b.images, 127 - x),
                            "sample {k} frame {f} c{c} ({x},{y})"
                        );
                    }
                }
            }
        }
    }
}
