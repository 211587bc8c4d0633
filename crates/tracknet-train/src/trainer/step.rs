//! One optimizer step: the gradients of a batch (split into micro-batches and shards run in
//! parallel where the backend allows), loss scaling, the update; and the micro-batch search after
//! an out-of-memory failure.

use super::*;

/// The update after a batch's gradients: global-norm clipping to `clip` (when set) with the
/// norm `gnorm` already measured, then one optimizer step at `lr`.
pub fn update<B: AutodiffBackend + ModelBackend>(
    model: HeatmapModel<B>,
    opt: &mut Optimizer<B::InnerBackend>,
    grads: GradientsParams,
    gnorm: f64,
    clip: Option<f64>,
    lr: f64,
) -> HeatmapModel<B>
where
    B::InnerBackend: ModelBackend,
{
    let grads = clip_grads::<B, _>(&model, grads, gnorm, clip);
    opt.step(model, grads, lr)
}

/// Gradients of a loss scaled by `scale` (fp16 loss scaling) back to the loss's own, with
/// their norm `gnorm`; unchanged at scale 1.
pub fn unscale<B: AutodiffBackend + ModelBackend>(
    model: &HeatmapModel<B>,
    grads: GradientsParams,
    gnorm: f64,
    scale: f64,
) -> (GradientsParams, f64) {
    if scale == 1.0 {
        return (grads, gnorm);
    }
    (
        scale_grads::<B, _>(model, grads, 1.0 / scale),
        gnorm / scale,
    )
}

/// How a step splits its batch: sequential micro-batches for memory
/// (`training.micro_batch_size` and the out-of-memory search), recomputation per segment
/// (`training.gradient_checkpointing`), and shards run at once on threads
/// (`training.parallel_shards`, as [`parallel_shards`] allows it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPlan {
    /// Samples per micro-batch; a batch no larger is not micro-batched.
    pub micro: usize,
    /// Recompute per segment ([`HeatmapModel::recomputed_grads`]).
    pub recompute: bool,
    /// Shards of a batch that is not micro-batched, each on its own thread (1: no split).
    pub shards: usize,
    /// The autocast dtype and loss scale (`training.amp`, [`crate::amp`]).
    pub precision: StepPrecision,
}

impl StepPlan {
    /// The sample ranges a batch of `n` is split into, in order, and whether they run at once
    /// (shards) or one after another (micro-batches). Shards differ in size by at most one.
    pub fn pieces(&self, n: usize) -> (Vec<Range<usize>>, bool) {
        let micro = self.micro.max(1);
        if micro < n {
            let starts = (0..n).step_by(micro);
            return (starts.map(|s| s..(s + micro).min(n)).collect(), false);
        }
        let k = self.shards.clamp(1, n.max(1));
        let mut ranges = Vec::with_capacity(k);
        let mut start = 0;
        for i in 0..k {
            let len = n / k + usize::from(i < n % k);
            ranges.push(start..start + len);
            start += len;
        }
        (ranges, k > 1)
    }
}

/// `training.parallel_shards` as this model on this backend can take it: the shard count to
/// use and, when it had to be 1, the one-line reason. Shards need a backend that gains by host
/// threads and a decoder without BatchNorm (each shard would be normalised by its own
/// statistics and update the shared running statistics in thread order). Random draws are no
/// obstacle: each shard draws from its own stream (`tracknet_lora::rng`).
pub fn parallel_shards<B: AutodiffBackend + ModelBackend>(
    requested: usize,
    model: &HeatmapModel<B>,
) -> (usize, Option<String>) {
    if requested <= 1 {
        return (1, None);
    }
    let why = if !B::parallel_shards() {
        "this backend runs the whole batch on one device"
    } else if model.decoder.has_batch_norm() {
        "the decoder's BatchNorm would normalise each shard by its own statistics"
    } else {
        return (requested, None);
    };
    (
        1,
        Some(format!(
            "training.parallel_shards = {requested}: batches are not split ({why})"
        )),
    )
}

/// One whole training step as the loop takes it (without its checkpointing on non-finite
/// values): [`step_grads`], the gradient norm, [`update`]. With fp16's `scaler` the step runs
/// at its scale, and an overflow halves it and skips the update (`plan.precision.loss_scale`
/// is the scale otherwise). Returns the model, the loss, the norm and whether the update was
/// taken.
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: AutodiffBackend + ModelBackend>(
    model: HeatmapModel<B>,
    opt: &mut Optimizer<B::InnerBackend>,
    loss_fn: &crate::loss::HeatmapLoss,
    batch: &Batch,
    mut plan: StepPlan,
    scaler: Option<&mut LossScaler>,
    clip: Option<f64>,
    lr: f64,
    device: &B::Device,
) -> (HeatmapModel<B>, f64, f64, bool)
where
    B::InnerBackend: ModelBackend,
{
    if let Some(s) = &scaler {
        plan.precision.loss_scale = s.scale;
    }
    let (loss, grads) = step_grads(&model, loss_fn, batch, plan, device);
    let gnorm = grad_norm::<B, _>(&model, &grads);
    let finite = loss.is_finite() && gnorm.is_finite();
    if !scaler.is_none_or(|s| s.update(finite)) {
        return (model, loss, gnorm, false);
    }
    let (grads, gnorm) = unscale::<B>(&model, grads, gnorm, plan.precision.loss_scale);
    (
        update(model, opt, grads, gnorm, clip, lr),
        loss,
        gnorm,
        true,
    )
}

/// Forward + backward over the pieces of `batch` ([`StepPlan::pieces`]); returns the batch loss
/// and summed gradients (each piece's loss weighted by its share of the batch). Shards run at
/// once, each on a [`replica`] of the model and with its own stream for the forward's random
/// draws ([`with_stream`]); their losses and gradients are summed in piece order,
/// so a run repeats to the bit whatever the threads' timing. With
/// `plan.recompute`, each piece runs through [`HeatmapModel::recomputed_grads`]: the same
/// gradients, one segment's activations alive at a time.
pub fn step_grads<B: AutodiffBackend + ModelBackend>(
    model: &HeatmapModel<B>,
    loss_fn: &crate::loss::HeatmapLoss,
    batch: &Batch,
    plan: StepPlan,
    device: &B::Device,
) -> (f64, GradientsParams)
where
    B::InnerBackend: ModelBackend,
{
    let n = batch.batch_size;
    let scale = plan.precision.loss_scale;
    let piece = |model: &HeatmapModel<B>, range: Range<usize>| -> (f64, GradientsParams) {
        // The region covers the backward too: a recomputing step runs forwards inside it.
        let _region = autocast(plan.precision.dtype);
        let weight = range.len() as f64 / n as f64 * scale;
        let (x, y, m) = batch_tensors::<B>(batch, range, device);
        let (loss, grads) = if plan.recompute {
            model.recomputed_grads(x, |logits| loss_fn.forward(logits, y, m).mul_scalar(weight))
        } else {
            let loss = loss_fn.forward(model.forward(x), y, m).mul_scalar(weight);
            let grads = GradientsParams::from_grads(loss.clone().backward(), model);
            (loss, grads)
        };
        (loss.into_scalar().elem::<f64>() / scale, grads)
    };
    let (ranges, at_once) = plan.pieces(n);
    let results: Vec<(f64, GradientsParams)> = if at_once {
        // Each shard draws the forward's random numbers (dropout masks, augmentation) from its
        // own stream, seeded from the backend's generator here, in order.
        let base = draw_seed::<B>(device);
        let piece = |model: &HeatmapModel<B>, i: usize, range: Range<usize>| {
            with_stream(base.wrapping_add(i as u64), || piece(model, range))
        };
        let replicas: Vec<_> = ranges[1..].iter().map(|_| replica(model)).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = ranges[1..]
                .iter()
                .cloned()
                .zip(replicas)
                .enumerate()
                .map(|(i, (range, (copy, ids)))| {
                    let piece = &piece;
                    scope.spawn(move || {
                        let (loss, grads) = piece(&copy, i + 1, range);
                        (loss, rekey(&copy, grads, &ids))
                    })
                })
                .collect();
            let mut out = vec![piece(model, 0, ranges[0].clone())];
            for h in handles {
                out.push(h.join().unwrap_or_else(|p| resume_unwind(p)));
            }
            out
        })
    } else {
        ranges.into_iter().map(|r| piece(model, r)).collect()
    };
    let mut total = 0.0;
    let mut acc: Option<GradientsParams> = None;
    for (loss, grads) in results {
        total += loss;
        acc = Some(match acc {
            Some(a) => accumulate::<B, _>(model, a, grads),
            None => grads,
        });
    }
    (total, acc.unwrap_or_default())
}

/// A copy of `model` whose parameters are new autodiff leaves (new ids) over the same values,
/// so that a shard's graph on another thread never joins the first shard's through a shared
/// parameter node; and the map from the copy's parameter ids to the original's.
pub fn replica<B: AutodiffBackend>(
    model: &HeatmapModel<B>,
) -> (HeatmapModel<B>, HashMap<ParamId, ParamId>) {
    struct Fresh(HashMap<ParamId, ParamId>);
    impl<B: AutodiffBackend> ModuleMapper<B> for Fresh {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, value, mapper) = param.consume();
            let tracked = value.is_require_grad();
            let value = Tensor::from_inner(value.inner());
            let value = if tracked { value.require_grad() } else { value };
            let new = ParamId::new();
            self.0.insert(new, id);
            Param::from_mapped_value(new, value, mapper)
        }
    }
    // A clone of a parameter not yet initialised gets its own lazy initialiser, which would
    // draw new random values: initialise the original's first, so the copy clones its values.
    struct Init;
    impl<B: AutodiffBackend> ModuleVisitor<B> for Init {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Init);
    let mut fresh = Fresh(HashMap::new());
    let copy = model.clone().map(&mut fresh);
    (copy, fresh.0)
}

/// `grads` of a [`replica`], keyed by the original model's parameter ids.
fn rekey<B: AutodiffBackend>(
    copy: &HeatmapModel<B>,
    grads: GradientsParams,
    ids: &HashMap<ParamId, ParamId>,
) -> GradientsParams {
    struct Rekey<'a> {
        from: GradientsParams,
        to: GradientsParams,
        ids: &'a HashMap<ParamId, ParamId>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Rekey<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let (Some(g), Some(id)) = (
                self.from.remove::<B::InnerBackend, D>(param.id),
                self.ids.get(&param.id),
            ) {
                self.to.register::<B::InnerBackend, D>(*id, g);
            }
        }
    }
    let mut v = Rekey {
        from: grads,
        to: GradientsParams::new(),
        ids,
    };
    copy.visit(&mut v);
    v.to
}

/// The micro-batch to retry with after an out-of-memory at `micro` (`retries` halvings done
/// for this batch already), or the error that ends the search: `adaptive_micro_batch` off, a
/// fixed `micro_batch_size`, `oom_retries` spent, or `min_micro_batch_size` reached.
pub fn next_micro_batch(
    t: &tracknet_config::TrainingConfig,
    micro: usize,
    retries: usize,
) -> Result<usize, TrainError> {
    let next = micro / t.mb_backoff_factor.max(2);
    let why = if !t.adaptive_micro_batch {
        "training.adaptive_micro_batch is off".to_string()
    } else if t.micro_batch_size > 0 {
        format!(
            "training.micro_batch_size = {} fixes the micro-batch",
            t.micro_batch_size
        )
    } else if retries >= t.oom_retries {
        format!("training.oom_retries ({}) are spent", t.oom_retries)
    } else if next < t.min_micro_batch_size.max(1) {
        format!(
            "the next micro-batch ({next}) would be below training.min_micro_batch_size ({})",
            t.min_micro_batch_size
        )
    } else {
        return Ok(next);
    };
    Err(TrainError::OutOfMemory {
        micro_batch: micro,
        retries,
        why,
    })
}
