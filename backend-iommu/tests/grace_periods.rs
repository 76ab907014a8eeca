//! The page-table frames' grace periods under real threads: walkers pin, follow a link to a
//! table and read it twice, while another thread keeps unlinking tables, retiring them with their
//! entries in place and linking new ones (often the same frames, reused). A walker must find the
//! table it reached unchanged for as long as it is pinned, and the arena must count exactly the
//! linked tables after the threads are joined.
//!
//! The loom models in `loom_pagetable.rs` check the protocol step by step on a few frames; this
//! runs it on the real atomics and the real arena for many rounds, bounded in time.

use backend_iommu::frames::{Frames, Retired};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Links the walkers follow: each holds the physical address of a table, or 0 between an
/// unlink and the next link.
const LINKS: usize = 4;

/// What the table linked at `link` for the `round`th time holds in its first entry.
fn stamp(link: usize, round: u64) -> u64 {
    (round << 8) | (link as u64) << 1 | 1
}

#[test]
fn a_walk_never_sees_its_table_reused() {
    let frames = Frames::new(0x7f00_0000_0000).unwrap();
    let links: Vec<AtomicU64> = (0..LINKS)
        .map(|link| {
            let f = frames.alloc(0).unwrap();
            frames.table(f)[0].store(stamp(link, 0), SeqCst);
            AtomicU64::new(frames.phys(f))
        })
        .collect();
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut rounds = 0u64;
    std::thread::scope(|s| {
        for walker in 0..2 {
            let (frames, links, done, reads) = (&frames, &links, &done, &reads);
            s.spawn(move || {
                let mut n = 0u64;
                while !done.load(SeqCst) {
                    let link = (n as usize + walker) % LINKS;
                    let _walking = frames.pin();
                    let phys = links[link].load(SeqCst);
                    n += 1;
                    if phys == 0 {
                        continue;
                    }
                    let first = frames.read_phys(phys);
                    assert_eq!(
                        first & 0xff,
                        stamp(link, 0) & 0xff,
                        "link {link}: {first:#x}"
                    );
                    for _ in 0..(n % 64) {
                        std::hint::spin_loop();
                    }
                    let again = frames.read_phys(phys);
                    assert_eq!(
                        first, again,
                        "link {link}: the table was reused under the walk"
                    );
                }
                reads.fetch_add(n, SeqCst);
            });
        }
        // The retirer: unlink, retire with the entries in place, link a new table.
        while Instant::now() < deadline && rounds < 2_000_000 {
            rounds += 1;
            let link = rounds as usize % LINKS;
            let old = links[link].swap(0, SeqCst);
            frames.retire_all(vec![Retired {
                frame: frames.frame_at(old),
                dirty: true,
            }]);
            let new = frames.alloc(0).expect("retired frames come back");
            frames.table(new)[0].store(stamp(link, rounds), SeqCst);
            links[link].store(frames.phys(new), SeqCst);
        }
        done.store(true, SeqCst);
    });
    assert_eq!(
        frames.live(),
        LINKS,
        "linked tables only, after {rounds} rounds"
    );
    for (link, l) in links.iter().enumerate() {
        let first = frames.read_phys(l.load(SeqCst));
        assert_eq!(first & 0xff, stamp(link, 0) & 0xff);
    }
    assert!(reads.load(SeqCst) > 1000, "the walkers hardly ran");
    assert!(rounds > 1000, "the retirer hardly ran: {rounds} rounds");
}
