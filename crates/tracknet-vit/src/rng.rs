//! Seeds for the forward's random draws when a batch runs as shards on threads.
//!
//! Burn's backends keep one random generator per process (`Backend::seed`). Shards of a batch
//! running at once would draw from it in the order the threads happen to reach it, so a run
//! would not repeat. Inside [`with_stream`], the small draws of the forward (the RoPE
//! coordinate augmentation: two or three numbers per forward) come from a generator of this
//! thread instead, seeded by the caller per shard. Outside it, they come from the backend's.

use std::cell::Cell;

use burn::prelude::*;
use burn::tensor::Distribution;

thread_local! {
    static STREAM: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Run `f` with this thread's draws taken from a stream seeded by `seed`; the previous stream
/// (or none) is restored afterwards, also when `f` panics.
pub fn with_stream<R>(seed: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STREAM.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(STREAM.with(|s| s.replace(Some(seed))));
    f()
}

/// `shape` values uniform in `[lo, hi)`: from this thread's stream inside [`with_stream`],
/// from the backend's generator otherwise.
pub fn uniform<B: Backend, const D: usize>(
    shape: [usize; D],
    lo: f64,
    hi: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let drawn = STREAM.with(|s| {
        let mut state = s.get()?;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let u = (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
                (lo + (hi - lo) * u) as f32
            })
            .collect();
        s.set(Some(state));
        Some(v)
    });
    match drawn {
        Some(v) => Tensor::from_data(TensorData::new(v, shape), device),
        None => Tensor::random(shape, Distribution::Uniform(lo, hi), device),
    }
}

/// One seed drawn from the backend's generator (so a seeded run stays reproducible).
pub fn draw_seed<B: Backend>(device: &B::Device) -> u64 {
    let draw = Tensor::<B, 1>::random([2], Distribution::Default, device)
        .into_data()
        .convert::<f32>();
    let v = draw
        .as_slice::<f32>()
        .map(|s| s.to_vec())
        .unwrap_or_default();
    let hi = v.first().map_or(0, |x| x.to_bits() as u64);
    let lo = v.get(1).map_or(0, |x| x.to_bits() as u64);
    (hi << 32) | lo
}

/// SplitMix64 (Steele, Lea and Flood 2014): a small generator with good statistics, enough
/// for a few augmentation draws per forward.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    fn values(t: Tensor<NdArray, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    #[test]
    fn a_stream_repeats_per_seed_on_any_thread_and_stays_in_range() {
        let d = Default::default();
        fn draw(seed: u64) -> Vec<f32> {
            with_stream(seed, || {
                values(uniform::<NdArray, 2>(
                    [3, 4],
                    -0.5,
                    2.0,
                    &Default::default(),
                ))
            })
        }
        let a = draw(7);
        let b = std::thread::spawn(|| draw(7)).join().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|v| (-0.5..2.0).contains(v)), "{a:?}");
        // Outside a stream the backend's generator is used, and the stream is gone again.
        <NdArray as Backend>::seed(&d, 3);
        let x = values(uniform::<NdArray, 2>([3, 4], -0.5, 2.0, &d));
        <NdArray as Backend>::seed(&d, 3);
        let y = values(Tensor::random([3, 4], Distribution::Uniform(-0.5, 2.0), &d));
        assert_eq!(x, y);
    }
}
