//! Range and consistency checks on a typed [`RunConfig`], and non-fatal warnings.

use std::collections::BTreeSet;

use crate::RunConfig;
use crate::error::ConfigIssue;
use crate::model::TargetModules;
use crate::training::BEST_METRICS;

/// Largest image side (`resize`, `synthetic.size`; `heatmap.size` is bounded by `resize`)
/// accepted, in pixels.
pub const MAX_IMAGE_SIDE: usize = 16_384;
/// Largest `batch_size` (and micro-batch) accepted.
pub const MAX_BATCH: usize = 65_536;
/// Largest number of optimizer steps a run may plan (`epochs × steps_per_epoch`).
pub const MAX_STEPS: usize = 1 << 40;
/// Largest product of the decoder's upsampling factors.
pub const MAX_TOTAL_UPSAMPLE: usize = 1 << 12;
/// Most threads a batch is split over (`training.parallel_shards`).
pub const MAX_SHARDS: usize = 256;
/// Most frames per sample (`data.sequence.length`).
pub const MAX_SEQUENCE: usize = 16;
/// Largest gap between a sample's frames (`data.sequence.stride`).
pub const MAX_SEQUENCE_STRIDE: usize = 1000;
/// Most static distractors per synthetic clip.
pub const MAX_DISTRACTORS: usize = 64;
/// Largest layer width / count of the architecture fields.
pub const MAX_WIDTH: usize = 1 << 16;

#[derive(Default)]
struct Checker {
    issues: Vec<ConfigIssue>,
}

impl Checker {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue::new(path, message));
    }

    fn int_at_least(&mut self, path: &str, v: usize, min: usize) {
        if v < min {
            self.push(path, format!("expected an integer ≥ {min}, got {v}"));
        }
    }

    fn opt_int_at_least(&mut self, path: &str, v: Option<usize>, min: usize) {
        if let Some(v) = v
            && v < min
        {
            self.push(
                path,
                format!("expected an integer ≥ {min} or null, got {v}"),
            );
        }
    }

    fn positive(&mut self, path: &str, v: f64) {
        if !(v > 0.0 && v.is_finite()) {
            self.push(path, format!("expected a number > 0, got {v}"));
        }
    }

    fn non_negative(&mut self, path: &str, v: f64) {
        if !(v >= 0.0 && v.is_finite()) {
            self.push(path, format!("expected a number ≥ 0, got {v}"));
        }
    }

    fn unit_closed(&mut self, path: &str, v: f64) {
        if !(0.0..=1.0).contains(&v) {
            self.push(path, format!("expected a number in [0, 1], got {v}"));
        }
    }

    /// An integer that drives an allocation or a loop: above `max` it is refused rather than
    /// left to overflow or exhaust memory later.
    fn int_at_most(&mut self, path: &str, v: usize, max: usize, what: &str) {
        if v > max {
            self.push(path, format!("expected at most {max} ({what}), got {v}"));
        }
    }

    fn size_pair(&mut self, path: &str, v: [usize; 2]) {
        if v.iter().any(|&s| s > MAX_IMAGE_SIDE) {
            self.push(
                path,
                format!("expected [W, H] with both ≤ {MAX_IMAGE_SIDE} pixels, got {v:?}"),
            );
        }
    }

    fn unit_half_open(&mut self, path: &str, v: f64) {
        if !(0.0..1.0).contains(&v) {
            self.push(path, format!("expected a number in [0, 1), got {v}"));
        }
    }

    fn names(&mut self, path: &str, names: &[String], what: &str) {
        if names.is_empty() {
            self.push(
                path,
                format!("expected at least one {what}, got an empty list"),
            );
        }
        for (i, n) in names.iter().enumerate() {
            if n.trim().is_empty() {
                self.push(
                    format!("{path}[{i}]"),
                    format!("expected a non-empty {what}"),
                );
            }
        }
    }
}

/// Every range / consistency problem of `cfg` (types are already right).
pub(crate) fn issues(cfg: &RunConfig) -> Vec<ConfigIssue> {
    let mut c = Checker::default();
    model(cfg, &mut c);
    data(cfg, &mut c);
    training(cfg, &mut c);
    c.issues
}

fn model(cfg: &RunConfig, c: &mut Checker) {
    let m = &cfg.model;
    if m.model_name.trim().is_empty() {
        c.push(
            "model.model_name",
            "expected a model name, got an empty string",
        );
    }
    if let Some(name) = &m.pretrained_model_name
        && name.trim().is_empty()
    {
        c.push(
            "model.pretrained_model_name",
            "expected a Hugging Face model id or null, got an empty string",
        );
    }

    // Backbone.
    let b = &m.backbone;
    c.int_at_least("model.backbone.patch_size", b.patch_size, 1);
    c.int_at_least("model.backbone.hidden_size", b.hidden_size, 1);
    c.int_at_least("model.backbone.num_hidden_layers", b.num_hidden_layers, 1);
    c.int_at_least(
        "model.backbone.num_attention_heads",
        b.num_attention_heads,
        1,
    );
    c.int_at_least("model.backbone.intermediate_size", b.intermediate_size, 1);
    for (path, v) in [
        ("model.backbone.patch_size", b.patch_size),
        ("model.backbone.hidden_size", b.hidden_size),
        ("model.backbone.num_hidden_layers", b.num_hidden_layers),
        ("model.backbone.num_attention_heads", b.num_attention_heads),
        ("model.backbone.intermediate_size", b.intermediate_size),
        ("model.backbone.num_register_tokens", b.num_register_tokens),
    ] {
        c.int_at_most(path, v, MAX_WIDTH, "architecture size");
    }
    if b.num_attention_heads > 0 && !b.hidden_size.is_multiple_of(b.num_attention_heads) {
        c.push(
            "model.backbone.num_attention_heads",
            format!(
                "expected a divisor of hidden_size ({}), got {}",
                b.hidden_size, b.num_attention_heads
            ),
        );
    } else if b.family == crate::BackboneFamily::Dinov3
        && b.num_attention_heads > 0
        && !b.head_dim().is_multiple_of(4)
    {
        c.push(
            "model.backbone.num_attention_heads",
            format!(
                "DINOv3's 2-D RoPE needs a head width (hidden_size / num_attention_heads) divisible \
                 by 4, got {}",
                b.head_dim()
            ),
        );
    }
    if b.family == crate::BackboneFamily::Dinov2
        && b.hidden_size > 0
        && !b.intermediate_size.is_multiple_of(b.hidden_size)
    {
        c.push(
            "model.backbone.intermediate_size",
            format!(
                "DINOv2 sizes its MLP by a whole mlp_ratio: expected a multiple of hidden_size \
                 ({}), got {}",
                b.hidden_size, b.intermediate_size
            ),
        );
    }
    c.positive("model.backbone.rope_theta", b.rope_theta);
    c.positive("model.backbone.layer_norm_eps", b.layer_norm_eps);
    if !b.layerscale_value.is_finite() {
        c.push(
            "model.backbone.layerscale_value",
            format!("expected a finite number, got {}", b.layerscale_value),
        );
    }
    if let Some(w) = &b.weights
        && w.as_os_str().is_empty()
    {
        c.push(
            "model.backbone.weights",
            "expected a snapshot directory or null, got an empty path",
        );
    }

    // Decoder.
    let d = &m.decoder;
    if d.channels.len() < 2 {
        c.push(
            "model.decoder.channels",
            format!("expected at least 2 entries, got {}", d.channels.len()),
        );
    }
    for (i, &ch) in d.channels.iter().enumerate() {
        if ch == 0 {
            c.push(
                format!("model.decoder.channels[{i}]"),
                "expected an integer ≥ 1, got 0",
            );
        }
    }
    let max_up = d.channels.len().saturating_sub(1);
    if d.channels.len() >= 2 && d.upsample.len() > max_up {
        c.push(
            "model.decoder.upsample",
            format!(
                "expected at most {max_up} entries (one per decoder stage, channels.len() - 1), got {}",
                d.upsample.len()
            ),
        );
    }
    for (i, &f) in d.upsample.iter().enumerate() {
        if f == 0 {
            c.push(
                format!("model.decoder.upsample[{i}]"),
                "expected a factor ≥ 1, got 0",
            );
        }
    }
    if d.use_se {
        c.int_at_least("model.decoder.se_reduction", d.se_reduction, 1);
    }
    c.unit_half_open("model.decoder.dropout", d.dropout);
    for (i, &ch) in d.channels.iter().enumerate() {
        c.int_at_most(
            &format!("model.decoder.channels[{i}]"),
            ch,
            MAX_WIDTH,
            "feature width",
        );
    }
    let total_up = d
        .upsample
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f));
    if total_up.is_none_or(|t| t > MAX_TOTAL_UPSAMPLE) {
        c.push(
            "model.decoder.upsample",
            format!(
                "expected factors whose product is at most {MAX_TOTAL_UPSAMPLE}, got {:?}",
                d.upsample
            ),
        );
    }

    // Heatmap.
    let h = &m.heatmap;
    c.positive("model.heatmap.sigma", h.sigma);
    let resize = cfg.data.preprocess.resize;
    if h.size.contains(&0) {
        c.push(
            "model.heatmap.size",
            format!("expected [W, H] with both ≥ 1, got {:?}", h.size),
        );
    } else if h.size[0] > resize[0] || h.size[1] > resize[1] {
        c.push(
            "model.heatmap.size",
            format!(
                "{:?} cannot be produced: it is larger than the input size data.preprocess.resize {:?}",
                h.size, resize
            ),
        );
    }

    // LoRA.
    let l = &m.lora;
    c.int_at_least("model.lora.r", l.r, 1);
    c.positive("model.lora.lora_alpha", l.lora_alpha);
    c.unit_half_open("model.lora.lora_dropout", l.lora_dropout);
    if let Some(dir) = &l.adapter_path {
        if !l.enabled {
            c.push(
                "model.lora.adapter_path",
                "starts LoRA from an adapter: needs model.lora.enabled: true",
            );
        } else if dir.as_os_str().is_empty() {
            c.push("model.lora.adapter_path", "expected a PEFT adapter folder");
        }
    }
    match &l.target_modules {
        TargetModules::List(names) => c.names(
            "model.lora.target_modules",
            names,
            "module name (or null for the default targets)",
        ),
        TargetModules::Regex(re) => {
            if re.is_empty() {
                c.push(
                    "model.lora.target_modules",
                    "expected a non-empty regex, a list, or null",
                );
            } else if let Err(e) = regex::Regex::new(&format!("^(?:{re})$")) {
                let text = e.to_string();
                let last = text.lines().last().unwrap_or_default().trim();
                let first = last.strip_prefix("error: ").unwrap_or(last).to_owned();
                c.push(
                    "model.lora.target_modules",
                    format!("invalid regex `{re}`: {first}"),
                );
            }
        }
        TargetModules::Auto => {}
    }

    // Quantization.
    let q = &m.quantization;
    if !(32..=4096).contains(&q.blocksize) || !q.blocksize.is_power_of_two() {
        c.push(
            "model.quantization.blocksize",
            format!("expected a power of two in 32..=4096, got {}", q.blocksize),
        );
    }
}

fn data(cfg: &RunConfig, c: &mut Checker) {
    let d = &cfg.data;
    if d.root.as_os_str().is_empty() {
        c.push("data.root", "expected a directory, got an empty path");
    }
    c.names("data.split.train_games", &d.split.train_games, "game");
    c.names("data.split.val_games", &d.split.val_games, "game");
    let r = d.preprocess.resize;
    let patch = cfg.model.backbone.patch_size;
    if r.contains(&0) {
        c.push(
            "data.preprocess.resize",
            format!("expected [W, H] with both ≥ 1, got {r:?}"),
        );
    } else if patch > 0
        && !cfg.model.loads_snapshot()
        && (!r[0].is_multiple_of(patch) || !r[1].is_multiple_of(patch))
    {
        // With a snapshot the snapshot's own patch size decides; the model build checks it.
        c.push(
            "data.preprocess.resize",
            format!(
                "expected [W, H] both divisible by model.backbone.patch_size ({patch}), got {r:?}; \
                 the nearest valid sizes are {:?} and {:?}",
                r.map(|v| (v / patch).max(1) * patch),
                r.map(|v| v.div_ceil(patch) * patch)
            ),
        );
    }
    c.size_pair("data.preprocess.resize", r);
    c.unit_closed("data.preprocess.flip_prob", d.preprocess.flip_prob);
    c.int_at_least("data.sequence.length", d.sequence.length, 1);
    c.int_at_least("data.sequence.stride", d.sequence.stride, 1);
    if d.sequence.length > MAX_SEQUENCE {
        c.push(
            "data.sequence.length",
            format!(
                "expected at most {MAX_SEQUENCE} frames, got {}",
                d.sequence.length
            ),
        );
    }
    if d.sequence.stride > MAX_SEQUENCE_STRIDE {
        c.push(
            "data.sequence.stride",
            format!(
                "expected at most {MAX_SEQUENCE_STRIDE} frames, got {}",
                d.sequence.stride
            ),
        );
    }
    if let Some(s) = &d.synthetic {
        c.int_at_least("data.synthetic.games", s.games, 1);
        c.int_at_least("data.synthetic.clips", s.clips, 1);
        c.int_at_least("data.synthetic.frames", s.frames, 1);
        if s.distractors > MAX_DISTRACTORS {
            c.push(
                "data.synthetic.distractors",
                format!("expected at most {MAX_DISTRACTORS}, got {}", s.distractors),
            );
        }
        if !(s.ball_scale.is_finite() && (0.25..=8.0).contains(&s.ball_scale)) {
            c.push(
                "data.synthetic.ball_scale",
                format!("expected a number in [0.25, 8], got {}", s.ball_scale),
            );
        }
        c.size_pair("data.synthetic.size", s.size);
        for (path, v) in [
            ("data.synthetic.games", s.games),
            ("data.synthetic.clips", s.clips),
            ("data.synthetic.frames", s.frames),
        ] {
            c.int_at_most(path, v, 100_000, "generated folders / frames");
        }
        if s.size.contains(&0) {
            c.push(
                "data.synthetic.size",
                format!("expected [W, H] with both ≥ 1, got {:?}", s.size),
            );
        }
    }
    c.opt_int_at_least("data.max_frames_per_split", d.max_frames_per_split, 1);
}

fn training(cfg: &RunConfig, c: &mut Checker) {
    let t = &cfg.training;
    c.int_at_least("training.batch_size", t.batch_size, 1);
    c.int_at_least("training.epochs", t.epochs, 1);
    c.int_at_most(
        "training.batch_size",
        t.batch_size,
        MAX_BATCH,
        "samples per step",
    );
    c.int_at_most(
        "training.micro_batch_size",
        t.micro_batch_size,
        MAX_BATCH,
        "samples per micro-batch",
    );
    c.int_at_most("training.epochs", t.epochs, 1_000_000, "epochs");
    if let Some(steps) = t.steps_per_epoch
        && t.epochs.checked_mul(steps).is_none_or(|n| n > MAX_STEPS)
    {
        c.push(
            "training.steps_per_epoch",
            format!(
                "epochs × steps_per_epoch must be at most {MAX_STEPS} optimizer steps, got {} × {steps}",
                t.epochs
            ),
        );
    }
    for (path, v) in [
        ("training.grad_clip", t.grad_clip),
        ("training.grad_clip_norm", t.grad_clip_norm),
    ] {
        if let Some(v) = v {
            c.non_negative(path, v);
        }
    }
    c.int_at_least("training.min_micro_batch_size", t.min_micro_batch_size, 1);
    c.int_at_least("training.parallel_shards", t.parallel_shards, 1);
    c.int_at_most(
        "training.parallel_shards",
        t.parallel_shards,
        MAX_SHARDS,
        "shards per batch",
    );
    c.int_at_least("training.mb_backoff_factor", t.mb_backoff_factor, 2);
    c.int_at_least(
        "training.data_loader.prefetch_factor",
        t.data_loader.prefetch_factor,
        1,
    );

    let o = &t.optimizer;
    c.positive("training.optimizer.lr", o.lr);
    c.non_negative("training.optimizer.weight_decay", o.weight_decay);
    c.unit_half_open("training.optimizer.betas[0]", o.betas[0]);
    c.unit_half_open("training.optimizer.betas[1]", o.betas[1]);
    c.positive("training.optimizer.eps", o.eps);
    c.unit_half_open("training.optimizer.momentum", o.momentum);

    let s = &t.scheduler;
    if !(s.warmup_start_factor > 0.0 && s.warmup_start_factor <= 1.0) {
        c.push(
            "training.scheduler.warmup_start_factor",
            format!("expected a number in (0, 1], got {}", s.warmup_start_factor),
        );
    }
    c.non_negative("training.scheduler.min_lr", s.min_lr);

    let l = &t.loss;
    c.non_negative("training.loss.focal_alpha", l.focal_alpha);
    c.non_negative("training.loss.focal_beta", l.focal_beta);
    if let Some(w) = l.pos_weight {
        c.positive("training.loss.pos_weight", w);
    }

    if let Err(e) = t.device.parse::<crate::DeviceSpec>() {
        c.push("training.device", e);
    }
    c.opt_int_at_least("training.steps_per_epoch", t.steps_per_epoch, 1);
    c.opt_int_at_least("training.val_steps", t.val_steps, 1);
    if !BEST_METRICS.contains(&t.best_metric.as_str()) {
        c.push(
            "training.best_metric",
            format!(
                "expected {}, got `{}`",
                crate::enums::one_of(BEST_METRICS),
                t.best_metric
            ),
        );
    }
    c.unit_closed("training.eval.threshold", t.eval.threshold);
    c.positive("training.eval.tolerance_px", t.eval.tolerance_px);
    c.positive(
        "training.eval.protocol_tolerance_px",
        t.eval.protocol_tolerance_px,
    );
    c.positive("training.eval.pck_radius", t.eval.pck_radius);
    c.int_at_least("training.log_every", t.log_every, 1);
}

/// Non-fatal notes: settings that are legal but probably not what was meant.
pub(crate) fn warnings(cfg: &RunConfig) -> Vec<String> {
    let mut w = cfg.model.quantization.warnings();
    let m = &cfg.model;
    let t = &cfg.training;

    if m.quantization.enabled && !m.lora.enabled && !m.backbone.freeze {
        w.push(
            "model.quantization is enabled without LoRA: quantized backbone weights cannot train, \
             so backbone.freeze = false has no effect on them"
                .into(),
        );
    }
    if m.lora.enabled && !m.backbone.freeze {
        w.push(
            "model.backbone.freeze is false but model.lora is enabled: the base backbone stays \
             frozen and only the adapters (and modules_to_save / LoRA biases) train, as in PEFT"
                .into(),
        );
    }
    if m.backbone.pretrained && m.backbone.weights.is_none() && m.pretrained_model_name.is_none() {
        w.push(
            "model.backbone.pretrained is true but neither backbone.weights nor \
             pretrained_model_name is set: the backbone is randomly initialized"
                .into(),
        );
    }

    let seq = &cfg.data.sequence;
    if !seq.enabled && (seq.length != 1 || seq.stride != 1) {
        w.push(format!(
            "data.sequence.length ({}) / stride ({}) have no effect while data.sequence.enabled is \
             false: samples are single frames",
            seq.length, seq.stride
        ));
    }

    // Decoder output vs heatmap size.
    let patch = m.backbone.patch_size;
    let r = cfg.data.preprocess.resize;
    if patch > 0
        && r[0].is_multiple_of(patch)
        && r[1].is_multiple_of(patch)
        && !m.decoder.upsample.contains(&0)
    {
        let up = m.decoder.total_upsample();
        let out = [
            (r[0] / patch).saturating_mul(up),
            (r[1] / patch).saturating_mul(up),
        ];
        if out != m.heatmap.size {
            w.push(format!(
                "model.heatmap.size {:?} differs from the decoder output {out:?} (patch grid {:?} × \
                 upsample {up}); the decoder output has to be resampled to the heatmap size",
                m.heatmap.size,
                [r[0] / patch, r[1] / patch]
            ));
        }
    }

    // Split.
    let train: BTreeSet<&str> = cfg
        .data
        .split
        .train_games
        .iter()
        .map(String::as_str)
        .collect();
    let both: Vec<&str> = cfg
        .data
        .split
        .val_games
        .iter()
        .map(String::as_str)
        .filter(|g| train.contains(g))
        .collect();
    if !both.is_empty() {
        w.push(format!(
            "data.split: games in both train_games and val_games: {}",
            both.join(", ")
        ));
    }

    // Training.
    if let (Some(gc), Some(gcn)) = (t.grad_clip, t.grad_clip_norm)
        && gc != gcn
    {
        w.push(format!(
            "training.grad_clip ({gc}) is ignored because training.grad_clip_norm ({gcn}) is set"
        ));
    }
    // Whether `amp` can run is the backend's question: the trainer says it (tracknet-train amp).
    let inert: Vec<&str> = [
        ("model.backbone.device_map", m.backbone.device_map.is_some()),
        (
            "training.data_loader.pin_memory",
            t.data_loader.pin_memory.is_some(),
        ),
        (
            "training.data_loader.persistent_workers",
            t.data_loader.persistent_workers.is_some(),
        ),
        ("training.log_dir", t.log_dir.is_some()),
        ("training.ckpt_dir", t.ckpt_dir.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if !inert.is_empty() {
        w.push(format!(
            "no effect here: {} (one device per run, loader threads start per epoch, and logs \
             and checkpoints go into the run folder)",
            inert.join(", ")
        ));
    }
    if t.amp && t.precision == crate::Precision::Fp32 {
        w.push("training.amp has no effect with training.precision = fp32".into());
    }
    if !t.amp && t.precision != crate::Precision::Fp32 {
        w.push(format!(
            "training.precision = {} has no effect without training.amp; training runs in fp32",
            t.precision
        ));
    }
    if t.micro_batch_size > t.batch_size {
        w.push(format!(
            "training.micro_batch_size ({}) exceeds batch_size ({}): batches are not split",
            t.micro_batch_size, t.batch_size
        ));
    }
    if t.scheduler.min_lr > t.optimizer.lr {
        w.push(format!(
            "training.scheduler.min_lr ({}) is above training.optimizer.lr ({})",
            t.scheduler.min_lr, t.optimizer.lr
        ));
    }
    if t.backbone_freeze_epochs >= t.epochs && t.backbone_freeze_epochs > 0 {
        w.push(format!(
            "training.backbone_freeze_epochs ({}) ≥ epochs ({}): the backbone stays frozen for the \
             whole run",
            t.backbone_freeze_epochs, t.epochs
        ));
    }
    w
}
