//! loom model of the lock-free page table's table install vs unlink protocol (see the
//! `pagetable` module): a mapper installing into a table while another thread unlinks that table
//! because it is empty, so that it can put a 2 MiB block in its place.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p backend-iommu --release --test loom_pagetable`
//! (CI runs it; the default preemption bound is 2: each unlink scans 512 entries, and every scan
//! is a point where loom may switch threads; 3 for the frames' grace periods, which scan nothing).
#![cfg(loom)]

use backend_iommu::{PageTable, VtdSecondLevel};
use loom::sync::Arc;
use p2p_core::access::Access;

const SZ_4K: u64 = 4096;
const SZ_2M: u64 = 2 << 20;
const BASE: u64 = 0x4000_0000;
const RW: Access = Access::READ.union(Access::WRITE);

fn model(f: impl Fn() + Sync + Send + 'static) {
    model_preempting(2, f);
}

/// [`model`] with `bound` preemptions unless `LOOM_MAX_PREEMPTIONS` says otherwise.
fn model_preempting(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = b.preemption_bound.or(Some(bound));
    b.max_branches = 100_000;
    b.check(f);
}

/// An empty last-level table is linked below `BASE` (a page was mapped and unmapped there). One
/// thread maps a 2 MiB block at `BASE`, which must unlink the empty table first; another maps a
/// 4 KiB page inside the same 2 MiB. Exactly one wins, and what the winner mapped translates: a
/// page installed into a table that is being unlinked is never lost.
#[test]
fn a_page_installed_while_its_table_is_unlinked_is_never_lost() {
    model(|| {
        let t = Arc::new(PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap());
        t.map(BASE, 0x10_0000, SZ_4K, RW, false).unwrap();
        assert_eq!(t.unmap(BASE, SZ_4K).unwrap(), SZ_4K);
        let block = {
            let t = t.clone();
            loom::thread::spawn(move || t.map(BASE, 0x4000_0000, SZ_2M, RW, false).is_ok())
        };
        let page = t.map(BASE + SZ_4K, 0x20_0000, SZ_4K, RW, false).is_ok();
        let block = block.join().unwrap();
        assert!(
            block ^ page,
            "exactly one of two overlapping maps wins ({block}, {page})"
        );
        let leaf = t
            .translate(BASE + SZ_4K)
            .expect("the winner's mapping translates");
        if page {
            assert_eq!((leaf.size, leaf.phys), (SZ_4K, 0x20_0000));
        } else {
            assert_eq!((leaf.size, leaf.phys), (SZ_2M, 0x4000_0000));
        }
        // Everything unmapped and reclaimed, no table is left but the root.
        let whole = if page {
            (BASE + SZ_4K, SZ_4K)
        } else {
            (BASE, SZ_2M)
        };
        assert_eq!(t.unmap(whole.0, whole.1).unwrap(), whole.1);
        t.reclaim();
        t.release_freelist();
        assert_eq!(t.live_frames(), 1);
    });
}

/// An empty level-1 table (2 MiB entries) is linked below `BASE_1G` (a 2 MiB block was mapped
/// and unmapped there). One thread maps a 1 GiB block, which unlinks that table; another maps a
/// 4 KiB page in the same 1 GiB, which installs a new last-level table into it. The mapper may
/// read the link to the level-1 table just before the unlinker marks it and install into the
/// table after the unlinker found it empty: its own table's link stays intact, so only a check
/// of the whole path tells it the mapping is unreachable. Exactly one wins, the winner's mapping
/// translates, and no table is left behind.
#[test]
fn a_table_installed_into_an_unlinked_table_is_never_lost() {
    const SZ_1G: u64 = 1 << 30;
    const BASE_1G: u64 = 4 * SZ_1G;
    model(|| {
        let t = Arc::new(PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap());
        t.map(BASE_1G, 0x4000_0000, SZ_2M, RW, false).unwrap();
        assert_eq!(t.unmap(BASE_1G, SZ_2M).unwrap(), SZ_2M);
        let block = {
            let t = t.clone();
            loom::thread::spawn(move || t.map(BASE_1G, 0x8000_0000, SZ_1G, RW, false).is_ok())
        };
        let page = t.map(BASE_1G + SZ_4K, 0x20_0000, SZ_4K, RW, false).is_ok();
        let block = block.join().unwrap();
        assert!(
            block ^ page,
            "exactly one of two overlapping maps wins ({block}, {page})"
        );
        let leaf = t
            .translate(BASE_1G + SZ_4K)
            .expect("the winner's mapping translates");
        if page {
            assert_eq!((leaf.size, leaf.phys), (SZ_4K, 0x20_0000));
        } else {
            assert_eq!((leaf.size, leaf.phys), (SZ_1G, 0x8000_0000));
        }
        let whole = if page {
            (BASE_1G + SZ_4K, SZ_4K)
        } else {
            (BASE_1G, SZ_1G)
        };
        assert_eq!(t.unmap(whole.0, whole.1).unwrap(), whole.1);
        t.reclaim();
        t.release_freelist();
        assert_eq!(t.live_frames(), 1, "no table is left behind");
    });
}

/// A page is mapped in `BASE`'s last-level table. One thread unmaps it (the one-page fast path:
/// a walk and one compare-and-swap); another maps a 2 MiB block over the same 2 MiB, which can
/// only succeed by unlinking the table once it is empty. Either the block finds the page and
/// fails, or it finds the table empty and replaces it; the unmap removes exactly the page either
/// way, and nothing else is lost.
#[test]
fn a_page_unmapped_while_a_block_replaces_its_table_ends_in_one_state() {
    model(|| {
        let t = Arc::new(PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap());
        t.map(BASE, 0x10_0000, SZ_4K, RW, false).unwrap();
        let block = {
            let t = t.clone();
            loom::thread::spawn(move || t.map(BASE, 0x4000_0000, SZ_2M, RW, false).is_ok())
        };
        let unmapped = t.unmap(BASE, SZ_4K).unwrap();
        let block = block.join().unwrap();
        if block {
            // The block replaced the table, so the page was unmapped before it.
            assert_eq!(unmapped, SZ_4K, "the block went in over a live page");
            let leaf = t.translate(BASE).expect("the block translates");
            assert_eq!((leaf.size, leaf.phys), (SZ_2M, 0x4000_0000));
            assert_eq!(t.unmap(BASE, SZ_2M).unwrap(), SZ_2M);
        } else {
            // The block found the page; the unmap took it.
            assert_eq!(unmapped, SZ_4K, "the page was not unmapped");
            assert_eq!(t.translate(BASE), None);
        }
        t.reclaim();
        t.release_freelist();
        assert_eq!(t.live_frames(), 1, "a table was left behind");
    });
}

/// A last-level table holds 511 pages and one hole at its end. One thread unmaps the whole
/// 2 MiB, which detaches the table whole if its scan finds every entry a leaf; another maps the
/// hole at the same time (the callers' race: a map inside a range being unmapped). Whatever the
/// order, the table stays consistent: the unmap removes every page but possibly the racing one,
/// the racing page is either unmapped or maps where it should, and no table is lost.
#[test]
fn a_page_mapped_into_a_subtree_being_detached_leaves_the_table_consistent() {
    model(|| {
        let t = Arc::new(PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap());
        let last = BASE + SZ_2M - SZ_4K;
        t.map(BASE, 0x4000_0000, SZ_2M - SZ_4K, RW, false).unwrap();
        let racer = {
            let t = t.clone();
            loom::thread::spawn(move || t.map(last, 0x9000_0000, SZ_4K, RW, false))
        };
        let unmapped = t.unmap(BASE, SZ_2M).unwrap();
        racer.join().unwrap().expect("the hole was free");
        assert!(
            unmapped == SZ_2M || unmapped == SZ_2M - SZ_4K,
            "unmapped {unmapped:#x}"
        );
        assert_eq!(t.translate(BASE), None, "the unmap left a page it owned");
        match t.translate(last) {
            Some(leaf) => assert_eq!((leaf.size, leaf.phys), (SZ_4K, 0x9000_0000)),
            None => assert_eq!(unmapped, SZ_2M, "the racing page vanished uncounted"),
        }
        t.unmap(last, SZ_4K).unwrap();
        t.reclaim();
        t.release_freelist();
        assert_eq!(t.live_frames(), 1, "a table was left behind");
    });
}

/// A level-1 table holds 511 blocks and a hole. One thread maps the hole's 2 MiB as 4 KiB pages,
/// which installs a new last-level table into it; another unmaps the whole 1 GiB, which detaches
/// the level-1 table whole once its scan finds every entry a leaf, the new table included. The
/// mapper whose path broke takes out the table it installed; the detach retires the tables whose
/// links it clears. Whatever the order, each table is retired once: after the cleanup only the
/// root is live (a table retired twice would count one frame too few).
#[test]
fn a_table_installed_into_a_subtree_being_detached_is_retired_once() {
    const SZ_1G: u64 = 1 << 30;
    const BASE_1G: u64 = 1 << 30;
    model(|| {
        let t = Arc::new(PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap());
        let hole = BASE_1G + SZ_1G - SZ_2M;
        t.map(BASE_1G, 0x4000_0000, SZ_1G - SZ_2M, RW, false)
            .unwrap();
        let mapper = {
            let t = t.clone();
            loom::thread::spawn(move || t.map(hole, 0x1_0000_1000, SZ_2M, RW, false))
        };
        let unmapped = t.unmap(BASE_1G, SZ_1G).unwrap();
        mapper.join().unwrap().expect("the hole was free");
        assert!(
            unmapped == SZ_1G || unmapped == SZ_1G - SZ_2M,
            "{unmapped:#x}"
        );
        assert_eq!(t.translate(BASE_1G), None, "the unmap left a block");
        // Whatever of the racing map survived, take it out; then only the root stays.
        t.unmap(hole, SZ_2M).unwrap();
        t.reclaim();
        t.release_freelist();
        assert_eq!(t.live_frames(), 1, "a table retired twice, or left behind");
    });
}

/// A reclaim (the full flush's sweep for empty tables) runs while an unmap detaches a subtree
/// of full tables. The reclaim may mark a link inside the subtree, to look at a table, just when
/// the detach takes that link: the detach waits for the reclaim's verdict instead of giving the
/// table up, so every table is retired once and none is left behind.
#[test]
fn a_reclaim_racing_a_detach_leaves_no_table_behind() {
    const SZ_1G: u64 = 1 << 30;
    const BASE_1G: u64 = 1 << 30;
    model(|| {
        let t = Arc::new(PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap());
        // One last-level table full of pages, under a level-1 table whose other entries are
        // blocks: the detach of the 1 GiB takes both tables, through one inner link.
        t.map(BASE_1G, 0x4000_0000, SZ_1G - SZ_2M, RW, false)
            .unwrap();
        t.map(BASE_1G + SZ_1G - SZ_2M, 0x1_0000_1000, SZ_2M, RW, false)
            .unwrap();
        let reclaim = {
            let t = t.clone();
            loom::thread::spawn(move || t.reclaim())
        };
        assert_eq!(t.unmap(BASE_1G, SZ_1G).unwrap(), SZ_1G);
        reclaim.join().unwrap();
        assert_eq!(t.translate(BASE_1G + SZ_1G - SZ_4K), None);
        t.reclaim();
        t.release_freelist();
        assert_eq!(
            t.live_frames(),
            1,
            "a table was left behind, or retired twice"
        );
    });
}

/// Two unmaps over one subtree (the callers' race: both claim the range): one detaches the
/// whole 1 GiB, the other the 2 MiB of small pages inside it, which it may reach through the
/// detached tables. Whoever clears a table's link retires it, and only one can: every table is
/// retired once and nothing stays mapped.
#[test]
fn overlapping_unmaps_that_detach_retire_each_table_once() {
    const SZ_1G: u64 = 1 << 30;
    const BASE_1G: u64 = 1 << 30;
    model(|| {
        let t = Arc::new(PageTable::<VtdSecondLevel>::new(0x7f00_0000_0000).unwrap());
        let small = BASE_1G + SZ_1G - SZ_2M;
        t.map(BASE_1G, 0x4000_0000, SZ_1G - SZ_2M, RW, false)
            .unwrap();
        t.map(small, 0x1_0000_1000, SZ_2M, RW, false).unwrap();
        let inner = {
            let t = t.clone();
            loom::thread::spawn(move || t.unmap(small, SZ_2M).unwrap())
        };
        let whole = t.unmap(BASE_1G, SZ_1G).unwrap();
        let inner = inner.join().unwrap();
        assert!(whole == SZ_1G || whole == SZ_1G - SZ_2M, "{whole:#x}");
        assert!(inner <= SZ_2M, "{inner:#x}");
        assert_eq!(t.translate(BASE_1G), None);
        assert_eq!(t.translate(small), None);
        t.reclaim();
        t.release_freelist();
        assert_eq!(
            t.live_frames(),
            1,
            "a table was left behind, or retired twice"
        );
    });
}

/// The grace periods of the frames (the `grace` module): a walker pins, reads the link to a
/// table and then the table; meanwhile the table is unlinked, retired with its entries in place,
/// and the arena asked for frames, each of which then gets a new entry. With `advancer`, a third
/// thread retires a frame of its own at the same time, so the epoch also moves between the
/// walker's steps and between an advance's check and its swap. The walker, if it read the link
/// before the unlink, must still find the old entry: a frame is never handed out again while a
/// walk that could have reached it runs. Three preemptions by default (a few seconds); CI runs
/// the `advancer` model at five as well, the fewest that find a pin which does not re-read the
/// epoch after counting itself (the `grace` module says why it must).
fn frame_reuse_under_a_walk(advancer: bool) {
    use backend_iommu::frames::{Frames, Retired};
    use loom::sync::atomic::{AtomicU64, Ordering::SeqCst};
    const OLD: u64 = 0x1111_1003;
    const NEW: u64 = 0x2222_2003;
    model_preempting(3, move || {
        let frames = Arc::new(Frames::new(0x7f00_0000_0000).unwrap());
        let table = frames.alloc(0).unwrap();
        let other = frames.alloc(0).unwrap();
        // The arena's other frames are in use: a new table can only be a retired one.
        while frames.alloc(0).is_ok() {}
        frames.table(table)[0].store(OLD, SeqCst);
        let link = Arc::new(AtomicU64::new(frames.phys(table)));
        let walker = {
            let (frames, link) = (frames.clone(), link.clone());
            loom::thread::spawn(move || {
                let _walking = frames.pin();
                let phys = link.load(SeqCst);
                if phys != 0 {
                    assert_eq!(frames.read_phys(phys), OLD, "the walk read a reused frame");
                }
            })
        };
        let retire = |frame| vec![Retired { frame, dirty: true }];
        let advancing = advancer.then(|| {
            let frames = frames.clone();
            loom::thread::spawn(move || frames.retire_all(retire(other)))
        });
        link.store(0, SeqCst);
        frames.retire_all(retire(table));
        while let Ok(reused) = frames.alloc(0) {
            frames.table(reused)[0].store(NEW, SeqCst);
        }
        walker.join().unwrap();
        if let Some(t) = advancing {
            t.join().unwrap();
        }
    });
}

#[test]
fn a_frame_is_not_reused_under_a_walk() {
    frame_reuse_under_a_walk(false);
}

#[test]
fn a_frame_is_not_reused_under_a_walk_that_pinned_during_an_advance() {
    frame_reuse_under_a_walk(true);
}
