//! The memory probe of a bench case: exact live-heap bytes from a counting allocator (all
//! NdArray tensors live on the heap) and the kernel's peak resident set (VmHWM, reset through
//! `/proc/self/clear_refs`), allocator slack included. On the CubeCL backends tensors live in
//! the device allocator instead: [`DeviceSampler`] polls it while the step runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A global allocator that counts live heap bytes and their high-water mark, forwarding every
/// call to the system allocator. The `tracknet-bench` binary installs it
/// (`#[global_allocator] static A: Counting = Counting;`); a library never does.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) -> usize {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
    now
}

fn shrink(n: usize) {
    LIVE.fetch_sub(n, Ordering::Relaxed);
}

/// Where the heap's high-water mark comes from: with [`trace::enable`], every live allocation
/// of at least [`trace::MIN`] bytes is recorded with its (unresolved) call stack, and the set
/// alive at the highest mark is kept; [`trace::report`] prints it grouped by call site.
pub mod trace {
    use std::backtrace::Backtrace;
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Allocations smaller than this are counted but not traced.
    pub const MIN: usize = 256 << 10;

    static ON: AtomicBool = AtomicBool::new(false);
    static BEST: AtomicUsize = AtomicUsize::new(0);

    type Live = HashMap<usize, (usize, Arc<Backtrace>)>;

    struct State {
        live: Live,
        at_peak: Vec<(usize, Arc<Backtrace>)>,
        peak: usize,
    }

    static STATE: Mutex<Option<State>> = Mutex::new(None);

    thread_local! {
        static BUSY: Cell<bool> = const { Cell::new(false) };
    }

    /// Start tracing (the bench calls it when `TRACKNET_HEAP_TRACE` is set).
    pub fn enable() {
        *STATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(State {
            live: HashMap::new(),
            at_peak: Vec::new(),
            peak: 0,
        });
        ON.store(true, Ordering::SeqCst);
    }

    /// Forget the recorded peak (with [`super::reset_peaks`]).
    pub fn reset() {
        BEST.store(0, Ordering::SeqCst);
        if let Some(s) = STATE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            s.peak = 0;
            s.at_peak.clear();
        }
    }

    fn guarded(f: impl FnOnce()) {
        if !ON.load(Ordering::Relaxed) || BUSY.with(|b| b.replace(true)) {
            return;
        }
        f();
        BUSY.with(|b| b.set(false));
    }

    pub(super) fn on_alloc(ptr: usize, size: usize, live_now: usize) {
        if size < MIN {
            return;
        }
        guarded(|| {
            let bt = Arc::new(Backtrace::force_capture());
            let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = g.as_mut() {
                s.live.insert(ptr, (size, bt));
                if live_now > BEST.load(Ordering::Relaxed) {
                    BEST.store(live_now, Ordering::Relaxed);
                    s.peak = live_now;
                    s.at_peak = s.live.values().cloned().collect();
                }
            }
        });
    }

    pub(super) fn on_free(ptr: usize, size: usize) {
        if size < MIN {
            return;
        }
        guarded(|| {
            if let Some(s) = STATE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                s.live.remove(&ptr);
            }
        });
    }

    /// The traced allocations alive at the highest mark since [`reset`], grouped by their
    /// first `depth` frames inside this workspace or Burn, largest first, on stderr.
    pub fn report(depth: usize) {
        let at_peak = {
            let g = STATE.lock().unwrap_or_else(|e| e.into_inner());
            match g.as_ref() {
                Some(s) => (s.peak, s.at_peak.clone()),
                None => return,
            }
        };
        ON.store(false, Ordering::SeqCst);
        let (peak, allocs) = at_peak;
        let mut groups: HashMap<String, (usize, usize)> = HashMap::new();
        for (size, bt) in allocs {
            let text = bt.to_string();
            let frames: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.starts_with("at ")
                        && (l.contains("tracknet") || l.contains("burn"))
                        && !l.contains("bench::memory")
                })
                .take(depth)
                .collect();
            let e = groups.entry(frames.join("\n    <- ")).or_default();
            e.0 += size;
            e.1 += 1;
        }
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.1.0));
        let total: usize = groups.iter().map(|g| g.1.0).sum();
        eprintln!(
            "heap trace: peak {:.1} MB, of which {:.1} MB in allocations >= {} KiB:",
            peak as f64 / 1e6,
            total as f64 / 1e6,
            MIN >> 10
        );
        for (site, (bytes, n)) in groups {
            eprintln!("{:8.1} MB {n:5}x  {site}", bytes as f64 / 1e6);
        }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = grow(layout.size());
            trace::on_alloc(p as usize, layout.size(), now);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = grow(layout.size());
            trace::on_alloc(p as usize, layout.size(), now);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
        trace::on_free(ptr as usize, layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            trace::on_free(ptr as usize, layout.size());
            let now = if new_size >= layout.size() {
                grow(new_size - layout.size())
            } else {
                shrink(layout.size() - new_size);
                heap_live()
            };
            trace::on_alloc(p as usize, new_size, now);
        }
        p
    }
}

/// Live heap bytes now.
pub fn heap_live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Live heap high-water mark since the last [`reset_peaks`].
pub fn heap_peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn malloc_trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim only releases free memory back to the kernel.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn malloc_trim() {}

/// CPU time (user + system) this process has used so far, in seconds; divided by a wall time
/// it gives the cores kept busy.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
pub fn cpu_seconds() -> Option<f64> {
    #[repr(C)]
    struct Timeval {
        sec: i64,
        usec: i64,
    }
    #[repr(C)]
    struct Rusage {
        utime: Timeval,
        stime: Timeval,
        rest: [i64; 14],
    }
    unsafe extern "C" {
        fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    }
    let mut r = Rusage {
        utime: Timeval { sec: 0, usec: 0 },
        stime: Timeval { sec: 0, usec: 0 },
        rest: [0; 14],
    };
    // SAFETY: RUSAGE_SELF (0) fills the struct, which has Linux's 64-bit `struct rusage` layout.
    let rc = unsafe { getrusage(0, &mut r) };
    let t = |v: &Timeval| v.sec as f64 + v.usec as f64 * 1e-6;
    (rc == 0).then(|| t(&r.utime) + t(&r.stime))
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
pub fn cpu_seconds() -> Option<f64> {
    None
}

/// A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`).
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Give free memory back, reset the kernel's and the allocator's high-water marks; returns
/// whether the kernel's could be reset.
pub fn reset_peaks() -> bool {
    malloc_trim();
    let ok = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    PEAK.store(heap_live(), Ordering::Relaxed);
    trace::reset();
    ok
}

/// The highest device-allocator readings a [`DeviceSampler`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DevicePeaks {
    /// Highest bytes in use among the samples: a lower bound of the true peak (a tensor that
    /// lives less than one period between two samples can be missed).
    pub in_use: u64,
    /// Highest bytes reserved among the samples.
    pub reserved: u64,
    /// How many readings were taken.
    pub samples: u64,
}

impl DevicePeaks {
    /// Takes one more reading into account.
    pub fn add(&mut self, m: tracknet_quant::DeviceMemory) {
        self.in_use = self.in_use.max(m.in_use);
        self.reserved = self.reserved.max(m.reserved);
        self.samples += 1;
    }
}

/// Polls a device-memory probe every `period` on a thread of its own until [`finish`]ed: the
/// CubeCL allocators keep counters of what is live now, not a high-water mark.
///
/// [`finish`]: DeviceSampler::finish
pub struct DeviceSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<DevicePeaks>,
}

impl DeviceSampler {
    /// Starts polling `probe`.
    pub fn start(
        probe: std::sync::Arc<tracknet_quant::MemoryProbe>,
        period: std::time::Duration,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peaks = DevicePeaks::default();
            while !flag.load(Ordering::Relaxed) {
                if let Some(m) = probe() {
                    peaks.add(m);
                }
                std::thread::sleep(period);
            }
            peaks
        });
        Self { stop, handle }
    }

    /// Stops polling; the highest readings (the default if the sampler thread panicked).
    pub fn finish(self) -> DevicePeaks {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use tracknet_quant::DeviceMemory;

    /// The sampler keeps the highest reading of each counter, not the last one, and stops.
    #[test]
    fn the_sampler_keeps_the_highest_readings() {
        let calls = Arc::new(AtomicU64::new(0));
        let seen = calls.clone();
        // In use rises to 50 at the fifth reading and falls back; reserved only grows.
        let probe: tracknet_quant::MemoryProbe = Box::new(move || {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            Some(DeviceMemory {
                in_use: if n == 4 { 50 } else { 10 },
                reserved: 100 + n.min(20),
            })
        });
        let sampler = DeviceSampler::start(Arc::new(probe), std::time::Duration::ZERO);
        while calls.load(Ordering::SeqCst) < 30 {
            std::thread::yield_now();
        }
        let peaks = sampler.finish();
        let after = calls.load(Ordering::SeqCst);
        assert_eq!(peaks.in_use, 50);
        assert_eq!(peaks.reserved, 120);
        assert_eq!(peaks.samples, after);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            after,
            "still polling after finish"
        );
    }
}
