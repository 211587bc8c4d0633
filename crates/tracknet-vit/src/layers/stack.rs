//! What every backbone family provides as a forward, and what its blocks share.

use burn::prelude::*;

use crate::error::VitError;
use crate::layers::BackboneOutput;

/// What the blocks of one forward share, made once per forward by
/// [`crate::backbone::Backbone::block_context`]
/// so that a block run again (recomputation) sees exactly the tables of the first run.
#[derive(Clone, Debug)]
pub struct BlockContext<B: Backend> {
    /// Patch grid `[H/p, W/p]`.
    pub grid: [usize; 2],
    /// DINOv3's RoPE `(cos, sin)`, each `[grid tokens, head_dim]`; `None` for ViT and DINOv2.
    pub rope: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
}

/// A family's forward as the rest of the project drives it: embeddings, the blocks one by one
/// (so that recomputation can re-run any of them), the final norm. One impl per family;
/// [`crate::backbone::Backbone`] dispatches through [`crate::backbone::Backbone::stack`].
pub trait TokenStack<B: Backend> {
    /// The per-forward context of the blocks for an input of `dims` `[batch, channels, H, W]`.
    fn block_context(&self, dims: [usize; 4], device: &B::Device) -> BlockContext<B>;
    /// `pixel_values [batch, channels, H, W]` → tokens `[batch, tokens, hidden]`.
    fn embed(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3>;
    /// Number of transformer blocks.
    fn num_layers(&self) -> usize;
    /// Block `i`: tokens `[batch, tokens, hidden]` → the same shape.
    fn block(&self, i: usize, x: Tensor<B, 3>, ctx: &BlockContext<B>) -> Tensor<B, 3>;
    /// The final norm and the patch grid `[batch, H/p, W/p, hidden]`, after the last block.
    fn finish(&self, x: Tensor<B, 3>, ctx: &BlockContext<B>) -> BackboneOutput<B>;
    /// Width of the tokens, `hidden_size`.
    fn hidden_size(&self) -> usize;
    /// Side of the square patches in pixels.
    fn patch_size(&self) -> usize;
    /// Input channels the patch convolution expects.
    fn num_channels(&self) -> usize;

    /// `pixel_values [batch, channels, H, W]` → all tokens and the patch grid.
    fn forward(&self, pixel_values: Tensor<B, 4>) -> BackboneOutput<B> {
        let ctx = self.block_context(pixel_values.dims(), &pixel_values.device());
        let mut x = self.embed(pixel_values);
        for i in 0..self.num_layers() {
            x = self.block(i, x, &ctx);
        }
        self.finish(x, &ctx)
    }
}

/// The checks every family's config shares: positive sizes, heads that divide the hidden size,
/// a drop-path rate in [0, 1), a known activation. `path` names the config in the error.
pub(crate) fn check_common(
    path: &std::path::Path,
    patch_size: usize,
    hidden_size: usize,
    num_attention_heads: usize,
    drop_path_rate: f64,
    hidden_act: &str,
) -> Result<(), VitError> {
    let fail = |message: String| {
        Err(VitError::Config {
            path: path.to_path_buf(),
            message,
        })
    };
    if patch_size == 0 || hidden_size == 0 || num_attention_heads == 0 {
        return fail("patch_size, hidden_size and num_attention_heads must be positive".into());
    }
    if !hidden_size.is_multiple_of(num_attention_heads) {
        return fail(format!(
            "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
        ));
    }
    if !(0.0..1.0).contains(&drop_path_rate) {
        return fail(format!("drop_path_rate {drop_path_rate} must be in [0, 1)"));
    }
    if crate::layers::HiddenAct::parse(hidden_act).is_none() {
        return fail(format!("hidden_act `{hidden_act}` is not supported"));
    }
    Ok(())
}
