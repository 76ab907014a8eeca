//! # The invalidation protocol
//!
//! The promise: **no DMA lands anywhere but a live mapping of where the memory is now**, while
//! any number of threads set up, re-fault, drop and invalidate mappings at once. It is Linux's
//! `mmu_interval_notifier` protocol (`mm/mmu_notifier.c`), with the registry as the notifier's
//! interval tree and the registry lock as the driver lock that both sides take.
//!
//! ## State
//!
//! Every mapping is a registry entry with a [`Sequence`](super::Sequence) and a state:
//!
//! | state | meaning | resources |
//! |---|---|---|
//! | `Building` | an establish or re-fault is building outside the lock | held by the builder |
//! | `Live` | published: the importer may DMA through its segments | in the entry |
//! | `Invalidated` | torn down by a move or revoke; an ODP importer may re-fault | none |
//!
//! A sequence is even while no invalidation covers the entry and odd while one or more do; it
//! changes only under the registry lock. A removed entry's sequence goes to a later entry of the
//! same shard when nothing but the removed mapping's handle still holds it (so no running
//! invalidation does, and it is even): only changes of its value mean anything, never the value.
//!
//! ## The reader: establish, map, re-fault
//!
//! 1. Register the entry as `Building`, under the lock, *before* looking at the memory
//!    (`mmu_interval_notifier_insert`). If a running invalidation covers the range, the new
//!    entry's sequence is made odd and held by that invalidation (Linux defers such inserts to
//!    `mn_itree_inv_end`).
//! 2. `seq = read_begin()`: wait until the sequence is even (`mmu_interval_read_begin`).
//! 3. Read where the memory is and build: plan, grant, chunks, IOMMU map, scatter list
//!    (`hmm_range_fault`).
//! 4. Take the lock. If `read_retry(seq)` (`mmu_interval_read_retry`): an invalidation began or
//!    ended since step 2, so what was built may describe the old place; release the lock, tear it
//!    down, go to 2. Otherwise make the entry `Live`, tell the observer, release the lock.
//! 5. After a bounded number of retries, fail with [`Error::Contended`](crate::Error::Contended)
//!    and remove the entry.
//!
//! ## The writer: invalidate
//!
//! 1. Under the lock ([`Negotiator::begin_invalidation`](super::Negotiator::begin_invalidation)):
//!    refuse if a pinned entry overlaps; otherwise make every overlapping entry's sequence odd and
//!    record the invalidation as running (`mn_itree_inv_start_range`).
//! 2. For each overlapping `Live` entry: tell its importer (it must stop DMA before answering),
//!    then under the lock tell the observer and take the entry's resources, leaving it
//!    `Invalidated`; outside the lock unmap, flush, free the IOVA and release the grant.
//! 3. The caller moves or revokes the memory. **An exporter's residency changes only here.**
//! 4. Dropping the [`Invalidating`](super::Invalidating) guard ends the invalidation under the
//!    lock: the sequences it held go even, to a value no reader saw (`mn_itree_inv_end`).
//!
//! ## Forced revoke
//!
//! [`Negotiator::begin_forced_revoke`](super::Negotiator::begin_forced_revoke) is the writer
//! above with two differences, both in what it does not wait for: step 1 does not refuse pinned
//! entries, and in step 2 an importer whose `invalidate` fails is counted and torn down anyway
//! instead of ending the invalidation. Everything the reader relies on is unchanged (the
//! sequences go odd under the lock before anything is torn down, teardown takes the entry's
//! resources under the lock, the guard ends it), so the argument below holds for it word for
//! word. A pinned establish that races it retries, and its next attempt's grant fails because the
//! exporter revoked the memory inside the guard.
//!
//! Which to use: an exporter that can wait and would rather keep pinned users working (a
//! migration, an eviction under memory pressure) asks with `begin_invalidation` and honours
//! [`Error::Pinned`](crate::Error::Pinned); an exporter whose memory goes away regardless (a
//! function-level reset, a hot unplug, a dma-buf revoke) forces.
//!
//! ## Why it holds
//!
//! The reader's check (4) and the writer's begin (1) take the same lock, so one comes first:
//!
//! - Writer first: the sequence moved since the reader's `read_begin`, the reader retries, and
//!   its next `read_begin` waits for the end, after the move: it reads the new place.
//! - Reader first: the entry is `Live` when the writer looks under the lock, so the writer
//!   tears it down before the memory moves.
//!
//! A reader that registers while an invalidation runs is held odd by it (1), so it cannot read
//! the memory mid-move. Two overlapping invalidations keep the sequence odd until both end.
//! The observer (the DMA sanitizer) is told of every publish and teardown under the registry
//! lock, so it sees them in registry order: a teardown never arrives before its set-up.
//!
//! ## Who may assume what
//!
//! - An importer's `invalidate` is called with no negotiator lock held; it may block until its
//!   DMA has stopped, and must not set up mappings of the same range (the set-up would wait for
//!   the invalidation it is part of).
//! - A [`MappingObserver`](super::MappingObserver) is called with the registry lock held: it
//!   must not call back into the negotiator.
//! - A holder of a [`Mapping`](super::Mapping) that checks `read_begin` / `read_retry` around its
//!   use of the segments (as an ODP driver does around programming device PTEs) never programs
//!   a torn-down translation.
//!
//! The protocol is model-checked with loom (`p2p-core/tests/loom_protocol.rs`, run with
//! `RUSTFLAGS="--cfg loom" cargo test -p p2p-core --release --test loom_protocol`) and
//! stress-tested on the simulated machine (`tests/concurrency.rs`).
