//! Grace periods for one domain's page-table frames: when may a frame unlinked from the tables be
//! reused, given that walks without a lock may still be reading it.
//!
//! The rule is crossbeam-epoch's (and RCU's): a walk *pins* the domain's epoch for as long as it
//! holds table references; a frame unlinked while the epoch was `e` is reused once the epoch has
//! reached `e + 2`; and the epoch advances from `e` only when no walk pinned at `e - 1` is still
//! running. A walk that could have read the frame's link before the unlink pinned at `e` or
//! earlier, so it has ended by then; a walk pinned later reads the unlinked entry.
//!
//! What differs is who pays. crossbeam-epoch's process-wide collector lets every 128th pin of
//! every thread try to advance one global epoch, so threads that never retire anything still
//! write a line the others read (measured: 5 % of a two-thread map + unmap round trip, and the
//! part of the two-thread slow-down a profile could attribute). Here the epoch is the domain's and
//! advances only when a frame waits for it (a table unlinked, which the common map and unmap of
//! a page never do), so a pin writes only its thread's stripe:
//!
//! - **A pin** reads the epoch `e`, counts itself in its stripe's counter for `e`'s parity, and
//!   reads the epoch again: if it moved meanwhile, the count is taken back and the pin starts
//!   again (else an advance that had already looked at that counter could pass it by).
//! - **An advance** from `e` reads every stripe's counter for the parity of `e - 1` and moves the
//!   epoch only if all are zero.
//! - Threads are spread over [`STRIPES`] cache lines round the order they first asked for a
//!   shard of anything (`sync::thread_ordinal`, a process-wide count that never goes down): two
//!   threads alive at once share a counter only if more than that many threads asked in
//!   between, and then they only contend, never err.
//!
//! Every step is `SeqCst`: a pin's count and the walk's first read of a table entry on one side,
//! the unlink and the advance's read of the counters on the other, are the Dekker pattern (the
//! pin needs no fence of its own: the language orders `SeqCst` accesses totally, and on x86 its
//! locked increment is a full barrier anyway). The
//! protocol is model-checked in `tests/loom_pagetable.rs` (`a_frame_is_not_reused_under_a_walk`).

use crate::sync::{fence, seq_cst_accesses_for_loom, AtomicU64, Ordering::SeqCst};

/// Cache lines the pins of a domain are spread over.
#[cfg(not(loom))]
const STRIPES: usize = 16;
/// One under loom: every model thread counts in the same words, the case with most interleavings.
#[cfg(loom)]
const STRIPES: usize = 1;

/// One stripe's counts of running walks, by the parity of the epoch they pinned; a cache line
/// of its own (two, against the adjacent-line prefetcher).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    walks: [AtomicU64; 2],
}

/// The epoch, on a line of its own: read by every pin, written only by an advance.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Epoch(AtomicU64);

/// A domain's grace periods. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Grace {
    epoch: Epoch,
    stripes: [Stripe; STRIPES],
}

/// A running walk of a domain's tables ([`Frames::pin`](crate::frames::Frames::pin)): while it
/// lives, no frame unlinked after it began is reused.
#[derive(Debug)]
#[must_use = "a pin protects only while it is alive"]
pub struct Pin<'a> {
    count: &'a AtomicU64,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        // SeqCst (a release at least): the walk's reads happen before the advance that sees the
        // count back at zero, and so before any reuse that advance allows.
        self.count.fetch_sub(1, SeqCst);
    }
}

impl Grace {
    /// Pins the current epoch for a walk. Pins nest: each counts once.
    #[inline]
    pub(crate) fn pin(&self) -> Pin<'_> {
        let stripe = &self.stripes[stripe_of_this_thread()];
        loop {
            seq_cst_accesses_for_loom();
            let epoch = self.epoch.0.load(SeqCst);
            let count = &stripe.walks[parity(epoch)];
            count.fetch_add(1, SeqCst);
            seq_cst_accesses_for_loom();
            if self.epoch.0.load(SeqCst) == epoch {
                return Pin { count };
            }
            // An advance came between: it may have checked this counter already.
            count.fetch_sub(1, SeqCst);
        }
    }

    /// The current epoch: the tag of a frame unlinked before this call.
    pub(crate) fn epoch(&self) -> u64 {
        seq_cst_accesses_for_loom();
        self.epoch.0.load(SeqCst)
    }

    /// Whether a frame tagged `tag` (unlinked while the epoch was `tag`) may be reused now.
    pub(crate) fn has_passed(&self, tag: u64) -> bool {
        self.epoch().wrapping_sub(tag) >= 2
    }

    /// Advances the epoch by one if no walk pinned at the one before is running; returns the
    /// epoch afterwards (advanced by this call or by another, or not at all).
    pub(crate) fn try_advance(&self) -> u64 {
        // The retirer's half of the Dekker pattern: its unlink, then the counters. A real fence
        // (advances are rare), which also makes loom see the order.
        fence(SeqCst);
        let epoch = self.epoch.0.load(SeqCst);
        let previous = parity(epoch.wrapping_sub(1));
        if self
            .stripes
            .iter()
            .any(|s| s.walks[previous].load(SeqCst) != 0)
        {
            return epoch;
        }
        match self
            .epoch
            .0
            .compare_exchange(epoch, epoch.wrapping_add(1), SeqCst, SeqCst)
        {
            Ok(_) => {
                seq_cst_accesses_for_loom();
                epoch.wrapping_add(1)
            }
            Err(now) => now,
        }
    }
}

/// The counter index of walks pinned at `epoch`.
fn parity(epoch: u64) -> usize {
    (epoch & 1) as usize
}

/// This thread's stripe: threads in the order they first asked for a shard, round the stripes.
#[cfg(not(loom))]
#[inline]
fn stripe_of_this_thread() -> usize {
    crate::sync::thread_ordinal() % STRIPES
}

#[cfg(loom)]
fn stripe_of_this_thread() -> usize {
    0
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A pin held at epoch `e` lets the epoch reach `e + 1` and no further until it ends.
    #[test]
    fn a_pin_holds_the_epoch_back_two_steps() {
        let grace = Grace::default();
        let tag = grace.epoch();
        let pin = grace.pin();
        assert_eq!(grace.try_advance(), tag + 1, "walks at tag - 1: none");
        assert_eq!(grace.try_advance(), tag + 1, "held by the pin at tag");
        assert!(!grace.has_passed(tag));
        drop(pin);
        assert_eq!(grace.try_advance(), tag + 2);
        assert!(grace.has_passed(tag));
    }

    /// Nested pins each count: the epoch waits for the outer one too.
    #[test]
    fn nested_pins_each_count() {
        let grace = Grace::default();
        let outer = grace.pin();
        let inner = grace.pin();
        grace.try_advance();
        drop(inner);
        assert_eq!(grace.try_advance(), 1, "the outer pin still holds");
        drop(outer);
        assert_eq!(grace.try_advance(), 2);
    }
}
