//! The primitives the software IOMMU's concurrency protocols use (page-table entries, the flush
//! queue, the IOTLB's slot words, deferred reclamation), in one place so that `RUSTFLAGS="--cfg loom"` swaps them for
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

/// Deferred reclamation of page-table frames: a walk pins the current epoch for as long as it
/// holds table references, and a retired frame is reused only after every pin that could have
/// seen it has ended ([crossbeam-epoch], the user-space counterpart of the RCU grace period
/// Linux waits before freeing tables). Under loom, retired frames are never reused: the models
/// check the install / unlink protocol, and reclamation is crossbeam's.
///
/// [crossbeam-epoch]: https://docs.rs/crossbeam-epoch
pub(crate) mod epoch {
    /// Holds the epoch while alive.
    #[cfg(not(loom))]
    pub(crate) type Guard = crossbeam_epoch::Guard;
    /// Holds nothing: under loom nothing is reclaimed.
    #[cfg(loom)]
    pub(crate) type Guard = ();

    /// Pins the current epoch for the duration of a walk.
    pub(crate) fn pin() -> Guard {
        #[cfg(not(loom))]
        return crossbeam_epoch::pin();
    }

    /// Runs `f` once no pinned walk can still see what it frees.
    pub(crate) fn defer(f: impl FnOnce() + Send + 'static) {
        #[cfg(not(loom))]
        crossbeam_epoch::pin().defer(f);
        #[cfg(loom)]
        drop(f);
    }

    /// Hands this thread's deferred work to the collector and lets it advance the epoch and run
    /// what is due: without it, work waits for the thread's next 128 pins, and an unmap of a
    /// large range retires hundreds of tables at once.
    pub(crate) fn flush() {
        #[cfg(not(loom))]
        crossbeam_epoch::pin().flush();
    }
}
