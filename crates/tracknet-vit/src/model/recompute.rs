//! Recomputation per segment (`training.gradient_checkpointing: true`).
//!
//! The model is cut into segments — the embeddings, each transformer block, the bridge to the
//! decoder (final norm, patch grid), each decoder stage, and the output (final resize and head).
//! The forward pass runs every segment before the tail (the last decoder stage and the output)
//! without an autodiff graph and keeps only the segment boundaries; the tail runs once, with
//! its graph, into the loss. The backward pass then walks the segments from the last to the
//! first: it runs one segment again with a graph, from its saved input, and backpropagates the
//! gradient of the segment's output through it (`sum(y · g)`), which gives the gradients of
//! the segment's parameters and of its input, the next upstream gradient. At any moment only
//! one segment's activations are alive, instead of the whole model's.
//!
//! Why not a custom op whose backward re-runs its segment: Burn 0.21's autodiff holds the
//! graph's lock while it runs the backward steps, and a nested `backward()` inside a step waits
//! on it (measured: it hangs). Here every backward is a separate, top-level one.
//!
//! Random ops (dropout, drop path) draw the same masks in both runs of a segment: the backend
//! RNG is reseeded per segment, from one seed drawn per step. RoPE augmentation is drawn once
//! per step into the [`BlockContext`]. A BatchNorm decoder runs as one segment, once, with its
//! graph: its running statistics must update once per step.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::HeatmapModel;
use crate::backbone::{BackbonePart, BlockContext, trains};
use crate::decoder::bilinear_resize;
use crate::rng::draw_seed;

/// A stretch of the model that recomputation treats as one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Patch embedding and tokens: images `[batch, channels, H, W]` → tokens.
    Embed,
    /// Transformer block `i`: tokens `[batch, tokens, hidden]` → tokens.
    Block(usize),
    /// Final norm, patch grid, channels first: tokens → map `[batch, hidden, h, w]`.
    Bridge,
    /// Decoder stage `j`: map → map.
    Stage(usize),
    /// Final bilinear resize and the 1×1 head: map → logits `[batch, 1, Hh, Wh]`.
    Output,
    /// Bridge, every stage and the output at once (a BatchNorm decoder).
    Decoder,
}

/// An activation at a segment boundary.
#[derive(Clone, Debug)]
pub enum Activation<B: Backend> {
    /// `[batch, tokens, hidden]`.
    Tokens(Tensor<B, 3>),
    /// `[batch, channels, h, w]`.
    Map(Tensor<B, 4>),
}

impl<B: Backend> Activation<B> {
    /// The map; a token activation here is a bug in the segment list.
    pub fn into_map(self) -> Tensor<B, 4> {
        match self {
            Activation::Map(t) => t,
            Activation::Tokens(t) => {
                unreachable!("segment produced tokens {:?}, not a map", t.dims())
            }
        }
    }

    fn detach(self) -> Self {
        match self {
            Activation::Tokens(t) => Activation::Tokens(t.detach()),
            Activation::Map(t) => Activation::Map(t.detach()),
        }
    }

    fn require_grad(self) -> Self {
        match self {
            Activation::Tokens(t) => Activation::Tokens(t.require_grad()),
            Activation::Map(t) => Activation::Map(t.require_grad()),
        }
    }
}

impl<B: AutodiffBackend> Activation<B> {
    /// The gradient of this (leaf) activation in `grads`.
    fn grad(&self, grads: &B::Gradients) -> Option<Activation<B::InnerBackend>> {
        match self {
            Activation::Tokens(t) => t.grad(grads).map(Activation::Tokens),
            Activation::Map(t) => t.grad(grads).map(Activation::Map),
        }
    }

    /// `sum(self · g)`: its gradient with respect to `self` is exactly `g` (a product by one).
    fn dot(self, g: Activation<B::InnerBackend>) -> Tensor<B, 1> {
        match (self, g) {
            (Activation::Tokens(y), Activation::Tokens(g)) => (y * Tensor::from_inner(g)).sum(),
            (Activation::Map(y), Activation::Map(g)) => (y * Tensor::from_inner(g)).sum(),
            (y, g) => unreachable!("segment output {y:?} and its gradient {g:?} differ in kind"),
        }
    }
}

impl<B: crate::ModelBackend> HeatmapModel<B> {
    /// The segments of [`Self::forward`], in order.
    pub fn segments(&self) -> Vec<Segment> {
        let mut segments = vec![Segment::Embed];
        segments.extend((0..self.backbone.num_layers()).map(Segment::Block));
        if self.decoder.has_batch_norm() {
            segments.push(Segment::Decoder);
        } else {
            segments.push(Segment::Bridge);
            segments.extend((0..self.decoder.stages.len()).map(Segment::Stage));
            segments.push(Segment::Output);
        }
        segments
    }

    /// Runs one segment; the segments in order make [`Self::forward`].
    pub fn run_segment(
        &self,
        segment: Segment,
        x: Activation<B>,
        ctx: &BlockContext<B>,
    ) -> Activation<B> {
        let tokens = |x: Activation<B>| match x {
            Activation::Tokens(t) => t,
            Activation::Map(t) => {
                unreachable!("segment {segment:?} takes tokens, got {:?}", t.dims())
            }
        };
        match segment {
            Segment::Embed => Activation::Tokens(self.backbone.embed(x.into_map())),
            Segment::Block(i) => Activation::Tokens(self.backbone.block(i, tokens(x), ctx)),
            Segment::Bridge => Activation::Map(self.bridge(tokens(x), ctx)),
            Segment::Stage(j) => Activation::Map(self.decoder.stages[j].forward(x.into_map())),
            Segment::Output => Activation::Map(
                self.head
                    .forward(bilinear_resize(x.into_map(), self.decoder.output_size)),
            ),
            Segment::Decoder => Activation::Map(
                self.head
                    .forward(self.decoder.forward(self.bridge(tokens(x), ctx))),
            ),
        }
    }

    /// Whether any parameter of `segment` trains.
    pub fn segment_trains(&self, segment: Segment) -> bool {
        match segment {
            Segment::Embed => self.backbone.part_trains(BackbonePart::Embed),
            Segment::Block(i) => self.backbone.part_trains(BackbonePart::Block(i)),
            Segment::Bridge => self.backbone.part_trains(BackbonePart::Norm),
            Segment::Stage(j) => trains(&self.decoder.stages[j]),
            Segment::Output => trains(&self.head),
            Segment::Decoder => {
                self.backbone.part_trains(BackbonePart::Norm)
                    || trains(&self.decoder)
                    || trains(&self.head)
            }
        }
    }

    /// Final norm and patch grid, channels first: `[batch, tokens, C]` → `[batch, C, h, w]`.
    fn bridge(&self, x: Tensor<B, 3>, ctx: &BlockContext<B>) -> Tensor<B, 4> {
        self.backbone
            .finish(x, ctx)
            .patch_grid
            .permute([0, 3, 1, 2])
    }
}

impl<B: crate::ModelBackend + AutodiffBackend> HeatmapModel<B> {
    /// Forward and backward of `loss_of(self.forward(images))` with recomputation per segment
    /// (see the module docs). Returns the loss (detached) and the gradients of the trainable
    /// parameters — the plain backward's, with one segment's activations alive at a time.
    pub fn recomputed_grads(
        &self,
        images: Tensor<B, 4>,
        loss_of: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 1>,
    ) -> (Tensor<B, 1>, GradientsParams) {
        let device = images.device();
        let segments = self.segments();
        let n = segments.len();
        let ctx = self.backbone.block_context(images.dims(), &device);
        let base = draw_seed::<B>(&device);
        // The backend's generator, or the shard's stream inside `rng::with_stream`.
        let reseed = |k: usize| {
            crate::rng::reseed::<B>(
                base.wrapping_add((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                &device,
            )
        };

        // The tail — the last decoder stage and the output — runs once, with its graph: its
        // backward comes first, when nothing else is alive, so running it twice would cost a
        // forward of the largest maps and save no memory.
        let tail = segments
            .iter()
            .rposition(|s| matches!(s, Segment::Stage(_)))
            .unwrap_or(n - 1);

        // Forward without a graph up to the tail: only the boundaries stay.
        let frozen = self.clone().no_grad();
        let mut inputs: Vec<Activation<B>> = Vec::with_capacity(tail + 1);
        inputs.push(Activation::Map(images.detach()));
        for (k, segment) in segments[..tail].iter().enumerate() {
            reseed(k);
            let y = frozen.run_segment(*segment, inputs[k].clone(), &ctx);
            inputs.push(y.detach());
        }
        drop(frozen);

        // A segment's input needs a gradient only when something before it trains (LoRA with
        // frozen embeddings: not block 0's; a frozen backbone: no block's at all).
        let trains: Vec<bool> = segments.iter().map(|s| self.segment_trains(*s)).collect();
        let before: Vec<bool> = (0..n).map(|k| trains[..k].iter().any(|t| *t)).collect();
        let mut grads_out = GradientsParams::new();
        let tracked = |k: usize, input: Activation<B>| {
            if before[k] {
                input.require_grad()
            } else {
                input
            }
        };
        let mut backward = |root: Tensor<B, 1>, k: usize, x: &Activation<B>| {
            let mut grads = root.backward();
            let upstream = if before[k] { x.grad(&grads) } else { None };
            self.visit(&mut Collect::<B> {
                grads: &mut grads,
                out: &mut grads_out,
            });
            upstream
        };

        // The tail and the loss.
        let x = tracked(
            tail,
            inputs.pop().expect("the input of the tail was pushed"),
        );
        let y = (tail..n).fold(x.clone(), |y, k| {
            reseed(k);
            self.run_segment(segments[k], y, &ctx)
        });
        let root = loss_of(y.into_map());
        let loss = root.clone().detach();
        let mut upstream = backward(root, tail, &x);

        // Then every segment before it, last first, run again with its graph.
        for k in (0..tail).rev() {
            // Nothing trains from here down (`upstream` is `None` then too).
            if !trains[k] && !before[k] {
                break;
            }
            let (Some(g), Some(input)) = (upstream.take(), inputs.pop()) else {
                break;
            };
            let x = tracked(k, input);
            reseed(k);
            let root = self.run_segment(segments[k], x.clone(), &ctx).dot(g);
            upstream = backward(root, k, &x);
        }
        (loss, grads_out)
    }
}

/// Moves the gradients of one segment's backward into the step's [`GradientsParams`], adding
/// where a parameter already has one.
struct Collect<'a, B: AutodiffBackend> {
    grads: &'a mut B::Gradients,
    out: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = param.val().grad_remove(self.grads) {
            let sum = match self.out.remove::<B::InnerBackend, D>(param.id) {
                Some(a) => a + g,
                None => g,
            };
            self.out.register::<B::InnerBackend, D>(param.id, sum);
        }
    }
}
