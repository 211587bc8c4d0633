//! File helpers and PNG outputs.
use crate::common;

use common::{TempDir, write_jpeg};
use image::GenericImageView;
use tracknet_data::viz::{
    Panel, Series, colormap, heatmap_image, overlay_image, panels_image, save_heatmap_png,
    save_overlay_png, save_panels_png, save_trajectory_png, trajectory_figure, trajectory_image,
};
use tracknet_data::{DataError, PredictionRow, list_frames, write_atomic, write_predictions_csv};

#[test]
fn write_atomic_replaces_and_leaves_no_temp_files() {
    let dir = TempDir::new("atomic");
    let p = dir.path().join("sub/out.txt");
    write_atomic(&p, b"one").unwrap();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    let entries: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
    assert_eq!(entries.len(), 1);
    let err = write_atomic(&p.join("under-a-file"), b"").unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
}

#[test]
fn list_frames_sorts_naturally_and_filters() {
    let dir = TempDir::new("list");
    for name in ["10.jpg", "2.jpg", "1.png", "Label.csv", "notes.txt"] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    let names: Vec<String> = list_frames(dir.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec!["1.png", "2.jpg", "10.jpg"]);
    let one = dir.path().join("2.jpg");
    assert_eq!(list_frames(&one).unwrap(), vec![one.clone()]);
    assert!(matches!(
        list_frames(&dir.path().join("notes.txt")),
        Err(DataError::NoFrames(_))
    ));
    let empty = TempDir::new("list-empty");
    assert!(matches!(
        list_frames(empty.path()),
        Err(DataError::NoFrames(_))
    ));
}

#[test]
fn predictions_csv_matches_label_schema_plus_confidence() {
    let dir = TempDir::new("csv");
    let p = dir.path().join("pred.csv");
    let rows = vec![
        PredictionRow {
            file_name: "0000.jpg".into(),
            visibility: 1,
            xy: Some((10.0, 20.5)),
            status: Some(0),
            confidence: 0.9,
        },
        PredictionRow {
            file_name: "0001.jpg".into(),
            visibility: 0,
            xy: Some((3.0, 4.0)),
            status: None,
            confidence: 0.125,
        },
    ];
    write_predictions_csv(&p, &rows).unwrap();
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "file name,visibility,x-coordinate,y-coordinate,status,confidence\n\
         0000.jpg,1,10.00,20.50,0,0.9000\n\
         0001.jpg,0,,,,0.1250\n"
    );
    // A name with a comma is quoted, so the file still has six fields per row.
    let odd = [PredictionRow {
        file_name: "a,b.jpg".into(),
        ..rows[1].clone()
    }];
    write_predictions_csv(&p, &odd).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.ends_with("\n\"a,b.jpg\",0,,,,0.1250\n"), "{text}");
}

#[test]
fn heatmap_overlay_trajectory_and_curves() {
    let dir = TempDir::new("viz");
    assert_eq!(colormap(0.0), [0, 0, 4]);
    assert_eq!(colormap(1.0), [252, 255, 164]);
    assert_eq!(colormap(2.0), colormap(1.0));
    let mut hm = vec![0.0f32; 16 * 9];
    hm[4 * 16 + 8] = 1.0;
    let img = heatmap_image(&hm, 16, 9).unwrap();
    assert_eq!(img.dimensions(), (16, 9));
    assert_eq!(img.get_pixel(8, 4).0, [252, 255, 164]);
    assert!(heatmap_image(&hm, 10, 9).is_err());
    let hp = dir.path().join("hm.png");
    save_heatmap_png(&hp, &hm, 16, 9).unwrap();
    assert_eq!(image::open(&hp).unwrap().to_rgb8(), img);

    let frame = image::RgbImage::from_pixel(64, 36, image::Rgb([0, 0, 0]));
    let ov = overlay_image(&frame, &hm, (16, 9), Some((8.0, 4.0)), Some((2.0, 2.0))).unwrap();
    assert_eq!(ov.dimensions(), (64, 36));
    // Heatmap peak blended at frame pixel (8*4, 4*4); target cross centre at (8, 8) is cyan.
    assert_ne!(ov.get_pixel(33, 17).0, [0, 0, 0]);
    assert_eq!(ov.get_pixel(8, 8).0, tracknet_data::viz::TARGET_COLOUR);
    assert_eq!(ov.get_pixel(60, 30).0, [0, 0, 0]);

    let fp = dir.path().join("f.jpg");
    write_jpeg(&fp, 64, 36);
    save_overlay_png(&dir.path().join("ov.png"), &fp, &hm, (16, 9), None, None).unwrap();
    let pts = vec![
        Some((5.0, 5.0)),
        None,
        Some((20.0, 10.0)),
        Some((30.0, 20.0)),
    ];
    let tr = trajectory_image(&frame, &[(&pts, [255, 0, 0])]).unwrap();
    assert_eq!(tr.get_pixel(25, 15).0, [255, 0, 0], "segment 2-3 is drawn");
    assert_eq!(
        tr.get_pixel(12, 7).0,
        [0, 0, 0],
        "no segment across the gap"
    );
    save_trajectory_png(&dir.path().join("tr.png"), &fp, &pts, &pts).unwrap();
    // The figure: the frame (scaled to 480 px wide) under labelled axes, then x and y panels.
    let fig = trajectory_figure(&frame, "clip", &pts, &[]).unwrap();
    assert_eq!(fig.width(), 580);
    let red = fig.pixels().filter(|p| p.0 == [255, 40, 40]).count();
    assert!(
        red > 200,
        "predicted track drawn over the frame and in both panels: {red}"
    );
    let dark = fig.pixels().filter(|p| p.0 == [0, 0, 0]).count();
    assert!(
        dark > 480 * 270 / 2,
        "the black frame fills the plotting area: {dark}"
    );

    let cp = dir.path().join("curves.png");
    let loss: Vec<(f32, f32)> = (0..50)
        .map(|i| (i as f32, 1.0 / (1.0 + i as f32)))
        .collect();
    let f1: Vec<(f32, f32)> = (0..50).map(|i| (i as f32, i as f32 / 50.0)).collect();
    let panels = [
        Panel::new("Loss", "epoch", "loss")
            .integer_x()
            .with(Series::new("loss", loss.clone())),
        Panel::new("Scores", "epoch", "score")
            .integer_x()
            .y_range(0.0, 1.0)
            .right_axis("px")
            .with(Series::new("f1", f1))
            .with(Series::new("empty", vec![]))
            .with(Series::new("l2", loss).on_right()),
    ];
    save_panels_png(&cp, "Training", (800, 600), &panels).unwrap();
    let c = image::open(&cp).unwrap().to_rgb8();
    assert_eq!(c.dimensions(), (800, 600));
    assert_eq!(c, panels_image("Training", (800, 600), &panels).unwrap());
    let coloured =
        |img: &image::RgbImage, rgb: [u8; 3]| img.pixels().filter(|p| p.0 == rgb).count();
    assert!(coloured(&c, [31, 119, 180]) > 100, "loss series drawn");
    // Each panel's series take the palette in order; the right-axis one is the third.
    let (top, bottom) = (
        c.view(0, 0, 800, 300).to_image(),
        c.view(0, 300, 800, 300).to_image(),
    );
    assert!(coloured(&top, [31, 119, 180]) > 100 && coloured(&top, [255, 127, 14]) == 0);
    assert!(
        coloured(&bottom, [44, 160, 44]) > 100,
        "right-axis series drawn"
    );
    // A gap (NaN) splits a line rather than joining across it.
    let gap = Panel::new("gap", "x", "y").with(Series::new(
        "a",
        vec![
            (0.0, 0.0),
            (1.0, 1.0),
            (2.0, f32::NAN),
            (3.0, 0.0),
            (4.0, 1.0),
        ],
    ));
    let joined = Panel::new("gap", "x", "y").with(Series::new(
        "a",
        vec![(0.0, 0.0), (1.0, 1.0), (3.0, 0.0), (4.0, 1.0)],
    ));
    let g = panels_image("", (400, 300), &[gap]).unwrap();
    let j = panels_image("", (400, 300), &[joined]).unwrap();
    let (in_gap, in_joined) = (coloured(&g, [31, 119, 180]), coloured(&j, [31, 119, 180]));
    assert!(
        in_gap > 50 && in_gap + 50 < in_joined,
        "{in_gap} vs {in_joined}"
    );
}
