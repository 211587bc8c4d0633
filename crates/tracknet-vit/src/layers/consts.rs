//! Constant tables a forward needs (RoPE angles, resize taps, position-embedding
//! interpolation matrices), made once per shape and device and kept there: a GPU forward then
//! uploads nothing. Keyed by backend type, device and the caller's shape key; the tables are
//! small, and a model sees a handful of shapes.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use burn::prelude::*;

type Key = (TypeId, String, String);

fn tables() -> &'static Mutex<HashMap<Key, Box<dyn Any + Send>>> {
    static TABLES: OnceLock<Mutex<HashMap<Key, Box<dyn Any + Send>>>> = OnceLock::new();
    TABLES.get_or_init(Default::default)
}

/// The table `key` on `device`, made by `make` the first time.
pub(crate) fn cached<B: Backend, T: Clone + Send + 'static>(
    key: String,
    device: &B::Device,
    make: impl FnOnce() -> T,
) -> T {
    let k = (TypeId::of::<(B, T)>(), format!("{device:?}"), key);
    if let Some(t) = lock().get(&k).and_then(|b| b.downcast_ref::<T>()) {
        return t.clone();
    }
    let t = make();
    lock().insert(k, Box::new(t.clone()));
    t
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<Key, Box<dyn Any + Send>>> {
    // A panic elsewhere while holding the lock leaves the map intact: use it.
    tables().lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn a_table_is_made_once_per_key_and_backend() {
        let device = Default::default();
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            Tensor::<NdArray, 1>::from_floats([1.0, 2.0], &device)
        };
        let a = cached::<NdArray, _>("test-table-a".into(), &device, make);
        let b = cached::<NdArray, _>("test-table-a".into(), &device, make);
        assert_eq!(made.get(), 1);
        assert_eq!(a.into_data(), b.into_data());
        let _ = cached::<NdArray, _>("test-table-b".into(), &device, make);
        assert_eq!(made.get(), 2);
        // Another backend type is another table.
        type A = burn::backend::Autodiff<NdArray>;
        let _ = cached::<A, Tensor<A, 1>>("test-table-a".into(), &device, || {
            made.set(made.get() + 1);
            Tensor::from_floats([1.0, 2.0], &device)
        });
        assert_eq!(made.get(), 3);
    }
}
