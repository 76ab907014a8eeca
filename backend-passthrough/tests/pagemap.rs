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

/// A memfd buffer: its chunks carry the memfd at their own offsets, their PFNs are the mapping's
/// (checked with the independent reader), and bytes written through the mapping are the file's.
#[test]
fn a_memfd_buffer_hands_out_its_file_with_each_chunk() {
    let len = 16 * PAGE;
    if !is_root() {
        let err = LockedHostMemory::memfd(len, 0).unwrap_err().to_string();
        assert!(err.contains("CAP_SYS_ADMIN"), "{err}");
        return;
    }
    let host = LockedHostMemory::memfd(len, 0).unwrap();
    assert_eq!(host.backing(), Backing::Memfd);
    let memfd = host.file().expect("a memfd buffer has its file").clone();
    let pagemap = File::open("/proc/self/pagemap").unwrap();
    let grant = host
        .export(
            AddrRange::new(Offset(3 * PAGE + 100), 5 * PAGE).unwrap(),
            false,
        )
        .unwrap();
    let chunks = host.chunks(&grant).unwrap();
    let mut covered = 0;
    for c in &chunks {
        let f = c.file.as_ref().expect("every chunk carries the memfd");
        assert!(std::sync::Arc::ptr_eq(&f.file, &memfd));
        assert_eq!(
            f.offset, c.offset.0,
            "the file offset is the chunk's offset"
        );
        for p in 0..c.len / PAGE {
            let va = host.va() + c.offset.0 + p * PAGE;
            assert_eq!(pfn(&pagemap, va) * PAGE, c.phys.0 + p * PAGE);
        }
        covered += c.len;
    }
    assert_eq!(chunks[0].offset.0, 3 * PAGE);
    assert_eq!(covered, 6 * PAGE, "the pages the range touches, exactly");
    host.write(5 * PAGE + 8, b"through the mapping").unwrap();
    let mut seen = [0u8; 19];
    memfd.read_exact_at(&mut seen, 5 * PAGE + 8).unwrap();
    assert_eq!(&seen, b"through the mapping");
    host.release(&grant).unwrap();
    // An ordinary buffer carries no file.
    let plain = LockedHostMemory::new(PAGE, 0).unwrap();
    let g = plain
        .export(AddrRange::new(Offset(0), PAGE).unwrap(), false)
        .unwrap();
    assert!(plain.chunks(&g).unwrap().iter().all(|c| c.file.is_none()));
}
