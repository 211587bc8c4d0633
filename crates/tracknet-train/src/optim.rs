//! AdamW and SGD over trainable parameters only, with optimizer state keyed by module path.
//!
//! Burn's optimizers key their state by `ParamId`, which is random per model build; keying by
//! the Hugging Face module path instead lets a resumed run (a model rebuilt from the config)
//! pick its state up exactly.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use tracknet_lora::params::PathStack;
use tracknet_vit::fused::{AdamWStep, FusedBackend};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimKind {
    /// Decoupled weight decay Adam (Loshchilov & Hutter), as `torch.optim.AdamW`.
    AdamW {
        /// β₁, β₂.
        betas: (f64, f64),
        /// ε.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
    /// SGD with momentum and L2 weight decay, as `torch.optim.SGD`.
    Sgd {
        /// Momentum.
        momentum: f64,
        /// L2 weight decay.
        weight_decay: f64,
    },
}

impl OptimKind {
    /// The update rule `training.optimizer` names (the learning rate is the schedule's).
    pub fn from_config(o: &tracknet_config::OptimizerConfig) -> Self {
        match o.name {
            tracknet_config::OptimizerName::AdamW => OptimKind::AdamW {
                betas: (o.betas[0], o.betas[1]),
                eps: o.eps,
                weight_decay: o.weight_decay,
            },
            tracknet_config::OptimizerName::Sgd => OptimKind::Sgd {
                momentum: o.momentum,
                weight_decay: o.weight_decay,
            },
        }
    }
}

/// Device-side state of one parameter, flattened to `[numel]`.
#[derive(Debug, Clone)]
pub struct ParamState<B: Backend> {
    /// First moment (AdamW) or momentum buffer (SGD).
    pub m: Option<Tensor<B, 1>>,
    /// Second moment (AdamW only).
    pub v: Option<Tensor<B, 1>>,
    /// Updates this parameter has taken: AdamW's bias correction counts a parameter's own
    /// steps, so one that starts late (after a freeze) does not take an oversized first step.
    pub steps: u64,
}

impl<B: Backend> Default for ParamState<B> {
    fn default() -> Self {
        Self {
            m: None,
            v: None,
            steps: 0,
        }
    }
}

/// The optimizer: rule, step count and per-path state (on the inner, non-autodiff backend).
#[derive(Debug, Clone)]
pub struct Optimizer<B: Backend> {
    /// Update rule.
    pub kind: OptimKind,
    /// Steps taken.
    pub step: u64,
    /// State by parameter path.
    pub state: BTreeMap<String, ParamState<B>>,
}

impl<IB: Backend> Optimizer<IB> {
    /// A fresh optimizer.
    pub fn new(kind: OptimKind) -> Self {
        Self {
            kind,
            step: 0,
            state: BTreeMap::new(),
        }
    }

    /// One update of every parameter that has a gradient. Parameters without gradients
    /// (frozen, or held back by the freeze schedule) are never touched.
    pub fn step<B: AutodiffBackend<InnerBackend = IB>, M: AutodiffModule<B>>(
        &mut self,
        module: M,
        grads: GradientsParams,
        lr: f64,
    ) -> M
    where
        IB: FusedBackend,
    {
        self.step += 1;
        let mut mapper = StepMapper::<B> {
            opt: self,
            grads,
            lr,
            stack: PathStack::default(),
            _b: Default::default(),
        };
        module.map(&mut mapper)
    }
}

struct StepMapper<'a, B: AutodiffBackend> {
    opt: &'a mut Optimizer<B::InnerBackend>,
    grads: GradientsParams,
    lr: f64,
    stack: PathStack,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B>
where
    B::InnerBackend: FusedBackend,
{
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return param;
        };
        let path = self.stack.path();
        let kind = self.opt.kind;
        let lr = self.lr;
        let state = self.opt.state.entry(path).or_default();
        state.steps += 1;
        let t = i32::try_from(state.steps).unwrap_or(i32::MAX);
        param.map(|tensor| {
            let device = tensor.device();
            let shape = tensor.shape();
            let n = shape.num_elements();
            let w = tensor.clone().inner();
            let to_1d = |x: Tensor<B::InnerBackend, D>| x.reshape([n]);
            let zeros = || Tensor::<B::InnerBackend, 1>::zeros([n], &device);
            let g = to_1d(grad);
            let p = to_1d(w);
            let new_p = match kind {
                OptimKind::AdamW {
                    betas: (b1, b2),
                    eps,
                    weight_decay,
                } => {
                    // One pass on NdArray (`FusedBackend::fused_adamw`).
                    let h = AdamWStep::new((b1, b2), eps, weight_decay, lr, t);
                    let [m, v] = [state.m.take(), state.v.take()]
                        .map(|s| s.unwrap_or_else(zeros).into_primitive().tensor());
                    let [p, m, v] = B::InnerBackend::fused_adamw(
                        p.into_primitive().tensor(),
                        g.into_primitive().tensor(),
                        m,
                        v,
                        h,
                    )
                    .map(|t| {
                        Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(t))
                    });
                    state.m = Some(m);
                    state.v = Some(v);
                    p
                }
                OptimKind::Sgd {
                    momentum,
                    weight_decay,
                } => {
                    let g = if weight_decay > 0.0 {
                        g + p.clone().mul_scalar(weight_decay)
                    } else {
                        g
                    };
                    let buf = if momentum > 0.0 {
                        let b = match state.m.take() {
                            Some(prev) => prev.mul_scalar(momentum) + g,
                            None => g,
                        };
                        state.m = Some(b.clone());
                        b
                    } else {
                        g
                    };
                    p - buf.mul_scalar(lr)
                }
            };
            let out = Tensor::<B, D>::from_inner(new_p.reshape(shape));
            if tensor.is_require_grad() {
                out.require_grad()
            } else {
                out
            }
        })
    }
}

/// Whether every float parameter of `module` is finite (an overflowing sum counts as not).
pub fn params_finite<B: Backend, M: Module<B>>(module: &M) -> bool {
    struct Finite {
        ok: bool,
    }
    impl<B: Backend> ModuleVisitor<B> for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.ok {
                let s: f64 = param.val().abs().sum().into_scalar().elem();
                self.ok = s.is_finite();
            }
        }
    }
    let mut v = Finite { ok: true };
    module.visit(&mut v);
    v.ok
}

/// Global L2 norm of all gradients of `module`'s parameters. Each parameter's sum of squares
/// stays on the device; they are read back together, once (a read per parameter would be a
/// device synchronisation each, ~170 per step on a GPU), and added on the host in f64.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    struct Norm<'a, I: Backend> {
        grads: &'a GradientsParams,
        sums: Vec<Tensor<I, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Norm<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                self.sums.push(g.powi_scalar(2).sum());
            }
        }
    }
    let mut v = Norm::<B::InnerBackend> {
        grads,
        sums: Vec::new(),
    };
    module.visit(&mut v);
    if v.sums.is_empty() {
        return 0.0;
    }
    let per_param: Vec<f64> = Tensor::cat(v.sums, 0)
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("TensorData::convert yields f64");
    per_param.iter().sum::<f64>().sqrt()
}

/// Global-norm clipping: scale the gradients to `max_norm` when their norm `norm` exceeds it.
pub fn clip_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    norm: f64,
    max_norm: Option<f64>,
) -> GradientsParams {
    match max_norm {
        Some(max) if norm > max => scale_grads::<B, M>(module, grads, max / norm),
        _ => grads,
    }
}

/// Scale every gradient by `factor` (global-norm clipping: `factor = max_norm / norm`).
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    factor: f64,
) -> GradientsParams {
    struct Scale {
        grads: GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads
                    .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut v = Scale { grads, factor };
    module.visit(&mut v);
    v.grads
}

/// Add `other` into `acc` (gradient accumulation over micro-batches).
pub fn accumulate<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    acc: GradientsParams,
    mut other: GradientsParams,
) -> GradientsParams {
    struct Acc<'a> {
        acc: GradientsParams,
        other: &'a mut GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Acc<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.other.remove::<B::InnerBackend, D>(param.id) {
                let sum = match self.acc.remove::<B::InnerBackend, D>(param.id) {
                    Some(a) => a + g,
                    None => g,
                };
                self.acc.register::<B::InnerBackend, D>(param.id, sum);
            }
        }
    }
    let mut v = Acc {
        acc,
        other: &mut other,
    };
    module.visit(&mut v);
    v.acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::nn::{Linear, LinearConfig};

    type AD = Autodiff<NdArray>;
    type IB = NdArray;

    /// Gradients of ones for the weight and, if asked, the bias.
    fn grads_for(lin: &Linear<AD>, bias: bool) -> GradientsParams {
        let device = Default::default();
        let mut g = GradientsParams::new();
        g.register::<IB, 2>(lin.weight.id, Tensor::ones(lin.weight.dims(), &device));
        if bias && let Some(b) = &lin.bias {
            g.register::<IB, 1>(b.id, Tensor::ones(b.dims(), &device));
        }
        g
    }

    fn values<const D: usize>(p: &Param<Tensor<AD, D>>) -> Vec<f32> {
        p.val().into_data().convert::<f32>().into_vec().unwrap()
    }

    #[test]
    fn adamw_bias_correction_counts_each_parameters_own_steps() {
        let device = Default::default();
        let kind = OptimKind::AdamW {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut lin = LinearConfig::new(2, 3).init::<AD>(&device);
        let bias0 = values(lin.bias.as_ref().unwrap());
        let mut opt = Optimizer::<IB>::new(kind);
        // Two steps with the bias held back, then one with both.
        for _ in 0..2 {
            let g = grads_for(&lin, false);
            lin = opt.step(lin, g, 0.1);
        }
        assert_eq!(values(lin.bias.as_ref().unwrap()), bias0);
        let g = grads_for(&lin, true);
        lin = opt.step(lin, g, 0.1);
        // Adam's first update of a parameter is lr · sign(g) after bias correction, whatever
        // the optimizer's global step (with the global count, 3, it would be 0.064 here).
        let bias1 = values(lin.bias.as_ref().unwrap());
        for (a, b) in bias0.iter().zip(&bias1) {
            assert!((a - b - 0.1).abs() < 1e-5, "{a} → {b}");
        }
        let steps: BTreeMap<&str, u64> = opt
            .state
            .iter()
            .map(|(k, s)| (k.as_str(), s.steps))
            .collect();
        assert_eq!(steps.len(), 2);
        assert!(
            steps.iter().any(|(k, &n)| k.ends_with("bias") && n == 1),
            "{steps:?}"
        );
        assert!(
            steps.iter().any(|(k, &n)| k.ends_with("weight") && n == 3),
            "{steps:?}"
        );
    }

    /// `training.optimizer` from YAML, two steps with gradients 0.5 then 2.0 on every element of
    /// a 2×3 Linear (initialised to known values), against torch's update rules in f64.
    fn two_steps(yaml: &str) -> (Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let cfg =
            tracknet_config::RunConfig::from_yaml_str(&format!("training: {{optimizer: {yaml}}}"))
                .unwrap();
        let kind = OptimKind::from_config(&cfg.training.optimizer);
        let mut lin = LinearConfig::new(2, 3).init::<AD>(&device);
        lin.weight = Param::from_tensor(
            Tensor::<AD, 2>::from_floats([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], &device)
                .require_grad(),
        );
        let w0 = values(&lin.weight);
        let mut opt = Optimizer::<IB>::new(kind);
        for g in [0.5f32, 2.0] {
            let mut grads = GradientsParams::new();
            grads.register::<IB, 2>(lin.weight.id, Tensor::full([2, 3], g, &device));
            lin = opt.step(lin, grads, 0.1);
        }
        (w0, values(&lin.weight))
    }

    #[test]
    fn optimizer_keys_give_torchs_update_rules() {
        let lr = 0.1f64;
        let grads = [0.5f64, 2.0];
        // AdamW with non-default betas, eps and weight decay (torch.optim.AdamW).
        let (b1, b2, eps, wd) = (0.5f64, 0.6f64, 0.3f64, 0.2f64);
        let (w0, got) = two_steps("{name: adamw, betas: [0.5, 0.6], eps: 0.3, weight_decay: 0.2}");
        for (p0, got) in w0.iter().zip(&got) {
            let (mut p, mut m, mut v) = (f64::from(*p0), 0.0, 0.0);
            for (t, g) in grads.iter().enumerate() {
                let t = (t + 1) as i32;
                p *= 1.0 - lr * wd;
                m = b1 * m + (1.0 - b1) * g;
                v = b2 * v + (1.0 - b2) * g * g;
                let denom = (v.sqrt() / (1.0 - b2.powi(t)).sqrt()) + eps;
                p -= lr / (1.0 - b1.powi(t)) * m / denom;
            }
            assert!(
                (p - f64::from(*got)).abs() < 1e-5,
                "adamw {p0}: {p} vs {got}"
            );
        }
        // The defaults give another result: each of the keys above matters.
        let (_, default) = two_steps("{name: adamw}");
        for other in [
            "{name: adamw, betas: [0.5, 0.6], eps: 0.3}",
            "{name: adamw, betas: [0.5, 0.6], weight_decay: 0.2}",
            "{name: adamw, eps: 0.3, weight_decay: 0.2}",
        ] {
            let (_, o) = two_steps(other);
            assert_ne!(o, got, "{other}");
        }
        assert_ne!(default, got);
        // SGD with momentum and L2 weight decay (torch.optim.SGD, dampening 0).
        let (mom, wd) = (0.8f64, 0.2f64);
        let (w0, got) = two_steps("{name: sgd, momentum: 0.8, weight_decay: 0.2}");
        for (p0, got) in w0.iter().zip(&got) {
            let (mut p, mut buf) = (f64::from(*p0), None::<f64>);
            for g in grads {
                let d = g + wd * p;
                let b = buf.map_or(d, |b| mom * b + d);
                buf = Some(b);
                p -= lr * b;
            }
            assert!((p - f64::from(*got)).abs() < 1e-5, "sgd {p0}: {p} vs {got}");
        }
        let (_, no_momentum) = two_steps("{name: sgd, momentum: 0.0, weight_decay: 0.2}");
        assert_ne!(no_momentum, got);
    }
}
