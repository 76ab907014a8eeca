//! Locked host memory translated through /proc/self/pagemap, checked against a reader of the
//! pagemap written here from the kernel's documentation (sharing no code with the library).
//! Reading PFNs needs root (CAP_SYS_ADMIN), as CI has; without it the library must say so.

use backend_passthrough::{Backing, LockedHostMemory};
use p2p_core::addr::{AddrRange, Offset};
use p2p_core::traits::MemoryExporter;
use std::fs::File;
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap()
}

/// The PFN of a virtual page: entry bits 0-54 when bit 63 (present) is set.
fn pfn(pagemap: &File, va: u64) -> u64 {
    let mut b = [0u8; 8];
    pagemap.read_exact_at(&mut b, va / PAGE * 8).unwrap();
    let e = u64::from_le_bytes(b);
    assert!(e >> 63 == 1, "page {va:#x} not present");
    e & ((1 << 55) - 1)
}

#[test]
fn translates_a_locked_buffer_with_consistent_pfns() {
    let len = 4 * HUGE;
    if !is_root() {
        let err = LockedHostMemory::new(len, 0).unwrap_err().to_string();
        assert!(err.contains("CAP_SYS_ADMIN"), "{err}");
        println!("not root: the library refused with: {err}");
        return;
    }
    let mem = LockedHostMemory::new(len, 0).unwrap();
    println!(
        "backing: {:?}, {} bytes at {:#x}",
        mem.backing(),
        mem.len(),
        mem.va()
    );
    let pagemap = File::open("/proc/self/pagemap").unwrap();
    let pfns: Vec<u64> = (0..mem.len() / PAGE)
        .map(|i| pfn(&pagemap, mem.va() + i * PAGE))
        .collect();

    // Every page as the library sees it.
    for (i, &p) in pfns.iter().enumerate() {
        let off = i as u64 * PAGE + 123;
        assert_eq!(mem.phys(Offset(off)).unwrap().0, p * PAGE + 123, "page {i}");
    }

    // Chunks: cover the grant in order, each physically contiguous, maximal.
    let grant = mem
        .export(AddrRange::new(Offset(0), mem.len()).unwrap(), true)
        .unwrap();
    let chunks = mem.chunks(&grant).unwrap();
    let mut next = 0;
    for c in &chunks {
        assert_eq!(c.offset.0, next);
        for k in 0..c.len / PAGE {
            assert_eq!(
                pfns[(c.offset.0 / PAGE + k) as usize] * PAGE,
                c.phys.0 + k * PAGE
            );
        }
        assert_eq!(c.bus.0, c.phys.0, "RAM is not behind a window");
        next += c.len;
    }
    assert_eq!(next, mem.len());
    for w in chunks.windows(2) {
        assert_ne!(
            w[0].phys.0 + w[0].len,
            w[1].phys.0,
            "adjacent chunks must be merged"
        );
    }

    // Two virtual pages of one huge page: PFNs differ by their distance, the first is aligned.
    let per_huge = (HUGE / PAGE) as usize;
    let huge = (0..pfns.len() / per_huge).find(|&h| {
        let run = &pfns[h * per_huge..(h + 1) * per_huge];
        run[0] % per_huge as u64 == 0 && run.windows(2).all(|w| w[1] == w[0] + 1)
    });
    match huge {
        Some(h) => {
            let (a, b) = (h * per_huge + 3, h * per_huge + 300);
            assert_eq!(pfns[b] - pfns[a], (b - a) as u64);
            let chunk = chunks
                .iter()
                .find(|c| c.offset.0 <= a as u64 * PAGE && a as u64 * PAGE < c.offset.0 + c.len)
                .unwrap();
            assert!(chunk.len >= HUGE, "a huge page is one chunk at least");
            println!(
                "huge page at buffer offset {:#x}, pfn {:#x}",
                h as u64 * HUGE,
                pfns[h * per_huge]
            );
        }
        None => {
            assert_ne!(
                mem.backing(),
                Backing::HugeTlb,
                "hugetlbfs pages are always huge"
            );
            // Base pages: find one physically contiguous run of two virtual pages.
            let i = (0..pfns.len() - 1)
                .find(|&i| pfns[i + 1] == pfns[i] + 1)
                .expect("no two virtually adjacent pages are physically adjacent");
            println!("no huge page; contiguous run at page {i}");
        }
    }

    // The bytes are the buffer's.
    mem.write(HUGE + 5, b"p2pdma").unwrap();
    let mut back = [0u8; 6];
    mem.read(HUGE + 5, &mut back).unwrap();
    assert_eq!(&back, b"p2pdma");
    assert!(mem.write(mem.len() - 2, b"abc").is_err());
    mem.release(&grant).unwrap();
    assert!(mem.release(&grant).is_err());
}
