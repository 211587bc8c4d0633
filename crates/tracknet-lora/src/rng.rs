//! Seeds for the forward's random draws when a batch runs as shards on threads.
//!
//! Burn's backends keep one random generator per process (`Backend::seed`). Shards of a batch
//! running at once would draw from it in the order the threads happen to reach it, so a run
//! would not repeat. Inside [`with_stream`], the forward's draws (LoRA dropout, drop path,
//! channel dropout, the RoPE coordinate augmentation) come from a generator of this thread
//! instead, seeded by the caller per shard, on the host. Outside it, they come from the
//! backend's generator, as Burn's own ops draw them.

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
    match from_stream(shape.iter().product(), |x| {
        (lo + (hi - lo) * unit(x)) as f32
    }) {
        Some(v) => Tensor::from_data(TensorData::new(v, shape), device),
        None => Tensor::random(shape, Distribution::Uniform(lo, hi), device),
    }
}

/// A `shape` mask of ones with probability `keep`, zeros otherwise (Burn's
/// `Distribution::Bernoulli`): from this thread's stream inside [`with_stream`], from the
/// backend's generator otherwise.
pub fn bernoulli<B: Backend, const D: usize>(
    shape: [usize; D],
    keep: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    match from_stream(shape.iter().product(), |x| {
        f32::from(u8::from(unit(x) < keep))
    }) {
        Some(v) => Tensor::from_data(TensorData::new(v, shape), device),
        None => Tensor::random(shape, Distribution::Bernoulli(keep), device),
    }
}

/// `x` with each element zeroed with probability `prob` and the rest scaled by
/// `1 / (1 − prob)` (Burn's `Dropout`), in training only (autodiff on).
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, prob: f64) -> Tensor<B, D> {
    let shape = x.dims();
    dropout_shaped(x, prob, shape)
}

/// [`dropout`] with one draw per element of `mask` (broadcast over `x`): `[batch, 1, 1]`
/// drops whole samples (drop path), `[batch, channels, 1, 1]` whole channels. Burn's
/// `Dropout` arithmetic: `(x · mask) · (1 / keep)`.
pub fn dropout_shaped<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    prob: f64,
    mask: [usize; D],
) -> Tensor<B, D> {
    if prob <= 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let keep = 1.0 - prob;
    let mask = bernoulli(mask, keep, &x.device());
    (x * mask) * (1.0 / keep)
}

/// Where a positional dropout mask of `n` elements starts
/// ([`tracknet_quant::low_rank::DropMask`]): inside [`with_stream`], this thread's stream
/// state, which then moves on by `n` draws, so the mask is exactly [`bernoulli`]'s of the same
/// `n` elements and the draws after it are unchanged; outside, a seed from the backend's
/// generator ([`draw_seed`]).
pub fn mask_state<B: Backend>(n: usize, device: &B::Device) -> u64 {
    let in_stream = STREAM.with(|s| {
        let state = s.get()?;
        s.set(Some(state.wrapping_add(
            (n as u64).wrapping_mul(tracknet_quant::low_rank::GOLDEN),
        )));
        Some(state)
    });
    in_stream.unwrap_or_else(|| draw_seed::<B>(device))
}

/// One seed: the next value of this thread's stream inside [`with_stream`], else drawn from
/// the backend's generator (so a seeded run stays reproducible either way).
pub fn draw_seed<B: Backend>(device: &B::Device) -> u64 {
    if let Some(v) = from_stream(1, |x| x) {
        return v[0];
    }
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

/// Restart the draws at `seed`: this thread's stream inside [`with_stream`], else the
/// backend's generator (recomputation replays a segment's draws this way).
pub fn reseed<B: Backend>(seed: u64, device: &B::Device) {
    let in_stream = STREAM.with(|s| {
        let on = s.get().is_some();
        if on {
            s.set(Some(seed));
        }
        on
    });
    if !in_stream {
        B::seed(device, seed);
    }
}

/// The next `n` values of this thread's stream, each through `f`; `None` outside a stream.
fn from_stream<T>(n: usize, f: impl Fn(u64) -> T) -> Option<Vec<T>> {
    STREAM.with(|s| {
        let mut state = s.get()?;
        let v = (0..n).map(|_| f(splitmix64(&mut state))).collect();
        s.set(Some(state));
        Some(v)
    })
}

/// A stream value as a uniform `f64` in `[0, 1)` (its top 53 bits).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// SplitMix64 (Steele, Lea and Flood 2014): a small, fast generator with good statistics.
fn splitmix64(state: &mut u64) -> u64 {
    use tracknet_quant::low_rank::{GOLDEN, mix};
    *state = state.wrapping_add(GOLDEN);
    mix(*state)
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
        // Masks: about `keep` of ones, the same per seed; dropout scales the kept ones.
        let m = with_stream(5, || values(bernoulli::<NdArray, 2>([100, 100], 0.8, &d)));
        let ones = m.iter().filter(|&&v| v == 1.0).count();
        assert!(m.iter().all(|&v| v == 0.0 || v == 1.0));
        assert!((7700..8300).contains(&ones), "{ones}");
        assert_eq!(
            m,
            with_stream(5, || values(bernoulli::<NdArray, 2>([100, 100], 0.8, &d)))
        );
        type AD = burn::backend::Autodiff<NdArray>;
        let x = Tensor::<AD, 2>::ones([10, 10], &d);
        let y = with_stream(5, || dropout(x.clone(), 0.2))
            .into_data()
            .convert::<f32>();
        let y = y.into_vec::<f32>().unwrap();
        assert!(
            y.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6),
            "{y:?}"
        );
        // Inference (no autodiff) and p = 0 pass the input through.
        let plain = Tensor::<NdArray, 2>::ones([2, 2], &d);
        assert_eq!(values(dropout(plain.clone(), 0.5)), vec![1.0; 4]);
        // reseed restarts the stream; outside one it seeds the backend.
        let again = with_stream(1, || {
            reseed::<NdArray>(5, &d);
            values(bernoulli::<NdArray, 2>([100, 100], 0.8, &d))
        });
        assert_eq!(again, m);
    }
}
