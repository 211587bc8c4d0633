//! The one place a command picks its Burn backend: NdArray on the CPU, CUDA when built with the `cuda` feature, wgpu
//! (Vulkan/Metal/DX12 through CubeCL) with the `wgpu` feature. A
//! command hands over a job generic over the backend ([`AutodiffJob`] to train,
//! [`InferenceJob`] to evaluate or predict); nothing else names a backend type.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;
use tracknet_config::{DeviceSpec, RunConfig};
use tracknet_vit::ModelBackend;

use crate::error::TrainError;

/// Work that needs gradients (a training run, a bench step), run on the backend
/// [`with_autodiff`] picks.
pub trait AutodiffJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` and `device`.
    fn run<B>(self, device: &B::Device) -> Result<Self::Output, TrainError>
    where
        B: AutodiffBackend + ModelBackend,
        B::InnerBackend: ModelBackend;
}

/// Work without gradients (evaluation, prediction), run on the backend [`with_inference`] picks.
pub trait InferenceJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` and `device`.
    fn run<B: ModelBackend>(self, device: &B::Device) -> Result<Self::Output, TrainError>;
}

/// The device a command runs on: `flag` (`--device`) when given, else `training.device`.
pub fn device_spec(flag: Option<&str>, cfg: &RunConfig) -> Result<DeviceSpec, TrainError> {
    let text = flag.unwrap_or(&cfg.training.device);
    text.parse().map_err(|message| TrainError::Device {
        value: text.to_string(),
        message,
    })
}

/// Runs `job` on the autodiff backend for `spec`. (`training.gradient_checkpointing` is not a
/// backend: it is recomputation per segment in the step, `trainer::step_grads`.)
pub fn with_autodiff<J: AutodiffJob>(spec: DeviceSpec, job: J) -> Result<J::Output, TrainError> {
    match spec {
        DeviceSpec::Cpu => job.run::<Autodiff<NdArray>>(&Default::default()),
        DeviceSpec::Cuda(index) => cuda::autodiff(index, job),
        DeviceSpec::Wgpu => wgpu::autodiff(job),
    }
}

/// Runs `job` on the plain (no autodiff) backend for `spec`.
pub fn with_inference<J: InferenceJob>(spec: DeviceSpec, job: J) -> Result<J::Output, TrainError> {
    match spec {
        DeviceSpec::Cpu => job.run::<NdArray>(&Default::default()),
        DeviceSpec::Cuda(index) => cuda::inference(index, job),
        DeviceSpec::Wgpu => wgpu::inference(job),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use burn::backend::cuda::CudaDevice;
    use burn::backend::{Autodiff, Cuda};

    use super::{AutodiffJob, InferenceJob};
    use crate::error::TrainError;

    pub fn autodiff<J: AutodiffJob>(index: usize, job: J) -> Result<J::Output, TrainError> {
        job.run::<Autodiff<Cuda>>(&CudaDevice::new(index))
    }

    pub fn inference<J: InferenceJob>(index: usize, job: J) -> Result<J::Output, TrainError> {
        job.run::<Cuda>(&CudaDevice::new(index))
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::{AutodiffJob, InferenceJob};
    use crate::error::TrainError;

    pub fn autodiff<J: AutodiffJob>(_: usize, _: J) -> Result<J::Output, TrainError> {
        Err(TrainError::NoCuda)
    }

    pub fn inference<J: InferenceJob>(_: usize, _: J) -> Result<J::Output, TrainError> {
        Err(TrainError::NoCuda)
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use burn::backend::wgpu::WgpuDevice;
    use burn::backend::{Autodiff, Wgpu};

    use super::{AutodiffJob, InferenceJob};
    use crate::error::TrainError;

    pub fn autodiff<J: AutodiffJob>(job: J) -> Result<J::Output, TrainError> {
        job.run::<Autodiff<Wgpu>>(&WgpuDevice::default())
    }

    pub fn inference<J: InferenceJob>(job: J) -> Result<J::Output, TrainError> {
        job.run::<Wgpu>(&WgpuDevice::default())
    }
}

#[cfg(not(feature = "wgpu"))]
mod wgpu {
    use super::{AutodiffJob, InferenceJob};
    use crate::error::TrainError;

    pub fn autodiff<J: AutodiffJob>(_: J) -> Result<J::Output, TrainError> {
        Err(TrainError::NoWgpu)
    }

    pub fn inference<J: InferenceJob>(_: J) -> Result<J::Output, TrainError> {
        Err(TrainError::NoWgpu)
    }
}

/// The training job of a run: [`crate::train`] with its config and options.
pub struct Train<'a> {
    /// The run's configuration.
    pub cfg: &'a RunConfig,
    /// Where and how.
    pub opts: &'a crate::TrainOptions,
}

impl AutodiffJob for Train<'_> {
    type Output = crate::TrainSummary;
    fn run<B>(self, device: &B::Device) -> Result<Self::Output, TrainError>
    where
        B: AutodiffBackend + ModelBackend,
        B::InnerBackend: ModelBackend,
    {
        crate::train::<B>(self.cfg, self.opts, device)
    }
}

/// Trains `cfg` on the device `flag` or `training.device` names.
pub fn train_on(
    cfg: &RunConfig,
    opts: &crate::TrainOptions,
    flag: Option<&str>,
) -> Result<crate::TrainSummary, TrainError> {
    let spec = device_spec(flag, cfg)?;
    with_autodiff(spec, Train { cfg, opts })
}

/// Turns off `matrixmultiply`'s own GEMM threads (NdArray's matmul) unless the user set
/// `MATMUL_NUM_THREADS`. The NdArray step already keeps both cores busy with its parallel
/// shards (`training.parallel_shards`) and the rayon-parallel fused kernels; GEMM threads on
/// top of that contend for the same cores (two shards share one GEMM thread pool and wait on
/// each other). Measured on the seed's QLoRA step (2 cores, 2 shards): 3.25–3.48 s with one
/// GEMM thread against 3.93–4.02 s with the default (docs/performance.md). The GPU backends
/// do not use it.
///
/// # Safety
/// Sets an environment variable: call it before the process starts any other thread (the
/// first line of `main`), as `std::env::set_var` requires.
pub unsafe fn single_threaded_host_gemm() {
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var("MATMUL_NUM_THREADS", "1") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_the_config_and_bad_names_are_refused_by_value() {
        let mut cfg = RunConfig::from_yaml_str(crate::QUICKSTART_CONFIG).unwrap();
        cfg.training.device = "cuda:1".into();
        assert_eq!(device_spec(None, &cfg).unwrap(), DeviceSpec::Cuda(1));
        assert_eq!(device_spec(Some("cpu"), &cfg).unwrap(), DeviceSpec::Cpu);
        let e = device_spec(Some("gpu"), &cfg).unwrap_err().to_string();
        assert!(e.contains("`gpu`") && e.contains("cuda:N"), "{e}");
        // The same parser as the config's: `cuda:+1` is not a device.
        assert!(device_spec(Some("cuda:+1"), &cfg).is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error_saying_how_to_build_it() {
        struct Nothing;
        impl InferenceJob for Nothing {
            type Output = ();
            fn run<B: ModelBackend>(self, _: &B::Device) -> Result<(), TrainError> {
                Ok(())
            }
        }
        assert!(with_inference(DeviceSpec::Cpu, Nothing).is_ok());
        let e = with_inference(DeviceSpec::Cuda(0), Nothing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn wgpu_without_the_feature_is_an_error_saying_how_to_build_it() {
        struct Nothing;
        impl InferenceJob for Nothing {
            type Output = ();
            fn run<B: ModelBackend>(self, _: &B::Device) -> Result<(), TrainError> {
                Ok(())
            }
        }
        let e = with_inference(DeviceSpec::Wgpu, Nothing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--features wgpu"), "{e}");
    }
}
