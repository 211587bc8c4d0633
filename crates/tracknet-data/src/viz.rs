//! PNG outputs: pictures on a frame ([`frame`]: heatmaps, overlays, tracks) and charts
//! ([`chart`]: training curves, a clip's trajectory figure, the bench's memory chart).

mod chart;
mod frame;

pub use chart::{
    Axis, PALETTE, Panel, Series, panels_image, save_panels_png, save_trajectory_png,
    trajectory_figure,
};
pub use frame::{
    PRED_COLOUR, TARGET_COLOUR, Track, colormap, heatmap_image, overlay_image, save_heatmap_png,
    save_overlay_png, save_png, trajectory_image,
};
