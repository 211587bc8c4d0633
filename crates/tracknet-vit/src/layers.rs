//! Pieces both backbone families (DINOv3, classic ViT) are built from: attention, activations,
//! token layout, and the parameter source that random init and checkpoint loading share.

mod act;
mod attention;
pub(crate) mod consts;
mod norm;
pub(crate) mod params;
pub mod pos_embed;
mod scale;
mod stack;
mod tokens;

pub use act::HiddenAct;
pub(crate) use attention::{attention, split_heads};
pub use norm::LayerNorm;
pub use scale::LayerScale;
pub(crate) use scale::layer_scale;
pub(crate) use stack::check_common;
pub use stack::{BlockContext, TokenStack};
pub use tokens::BackboneOutput;
pub(crate) use tokens::{check_pixel_dims, drop_path, flatten_patches};
