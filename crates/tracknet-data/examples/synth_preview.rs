//! Writes a small synthetic set and times it: `cargo run -p tracknet-data --example synth_preview -- OUT`.
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), tracknet_data::DataError> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "synth_preview".into()),
    );
    let opts = tracknet_data::SynthOptions {
        games: 2,
        clips: 4,
        frames: 60,
        overwrite: true,
        ..Default::default()
    };
    let t = Instant::now();
    let s = tracknet_data::generate(&out, &opts)?;
    println!("{s:?} in {:.3}s", t.elapsed().as_secs_f64());
    // Previews: a frame as PNG and the labelled trajectory over the first frame.
    let (index, _) = tracknet_data::DatasetIndex::scan(&out, &[], false)?;
    let clip: Vec<_> = index.frames.iter().filter(|f| f.clip == "Clip1").collect();
    let pts: Vec<_> = clip.iter().map(|f| f.xy).collect();
    tracknet_data::viz::save_trajectory_png(&out.join("trajectory.png"), &clip[0].path, &[], &pts)?;
    for (i, f) in clip.iter().enumerate().step_by(6) {
        let img = tracknet_data::preprocess::decode_rgb(&f.path)
            .map_err(tracknet_data::DataError::Dataset)?;
        tracknet_data::viz::save_png(&out.join(format!("frame{i}.png")), &img)?;
    }
    let vis: Vec<(f32, f32)> = clip
        .iter()
        .enumerate()
        .map(|(i, f)| (i as f32, f32::from(f.visibility)))
        .collect();
    let ys: Vec<(f32, f32)> = pts
        .iter()
        .enumerate()
        .map(|(i, p)| (i as f32, p.map_or(f32::NAN, |p| p.1)))
        .collect();
    use tracknet_data::viz::{Panel, Series, save_panels_png};
    save_panels_png(
        &out.join("curves.png"),
        "Clip1 labels",
        (960, 420),
        &[
            Panel::new("Labels over the clip", "frame", "visibility (0-3)")
                .integer_x()
                .right_axis("ball y (frame px)")
                .with(Series::new("visibility", vis))
                .with(Series::new("ball y", ys).on_right()),
        ],
    )?;
    let tput =
        tracknet_data::measure_throughput(&index, &tracknet_data::LoaderOptions::default(), 240)?;
    println!("{tput:?}");
    // Extra frames to convert to PNG, given as paths relative to OUT.
    for rel in std::env::args().skip(2) {
        let img = tracknet_data::preprocess::decode_rgb(&out.join(&rel))
            .map_err(tracknet_data::DataError::Dataset)?;
        tracknet_data::viz::save_png(&out.join(rel.replace('/', "_") + ".png"), &img)?;
    }
    Ok(())
}
