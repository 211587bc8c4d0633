//! What trains: path-aware parameter visiting, freezing, and PEFT's trainable-parameter report.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// Tracks the dotted module path (Hugging Face names) while Burn walks a module tree. Enum
/// variants (e.g. `BaseLinear::Dense`) are not part of the path, so paths stay the HF ones.
#[derive(Debug, Default, Clone)]
pub struct PathStack {
    segments: Vec<Option<String>>,
}

impl PathStack {
    /// Enter a field, a `Vec` index or an enum variant.
    pub fn enter(&mut self, name: &str, container_type: &str) {
        let keep = !container_type.starts_with("Enum:");
        self.segments.push(keep.then(|| name.to_string()));
    }
    /// Leave it.
    pub fn exit(&mut self) {
        self.segments.pop();
    }
    /// The current path, e.g. `model.layer.0.attention.q_proj.base.weight`.
    pub fn path(&self) -> String {
        self.segments
            .iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// Calls `f(path, numel, trainable)` for every float parameter.
pub struct PathVisitor<F> {
    stack: PathStack,
    f: F,
}

impl<F> PathVisitor<F> {
    /// A visitor around `f`.
    pub fn new(f: F) -> Self {
        Self {
            stack: PathStack::default(),
            f,
        }
    }
}

impl<B: Backend, F: FnMut(&str, usize, bool)> ModuleVisitor<B> for PathVisitor<F> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        (self.f)(
            &self.stack.path(),
            t.shape().num_elements(),
            t.is_require_grad(),
        );
    }
}

struct TrainableMapper<F> {
    stack: PathStack,
    f: F,
}

impl<B: Backend, F: FnMut(&str) -> Option<bool>> ModuleMapper<B> for TrainableMapper<F> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match (self.f)(&self.stack.path()) {
            Some(trainable) => param.set_require_grad(trainable),
            None => param,
        }
    }
}

/// Set `require_grad` on every float parameter for which `f(path)` says `Some(flag)`; leave
/// the others as they are.
pub fn set_trainable<B: Backend, M: Module<B>>(
    module: M,
    f: impl FnMut(&str) -> Option<bool>,
) -> M {
    module.map(&mut TrainableMapper {
        stack: PathStack::default(),
        f,
    })
}

/// Named f32 tensors on the host: module path → (shape, values), row-major.
pub type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Path → (shape, values) of every float parameter that `keep(path, trainable)` selects.
pub fn collect_params<B: Backend, M: Module<B>>(
    module: &M,
    keep: impl Fn(&str, bool) -> bool,
) -> NamedTensors {
    struct V<F, B> {
        stack: PathStack,
        keep: F,
        out: NamedTensors,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: Backend, F: Fn(&str, bool) -> bool> ModuleVisitor<B> for V<F, B> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let path = self.stack.path();
            let t = param.val();
            if (self.keep)(&path, t.is_require_grad()) {
                let shape = t.dims().to_vec();
                let values = t
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .unwrap_or_default();
                self.out.insert(path, (shape, values));
            }
        }
    }
    let mut v = V {
        stack: PathStack::default(),
        keep,
        out: BTreeMap::new(),
        _b: std::marker::PhantomData::<B>,
    };
    module.visit(&mut v);
    v.out
}

/// What [`load_params`] could not place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamMismatch {
    /// Parameters `required` selects that `tensors` lacks.
    pub missing: Vec<String>,
    /// Tensors for no parameter of the module.
    pub unexpected: Vec<String>,
    /// `(path, the parameter's shape, the tensor's shape)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl ParamMismatch {
    /// True when everything fit.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    /// One line per problem.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .mismatched
            .iter()
            .map(|(p, want, got)| format!("{p}: expected shape {want:?}, found {got:?}"))
            .collect();
        out.extend(
            self.unexpected
                .iter()
                .map(|k| format!("{k}: no such parameter in the model")),
        );
        out.extend(self.missing.iter().map(|k| {
            format!("{k}: missing (the model trains it, so the checkpoint must hold it)")
        }));
        out
    }
}

/// Replace float parameters by path from `tensors` (values row-major, the parameter's own
/// layout). Every tensor must land on a parameter of the same shape and every parameter
/// `required(path)` selects must be present; else nothing is returned but the problems.
/// A replaced parameter keeps its id and its `require_grad`.
pub fn load_params<B: Backend, M: Module<B>>(
    module: M,
    tensors: &NamedTensors,
    required: &dyn Fn(&str) -> bool,
) -> Result<M, ParamMismatch> {
    struct Mp<'a> {
        stack: PathStack,
        tensors: &'a NamedTensors,
        required: &'a dyn Fn(&str) -> bool,
        used: Vec<String>,
        problems: ParamMismatch,
    }
    impl<B: Backend> ModuleMapper<B> for Mp<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let path = self.stack.path();
            let Some((shape, values)) = self.tensors.get(&path) else {
                if (self.required)(&path) {
                    self.problems.missing.push(path);
                }
                return param;
            };
            self.used.push(path.clone());
            let dims = param.val().dims();
            if shape.as_slice() != dims.as_slice() {
                self.problems
                    .mismatched
                    .push((path, dims.to_vec(), shape.clone()));
                return param;
            }
            param.map(|t| {
                let new =
                    Tensor::<B, D>::from_data(TensorData::new(values.clone(), dims), &t.device());
                if t.is_require_grad() {
                    new.require_grad()
                } else {
                    new
                }
            })
        }
    }
    let mut m = Mp {
        stack: PathStack::default(),
        tensors,
        required,
        used: Vec::new(),
        problems: ParamMismatch::default(),
    };
    let module = module.map(&mut m);
    m.problems.unexpected = tensors
        .keys()
        .filter(|k| !m.used.contains(k))
        .cloned()
        .collect();
    if m.problems.is_empty() {
        Ok(module)
    } else {
        Err(m.problems)
    }
}

/// Named f32 tensors as safetensors bytes (little-endian F32), with `meta` as metadata.
///
/// The bytes are a function of the contents alone: the safetensors crate writes the
/// `__metadata__` map in `HashMap` order, which differs between runs, so the JSON header is
/// rewritten with every key sorted (same tensors, same offsets). A checkpoint written twice
/// from the same state is then byte-identical.
pub fn safetensors_bytes(
    tensors: &NamedTensors,
    meta: HashMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let stored: BTreeMap<String, tracknet_quant::StoredTensor> = tensors
        .iter()
        .map(|(k, (s, v))| {
            (
                k.clone(),
                tracknet_quant::StoredTensor::from_f32(s.clone(), v),
            )
        })
        .collect();
    tracknet_quant::bnb::safetensors_bytes(&stored, meta)
}

/// PEFT's `print_trainable_parameters`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParamReport {
    /// Parameters that receive gradients.
    pub trainable: usize,
    /// All parameters, 4-bit weights counted as one parameter per weight (as PEFT does).
    pub all: usize,
}

impl ParamReport {
    /// Trainable share in percent.
    pub fn percent(&self) -> f64 {
        if self.all == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.all as f64
        }
    }
}

impl fmt::Display for ParamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            thousands(self.trainable),
            thousands(self.all),
            self.percent()
        )
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Count parameters of `module` (on an autodiff backend, where `require_grad` is tracked);
/// `frozen_constants` adds weights held as constants (4-bit weights) to the total.
pub fn param_report<B: Backend, M: Module<B>>(module: &M, frozen_constants: usize) -> ParamReport {
    let mut report = ParamReport {
        trainable: 0,
        all: frozen_constants,
    };
    module.visit(&mut PathVisitor::new(
        |_: &str, n: usize, trainable: bool| {
            report.all += n;
            if trainable {
                report.trainable += n;
            }
        },
    ));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_bytes_are_a_function_of_the_contents() {
        // Ten metadata keys: HashMap order differs between maps, the bytes must not.
        let mut tensors = NamedTensors::new();
        tensors.insert("b.weight".into(), (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]));
        tensors.insert("a.bias".into(), (vec![3], vec![0.5, -1.0, 2.0]));
        let meta = || -> HashMap<String, String> {
            (0..10)
                .map(|i| (format!("key{i}"), format!("value{i}")))
                .collect()
        };
        let first = safetensors_bytes(&tensors, meta()).unwrap();
        for _ in 0..5 {
            assert_eq!(safetensors_bytes(&tensors, meta()).unwrap(), first);
        }
        // Still a valid file with the same contents.
        let (n, read_meta) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        assert_eq!((n + 8) % 8, 0);
        assert_eq!(read_meta.metadata().clone().unwrap(), meta());
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        let a = st.tensor("a.bias").unwrap();
        let vals: Vec<f32> = a
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(vals, vec![0.5, -1.0, 2.0]);
        assert_eq!(st.tensor("b.weight").unwrap().shape(), &[2, 2]);
    }

    #[test]
    fn peft_wording() {
        let r = ParamReport {
            trainable: 1_234_567,
            all: 22_000_000,
        };
        assert_eq!(
            r.to_string(),
            "trainable params: 1,234,567 || all params: 22,000,000 || trainable%: 5.6117"
        );
    }
}
