//! Virtual to physical translation through `/proc/self/pagemap`
//! (Documentation/admin-guide/mm/pagemap.rst): one little-endian u64 per virtual page, bit 63
//! "present", bit 62 "swapped", bits 0–54 the page frame number, which reads as zero for a
//! process without `CAP_SYS_ADMIN` (Linux 4.2 and later).

use super::locked::PAGE;
use p2p_core::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const PFN_MASK: u64 = (1 << 55) - 1;

/// An open `/proc/self/pagemap`.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
}

impl Pagemap {
    /// Opens this process's pagemap.
    pub fn open() -> Result<Self> {
        File::open("/proc/self/pagemap")
            .map(|file| Self { file })
            .map_err(|e| Error::os("open", "/proc/self/pagemap", e))
    }

    /// The physical address of the page holding `va` (page aligned).
    pub fn phys_page(&self, va: u64) -> Result<u64> {
        Ok(self.phys_pages(va, 1)?[0])
    }

    /// The physical addresses of `pages` consecutive virtual pages from the one holding `va`,
    /// read with one `pread`.
    pub fn phys_pages(&self, va: u64, pages: usize) -> Result<Vec<u64>> {
        let first = va / PAGE;
        let mut raw = vec![0u8; pages * 8];
        self.file.read_exact_at(&mut raw, first * 8).map_err(|e| {
            let target = format!("/proc/self/pagemap, the entries of {pages} pages from {va:#x}");
            Error::os("pread", target, e)
        })?;
        raw.chunks_exact(8)
            .enumerate()
            .map(|(i, b)| {
                let entry = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                decode((first + i as u64) * PAGE, entry)
            })
            .collect()
    }
}

/// One pagemap entry as a physical page address, or why it has none.
fn decode(va: u64, entry: u64) -> Result<u64> {
    if entry & PRESENT == 0 {
        return Err(Error::Fault {
            va,
            reason: if entry & SWAPPED != 0 {
                "page is swapped out"
            } else {
                "page is not present"
            },
        });
    }
    let pfn = entry & PFN_MASK;
    if pfn == 0 {
        return Err(Error::NeedsPrivilege {
            what: format!("reading the page frame number of {va:#x} from /proc/self/pagemap"),
            privilege: "CAP_SYS_ADMIN",
        });
    }
    Ok(pfn * PAGE)
}
