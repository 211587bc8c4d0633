//! Synthetic generator: determinism, layout, overwrite protection.
use crate::common;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use common::TempDir;
use tracknet_data::{
    DataError, DatasetIndex, SYNTH_STAMP, SynthOptions, generate, read_synth_stamp, synth_stamp,
};

fn hash_tree(root: &Path) -> (Vec<String>, u64) {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    let mut h = DefaultHasher::new();
    files.hash(&mut h);
    (files.keys().cloned().collect(), h.finish())
}

fn opts(seed: u64) -> SynthOptions {
    SynthOptions {
        games: 2,
        clips: 2,
        frames: 40,
        size: (128, 72),
        seed,
        ..Default::default()
    }
}

#[test]
fn same_seed_gives_identical_bytes() {
    let dir = TempDir::new("synth-det");
    let a = generate(&dir.path().join("a"), &opts(9)).unwrap();
    let b = generate(&dir.path().join("b"), &opts(9)).unwrap();
    let c = generate(&dir.path().join("c"), &opts(10)).unwrap();
    assert_eq!(a.by_visibility, b.by_visibility);
    let (files_a, ha) = hash_tree(&dir.path().join("a"));
    let (files_b, hb) = hash_tree(&dir.path().join("b"));
    let (_, hc) = hash_tree(&dir.path().join("c"));
    assert_eq!(files_a, files_b);
    // Frames and Label.csv per clip, plus the stamp of the options at the root.
    assert_eq!(files_a.len(), 2 * 2 * (40 + 1) + 1);
    assert!(files_a.contains(&SYNTH_STAMP.to_string()));
    assert_eq!(
        read_synth_stamp(&dir.path().join("a")),
        Some(synth_stamp(&opts(9)))
    );
    assert_ne!(synth_stamp(&opts(9)), synth_stamp(&opts(10)));
    assert!(files_a.contains(&"game2/Clip2/0039.jpg".to_string()));
    assert!(files_a.contains(&"game1/Clip1/Label.csv".to_string()));
    assert_eq!(ha, hb);
    assert_ne!(ha, hc);
    assert_eq!(c.frames, 160);
    // Nothing but the three sets is left in the parent (no temp dirs).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["a", "b", "c"]);
}

#[test]
fn labels_are_consistent_and_varied() {
    let dir = TempDir::new("synth-labels");
    let root = dir.path().join("s");
    let o = SynthOptions {
        games: 2,
        clips: 3,
        frames: 60,
        size: (256, 144),
        seed: 1,
        ..Default::default()
    };
    let s = generate(&root, &o).unwrap();
    let (index, report) = DatasetIndex::scan(&root, &[], true).unwrap();
    assert_eq!(index.len(), 360);
    assert_eq!(report.frames, s.frames);
    assert_eq!(s.by_visibility.iter().sum::<usize>(), 360);
    let visible = s.by_visibility[1..].iter().sum::<usize>();
    assert_eq!(report.visible, visible);
    assert!(
        s.by_visibility[1] > 180,
        "mostly clearly visible: {:?}",
        s.by_visibility
    );
    assert!(
        s.by_visibility[0] > 0,
        "some out-of-frame/out-of-play frames: {:?}",
        s.by_visibility
    );
    for f in &index.frames {
        if let Some((x, y)) = f.xy {
            assert!(
                (0.0..256.0).contains(&x) && (0.0..144.0).contains(&y),
                "{f:?}"
            );
        }
    }
    // The labelled ball pixel is yellow-green (red and green high, blue low) when clearly visible
    // and not blurred: check most visibility-1 frames.
    let mut ok = 0;
    let mut total = 0;
    for f in index.frames.iter().filter(|f| f.visibility == 1) {
        let img = image::open(&f.path).unwrap().to_rgb8();
        let (x, y) = f.xy.unwrap();
        let p = img
            .get_pixel(x.round().min(255.0) as u32, y.round().min(143.0) as u32)
            .0;
        total += 1;
        if p[1] > 150 && p[0] > 120 && p[2] < 140 {
            ok += 1;
        }
    }
    assert!(
        ok * 10 >= total * 8,
        "{ok}/{total} ball pixels look like a ball"
    );
}

#[test]
fn refuses_to_overwrite_unless_asked() {
    let dir = TempDir::new("synth-ow");
    let out = dir.path().join("set");
    std::fs::create_dir_all(&out).unwrap();
    // An empty directory is fine.
    generate(&out, &opts(1)).unwrap();
    let err = generate(&out, &opts(2)).unwrap_err();
    assert!(matches!(err, DataError::OutputExists(_)), "{err}");
    let (_, before) = hash_tree(&out);
    let s = generate(
        &out,
        &SynthOptions {
            overwrite: true,
            ..opts(2)
        },
    )
    .unwrap();
    assert_eq!(s.frames, 160);
    let (_, after) = hash_tree(&out);
    assert_ne!(before, after);
    let err = generate(
        &dir.path().join("x"),
        &SynthOptions {
            frames: 0,
            ..opts(1)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("invalid options"), "{err}");
    let err = generate(
        &dir.path().join("y"),
        &SynthOptions {
            ball_scale: 0.0,
            ..opts(1)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("ball_scale"), "{err}");
}

#[test]
fn ball_scale_draws_larger_balls() {
    // The same clips at twice the ball radius: the labelled positions are the same, and more
    // pixels around them are ball-coloured.
    let dir = TempDir::new("synth-ball");
    let one = SynthOptions {
        games: 1,
        clips: 1,
        frames: 12,
        size: (320, 180),
        ..opts(4)
    };
    let two = SynthOptions {
        ball_scale: 2.0,
        ..one.clone()
    };
    generate(&dir.path().join("one"), &one).unwrap();
    generate(&dir.path().join("two"), &two).unwrap();
    // Rows as (file, x, y); visibility may differ, since it depends on the radius.
    let rows = |s: &str| -> Vec<(String, Option<(f32, f32)>)> {
        std::fs::read_to_string(dir.path().join(s).join("game1/Clip1/Label.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let xy = f[2].parse().ok().zip(f[3].parse().ok());
                (f[0].to_string(), xy)
            })
            .collect()
    };
    assert_eq!(rows("one"), rows("two"));
    let yellow_near_ball = |s: &str| {
        let mut n = 0usize;
        for (file, xy) in rows(s) {
            let Some((x, y)) = xy else { continue };
            let img = image::open(dir.path().join(s).join("game1/Clip1").join(&file))
                .unwrap()
                .to_rgb8();
            n += img
                .enumerate_pixels()
                .filter(|(px, py, p)| {
                    (*px as f32 - x).hypot(*py as f32 - y) < 12.0
                        && p[0] > 150
                        && p[1] > 170
                        && p[2] < 120
                })
                .count();
        }
        n
    };
    let (a, b) = (yellow_near_ball("one"), yellow_near_ball("two"));
    assert!(
        a > 0 && b > 2 * a,
        "ball-coloured pixels: {a} at scale 1, {b} at scale 2"
    );
}

#[test]
fn distractors_are_static_ball_like_blobs() {
    // Ball-coloured pixels present in *every* frame of a clip: with static distractors there
    // are some (they never move); without, none (the ball in play moves or leaves).
    let dir = TempDir::new("synth-distractors");
    let base = SynthOptions {
        games: 1,
        clips: 2,
        frames: 10,
        size: (320, 180),
        ball_scale: 2.0,
        distractors: 0,
        ..opts(11)
    };
    let always_ball_coloured = |name: &str, o: &SynthOptions| -> usize {
        let root = dir.path().join(name);
        generate(&root, o).unwrap();
        let mut total = 0;
        for c in 1..=o.clips {
            let clip = root.join(format!("game1/Clip{c}"));
            let mut always: Option<Vec<bool>> = None;
            for i in 0..o.frames {
                let img = image::open(clip.join(format!("{i:04}.jpg")))
                    .unwrap()
                    .to_rgb8();
                let ball: Vec<bool> = img
                    .pixels()
                    .map(|p| p[0] > 170 && p[1] > 190 && p[2] < 120)
                    .collect();
                always = Some(match always {
                    None => ball,
                    Some(a) => a.iter().zip(&ball).map(|(x, y)| *x && *y).collect(),
                });
            }
            total += always.unwrap().iter().filter(|&&b| b).count();
        }
        total
    };
    assert_eq!(always_ball_coloured("none", &base), 0);
    let with = always_ball_coloured(
        "four",
        &SynthOptions {
            distractors: 4,
            ..base.clone()
        },
    );
    assert!(with >= 2 * 4 * 5, "static ball-coloured pixels: {with}");
    assert!(synth_stamp(&base).contains("distractors=0"));
}
