//! The memory probe of a bench case: exact live-heap bytes from a counting allocator (all
//! NdArray tensors live on the heap) and the kernel's peak resident set (VmHWM, reset through
//! `/proc/self/clear_refs`), allocator slack included.

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
