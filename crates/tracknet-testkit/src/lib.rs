//! Test support for the tracknet crates (a dev-dependency only): where the reference fixtures
//! are, scratch folders, and tiny inputs that several test suites build.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The fixture root: `$TRACKNET_FIXTURES` when set (another set made the same way), else the
/// repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    std::env::var_os("TRACKNET_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
        })
}

/// `path`, failing (never skipping) when the fixture file is missing.
#[track_caller]
pub fn need(path: &Path) -> &Path {
    assert!(path.exists(), "fixture file missing: {}", path.display());
    path
}

/// Reads a fixture file, failing with its path when it cannot be read.
#[track_caller]
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty folder under the system temp dir, unique to this process, `tag` and call;
/// left in place afterwards so a failed test's files can be read.
pub fn scratch(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tracknet-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A [`scratch`] folder removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh folder for `tag`.
    pub fn new(tag: &str) -> Self {
        Self(scratch(tag))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a solid-colour `w`×`h` JPEG (a frame for data-layout tests).
#[track_caller]
pub fn write_jpeg(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([90, 120, 60]));
    img.save(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Instantiates backend-generic tests once per backend present in the build.
///
/// Each named function has the signature `fn name<B: …>(device: &B::Device)`; the macro makes
/// `ndarray::name` always, `wgpu::name` when the calling package is built with its `wgpu`
/// feature (CI runs it on Mesa's lavapipe) and `cuda::name` with its `cuda` feature (run only
/// where a CUDA device is present). The same test body runs on every backend, so a backend
/// that computes differently fails the same assertion.
///
/// ```text
/// fn forward_matches<B: Backend>(device: &B::Device) { /* … */ }
/// tracknet_testkit::backend_tests!(forward_matches);
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($test:ident),+ $(,)?) => {
        /// The tests on NdArray (the CPU backend).
        mod ndarray {
            $(
                #[test]
                fn $test() {
                    super::$test::<::burn::backend::NdArray>(&::core::default::Default::default());
                }
            )+
        }

        /// The tests on wgpu (CubeCL; on lavapipe in CI, the code path CUDA runs).
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(
                #[test]
                fn $test() {
                    super::$test::<::burn::backend::Wgpu>(
                        &::burn::backend::wgpu::WgpuDevice::default(),
                    );
                }
            )+
        }

        /// The tests on CUDA (run by `cargo xtask test` only where a CUDA device is present).
        #[cfg(feature = "cuda")]
        mod cuda {
            $(
                #[test]
                fn $test() {
                    super::$test::<::burn::backend::Cuda>(
                        &::burn::backend::cuda::CudaDevice::default(),
                    );
                }
            )+
        }
    };
}

/// A counting global allocator for memory tests: a test binary installs it with
/// `#[global_allocator] static GLOBAL: tracknet_testkit::CountingAlloc = tracknet_testkit::CountingAlloc;`
/// and reads live and peak heap bytes with [`heap_live`] and [`heap_peak`] (the whole process's,
/// so such a test measures in a child process of its own).
pub struct CountingAlloc;

static HEAP_LIVE: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            let now = HEAP_LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            HEAP_PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        HEAP_LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

/// Live heap bytes now (with [`CountingAlloc`] installed).
pub fn heap_live() -> usize {
    HEAP_LIVE.load(Ordering::SeqCst)
}

/// Peak heap bytes since the last [`reset_heap_peak`].
pub fn heap_peak() -> usize {
    HEAP_PEAK.load(Ordering::SeqCst)
}

/// Starts a new peak at the live bytes now; returns them.
pub fn reset_heap_peak() -> usize {
    let live = heap_live();
    HEAP_PEAK.store(live, Ordering::SeqCst);
    live
}
