//! A buffer of anonymous memory, locked into RAM, backed by huge pages when the machine has them.

use p2p_core::error::IoSource;
use p2p_core::{Error, Result};
use std::sync::Arc;

/// The base page size this crate assumes (x86-64, arm64 with 4 KiB pages); checked against the
/// kernel's at allocation.
pub const PAGE: u64 = 4096;
/// The huge page size tried first (x86-64 PMD).
pub const HUGE_PAGE: u64 = 2 << 20;

/// What backs a [`LockedRegion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// hugetlbfs pages (`MAP_HUGETLB`), reserved by the administrator in
    /// `/proc/sys/vm/nr_hugepages`.
    HugeTlb,
    /// Transparent huge pages requested with `MADV_HUGEPAGE`; the kernel may still use base
    /// pages for some or all of it.
    TransparentHuge,
    /// Base pages.
    Base,
    /// A memfd's pages (shared memory), mapped shared: the kernel can reach them by file.
    Memfd,
}

/// Anonymous memory mapped, locked and touched, so that every page is resident at creation.
/// Unmapped on drop.
#[derive(Debug)]
pub struct LockedRegion {
    ptr: *mut u8,
    len: usize,
    backing: Backing,
}

// SAFETY: the region is plain memory owned by this value alone (no thread-local state); moving
// the owner to another thread is as safe as moving a Vec.
unsafe impl Send for LockedRegion {}
// SAFETY: shared access only reads through &self (as_slice); writes need &mut self.
unsafe impl Sync for LockedRegion {}

fn os_error(what: &'static str, len: usize) -> Error {
    let e = std::io::Error::last_os_error();
    let hint = match e.raw_os_error() {
        Some(libc::ENOMEM) | Some(libc::EPERM) | Some(libc::EAGAIN) if what == "mlock" => {
            " (raise RLIMIT_MEMLOCK, `ulimit -l`, or run with CAP_IPC_LOCK)"
        }
        _ => "",
    };
    Error::Os {
        call: what,
        target: format!("{len:#x} bytes"),
        errno: e.raw_os_error(),
        hint,
        source: Some(IoSource(Arc::new(e))),
    }
}

impl LockedRegion {
    /// Maps `len` bytes (rounded up to a whole huge page when huge pages back it), locks them and
    /// touches every page. Tries hugetlbfs, then transparent huge pages (2 MiB aligned), then base
    /// pages.
    pub fn new(len: u64) -> Result<Self> {
        if len == 0 {
            return Err(Error::EmptyRange {
                what: "locked buffer",
            });
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page != PAGE as libc::c_long {
            return Err(Error::PageSize {
                found: page as u64,
                expected: PAGE,
            });
        }
        let len = usize::try_from(len).map_err(|_| Error::AddressOverflow {
            kind: "locked buffer",
            addr: 0,
            len,
        })?;
        let huge_len =
            len.checked_next_multiple_of(HUGE_PAGE as usize)
                .ok_or(Error::AddressOverflow {
                    kind: "locked buffer",
                    addr: 0,
                    len: len as u64,
                })?;
        let region = match Self::map(huge_len, libc::MAP_HUGETLB) {
            Ok(ptr) => Self {
                ptr,
                len: huge_len,
                backing: Backing::HugeTlb,
            },
            Err(_) => Self::transparent(len, huge_len)?,
        };
        region.lock_and_touch()?;
        Ok(region)
    }

    /// A memfd (`memfd_create`) of `len` bytes (rounded up to a page), mapped shared, locked and
    /// touched; returns the region and the memfd. The same pages can then be named by file
    /// (iommufd's `IOMMU_IOAS_MAP_FILE` pins the file's pages, whatever maps them).
    pub fn memfd(len: u64) -> Result<(Self, std::fs::File)> {
        use std::os::fd::FromRawFd;
        let len = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_next_multiple_of(PAGE as usize))
            .filter(|&l| l > 0)
            .ok_or(Error::AddressOverflow {
                kind: "memfd buffer",
                addr: 0,
                len,
            })?;
        // SAFETY: the name is a NUL-terminated literal; the call creates a new descriptor.
        let fd = unsafe { libc::memfd_create(c"p2pdma-host".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_error("memfd_create", len));
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.set_len(len as u64)
            .map_err(|e| Error::os("ftruncate(memfd)", format!("{len:#x} bytes"), e))?;
        // SAFETY: a new shared mapping of the memfd at an address the kernel chooses aliases no
        // Rust object; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_error("mmap(memfd)", len));
        }
        let region = Self {
            ptr: p.cast(),
            len,
            backing: Backing::Memfd,
        };
        region.lock_and_touch()?;
        Ok((region, file))
    }

    fn map(len: usize, extra_flags: libc::c_int) -> Result<*mut u8> {
        // SAFETY: an anonymous private mapping at an address the kernel chooses aliases no
        // existing Rust object; the result is checked for MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_error("mmap", len));
        }
        Ok(p.cast())
    }

    /// A 2 MiB-aligned mapping advised for transparent huge pages; base pages for buffers smaller
    /// than one huge page.
    fn transparent(len: usize, huge_len: usize) -> Result<Self> {
        if len < HUGE_PAGE as usize {
            return Ok(Self {
                ptr: Self::map(len, 0)?,
                len,
                backing: Backing::Base,
            });
        }
        // Over-allocate by one huge page, then trim both ends to an aligned window.
        let span = huge_len + HUGE_PAGE as usize;
        let raw = Self::map(span, 0)?;
        let addr = raw as usize;
        let aligned = addr.next_multiple_of(HUGE_PAGE as usize);
        let head = aligned - addr;
        let tail = span - head - huge_len;
        // SAFETY: [raw, raw+head) and [aligned+huge_len, raw+span) lie inside the mapping just
        // made and nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(raw.cast(), head);
            }
            if tail > 0 {
                libc::munmap((aligned + huge_len) as *mut libc::c_void, tail);
            }
        }
        let region = Self {
            ptr: aligned as *mut u8,
            len: huge_len,
            backing: Backing::TransparentHuge,
        };
        // SAFETY: the range is the mapping owned by `region`; madvise only changes how the kernel
        // backs it.
        let advised = unsafe { libc::madvise(region.ptr.cast(), region.len, libc::MADV_HUGEPAGE) };
        if advised != 0 {
            // A kernel without THP: the memory is still good, on base pages.
            return Ok(Self {
                backing: Backing::Base,
                ..region
            });
        }
        Ok(region)
    }

    fn lock_and_touch(&self) -> Result<()> {
        // SAFETY: the range is this value's own mapping.
        if unsafe { libc::mlock(self.ptr.cast(), self.len) } != 0 {
            return Err(os_error("mlock", self.len));
        }
        // mlock faults the pages in already; writing makes them private (no shared zero page,
        // whose PFN every untouched page would report).
        let mut off = 0;
        while off < self.len {
            // SAFETY: off < len, inside the mapping, which is readable and writable.
            unsafe { self.ptr.add(off).write_volatile(0) };
            off += PAGE as usize;
        }
        Ok(())
    }

    /// The virtual address of the first byte.
    pub fn va(&self) -> u64 {
        self.ptr as u64
    }

    /// Bytes mapped.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Never: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// What backs it.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is a live, initialised (zero-filled by the kernel) mapping owned by
        // self; the shared borrow of self prevents a concurrent &mut.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and &mut self makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for LockedRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by self and no borrow of it outlives self. munmap also
        // unlocks.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}
