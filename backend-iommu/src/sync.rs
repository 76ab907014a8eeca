//! The primitives the software IOMMU's concurrency protocols use (page-table entries, the flush
//! queue, the IOTLB's slot words, the grace periods' counters), in one place so that `RUSTFLAGS="--cfg loom"` swaps them for
//! [loom]'s model-checked versions (`backend-iommu/tests/loom_iotlb.rs`, `loom_pagetable.rs`).
//!
//! [loom]: https://docs.rs/loom

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use parking_lot::Mutex;

/// Lets another thread run while this one waits for a short protocol step of another.
pub(crate) fn spin() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

#[cfg(loom)]
pub(crate) use model::Mutex;

/// loom's mutex with parking_lot's infallible API.
#[cfg(loom)]
mod model {
    use loom::sync::MutexGuard;
    use std::sync::PoisonError;

    /// loom's mutex, `lock` without a `Result`.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }
}

/// This thread's ordinal: threads numbered from 0 in the order they first asked. For spreading
/// what threads write over shards (`thread_ordinal() % SHARDS`): two threads share a shard only
/// if more than `SHARDS` threads asked in between. Plain std atomics, also under loom: a
/// placement, not part of any protocol.
#[inline]
pub(crate) fn thread_ordinal() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // Const-initialised and assigned on first use by hand: a lazily initialised
        // thread-local checks its state on every access.
        static ORDINAL: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    ORDINAL.with(|o| {
        if o.get() == usize::MAX {
            o.set(NEXT.fetch_add(1, Relaxed));
        }
        o.get()
    })
}

/// Under loom, a `SeqCst` fence; otherwise nothing. For a Dekker pattern written with `SeqCst`
/// accesses alone, which the language orders totally (no thread's later load can miss another's
/// earlier store in that order): loom models `SeqCst` accesses as acquire / release only
/// (tokio-rs/loom#180), so without the fence it reports executions no compiler or CPU allows. The
/// fence makes loom see the order the real accesses already have; the real code pays nothing.
#[inline(always)]
pub(crate) fn seq_cst_accesses_for_loom() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}
