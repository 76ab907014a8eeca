//! The IOVA allocator's tests: alignment and limits, reserved ranges, the thread caches and
//! fronts, exhaustion, and a model check.

use super::*;
use proptest::prelude::*;

#[test]
fn top_down_size_aligned_below_the_limit() {
    let a = IovaAllocator::new(0x1000, 1 << 40);
    let x = a.alloc(0x3000, 0xffff_ffff).unwrap();
    assert_eq!(
        x,
        0x1_0000_0000 - 0x4000,
        "3 pages round to 4, aligned to 16 KiB"
    );
    let big = a.alloc(100 << 12, u64::MAX).unwrap();
    assert_eq!(
        big % (128 << 12),
        0,
        "size-aligned to the next power of two"
    );
    assert!(big + (100 << 12) <= 1 << 40);
    assert!(matches!(
        a.alloc(1 << 41, u64::MAX),
        Err(Error::IovaExhausted { .. })
    ));
}

#[test]
fn reserved_ranges_are_never_handed_out() {
    let a = IovaAllocator::new(0x1000, 1 << 32);
    a.reserve(0xfee0_0000, 0xfef0_0000);
    a.reserve(0xf000_0000, 0x1_0000_0000);
    let x = a.alloc(0x1000, 0xffff_ffff).unwrap();
    assert!(x < 0xf000_0000);
}

#[test]
fn freed_ranges_come_back_from_the_thread_cache() {
    let a = IovaAllocator::new(0x1000, 1 << 32);
    let x = a.alloc(0x1000, u64::MAX).unwrap();
    a.free(x, 0x1000);
    assert_eq!(a.alloc(0x1000, u64::MAX).unwrap(), x);
    // A cached range above the limit is not used for a limited request.
    a.free(x, 0x1000);
    let y = a.alloc(0x1000, 0xffff).unwrap();
    assert!(y < 0x10000);
}

#[test]
fn exhaustion_flushes_the_caches_and_retries() {
    // Two refill runs' worth of pages: the singles come from refills, not the tree.
    let pages = 2 * REFILL;
    let a = IovaAllocator::new(0, pages << 12);
    let xs: Vec<u64> = (0..pages)
        .map(|_| a.alloc(0x1000, u64::MAX).unwrap())
        .collect();
    for &x in &xs {
        a.free(x, 0x1000);
    }
    // The tree is empty (all cached as 1-page entries); a request for all of it needs them
    // merged.
    assert_eq!(a.alloc(pages << 12, u64::MAX).unwrap(), 0);
}

#[test]
fn a_thread_that_exits_gives_back_the_pages_its_front_holds() {
    let a = IovaAllocator::new(0x1000, 1 << 32);
    let whole = a.tree_free_bytes();
    let b = a.clone();
    std::thread::spawn(move || {
        let pages: Vec<u64> = (0..40)
            .map(|_| b.alloc(0x1000, u64::MAX).unwrap())
            .collect();
        for p in pages {
            b.free(p, 0x1000);
        }
    })
    .join()
    .unwrap();
    a.flush_caches();
    assert_eq!(
        a.tree_free_bytes(),
        whole,
        "pages stayed with the dead thread"
    );
}

/// Pages freed to one allocator never come out of another on the same thread, including a
/// new allocator made after the old one is dropped (possibly at the same address).
#[test]
fn a_front_never_hands_out_another_allocators_pages() {
    for round in 0..200u64 {
        // Each round's first allocator has a space of its own: a page of an earlier one
        // (whose memory the new one may reuse) is outside it.
        let base = (round + 1) << 20;
        let a = IovaAllocator::new(base, base + (1 << 20));
        let b = IovaAllocator::new(1 << 30, 1 << 31);
        for _ in 0..3 {
            let x = a.alloc(0x1000, u64::MAX).unwrap();
            let y = b.alloc(0x1000, u64::MAX).unwrap();
            assert!(
                (base..base + (1 << 20)).contains(&x) && y >= 1 << 30,
                "round {round}: {x:#x} {y:#x}"
            );
            a.free(x, 0x1000);
            b.free(y, 0x1000);
        }
        drop(a);
        let c = IovaAllocator::new(1 << 32, 1 << 33);
        let z = c.alloc(0x1000, u64::MAX).unwrap();
        assert!(
            z >= 1 << 32,
            "round {round}: a dead allocator's page {z:#x}"
        );
        drop((b, c));
    }
}

/// The front names a dropped allocator; another allocator's first use of the thread cache
/// (a two-page allocation, which does not touch the front) prunes the dropped one's entry;
/// an allocator made next, often at the dropped one's address, must not get its pages.
#[test]
fn a_dropped_allocators_front_pages_never_reach_one_at_its_address() {
    for round in 0..200u64 {
        let base = (round + 1) << 20;
        let a = IovaAllocator::new(base, base + (1 << 20));
        let x = a.alloc(0x1000, u64::MAX).unwrap();
        a.free(x, 0x1000);
        drop(a);
        let other = IovaAllocator::new(1 << 40, 1 << 41);
        other.alloc(0x2000, u64::MAX).unwrap();
        let next = (round + 300) << 20;
        let n = IovaAllocator::new(next, next + (1 << 20));
        let y = n.alloc(0x1000, u64::MAX).unwrap();
        assert!(
            (next..next + (1 << 20)).contains(&y),
            "round {round}: {y:#x} is a dropped allocator's page"
        );
    }
}

proptest! {
    /// Live allocations never overlap, stay in bounds and under their limit; after freeing
    /// everything and flushing, the space is whole again.
    #[test]
    fn never_overlaps(ops in proptest::collection::vec((1u64..70, any::<bool>(), 20u32..40, any::<prop::sample::Index>()), 1..200)) {
        let a = IovaAllocator::new(0x1000, 1 << 40);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for (pages, alloc, limit_bits, pick) in ops {
            if alloc || live.is_empty() {
                let limit = (1u64 << limit_bits) - 1;
                if let Ok(x) = a.alloc(pages << 12, limit) {
                    let size = class(pages).map_or(pages << 12, |c| (1u64 << c) << 12);
                    prop_assert!(x + size - 1 <= limit && x >= 0x1000);
                    prop_assert!(live.iter().all(|&(s, l)| x + size <= s || s + l <= x), "overlap at {:#x}", x);
                    live.push((x, size));
                }
            } else {
                let (x, size) = live.swap_remove(pick.index(live.len()));
                a.free(x, size);
            }
        }
        for (x, size) in live.drain(..) {
            a.free(x, size);
        }
        a.flush_caches();
        prop_assert_eq!(a.tree_free_bytes(), (1u64 << 40) - 0x1000);
    }
}
