//! The raw system calls of the VFIO path: ioctls on VFIO file descriptors and `mmap` of device
//! regions. Every error names the call and the errno.

use p2p_core::{Error, Result};
use std::os::fd::AsRawFd;
use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`: VFIO's ioctls carry no size or direction in their number.
pub(crate) const fn io(nr: u32) -> libc::c_ulong {
    (((VFIO_TYPE as u32) << 8) | (VFIO_BASE + nr)) as libc::c_ulong
}

pub(super) const GET_API_VERSION: libc::c_ulong = io(0);
pub(super) const CHECK_EXTENSION: libc::c_ulong = io(1);
pub(super) const SET_IOMMU: libc::c_ulong = io(2);
pub(super) const GROUP_GET_STATUS: libc::c_ulong = io(3);
pub(super) const GROUP_SET_CONTAINER: libc::c_ulong = io(4);
pub(super) const GROUP_GET_DEVICE_FD: libc::c_ulong = io(6);
pub(super) const DEVICE_GET_INFO: libc::c_ulong = io(7);
pub(super) const DEVICE_GET_REGION_INFO: libc::c_ulong = io(8);
pub(super) const DEVICE_RESET: libc::c_ulong = io(11);
pub(super) const IOMMU_GET_INFO: libc::c_ulong = io(12);
pub(super) const IOMMU_MAP_DMA: libc::c_ulong = io(13);
pub(super) const IOMMU_UNMAP_DMA: libc::c_ulong = io(14);

/// An error naming the ioctl (or call), what it was applied to, and the errno.
pub(crate) fn os_err(call: &'static str, on: &str, e: std::io::Error) -> Error {
    Error::os(call, on, e)
}

fn check(ret: libc::c_int, call: &'static str, on: &str) -> Result<libc::c_int> {
    if ret < 0 {
        Err(os_err(call, on, std::io::Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

/// An ioctl whose argument is a value.
pub(crate) fn ioctl_val(
    fd: &impl AsRawFd,
    req: libc::c_ulong,
    arg: libc::c_ulong,
    call: &'static str,
    on: &str,
) -> Result<libc::c_int> {
    // SAFETY: the VFIO ioctls passed here (GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU,
    // DEVICE_RESET) take an integer argument, not a pointer: no memory is read or written.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) }, call, on)
}

/// An ioctl whose argument points at `arg`.
///
/// # Safety
/// `req` must be an ioctl that reads and writes at most `size_of::<T>()` bytes at its argument
/// (for VFIO: the struct's `argsz`, which the caller sets to no more than that).
pub(crate) unsafe fn ioctl_ptr<T>(
    fd: &impl AsRawFd,
    req: libc::c_ulong,
    arg: *mut T,
    call: &'static str,
    on: &str,
) -> Result<libc::c_int> {
    // SAFETY: the caller's contract: arg is valid for what req touches.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) }, call, on)
}

/// A device region mapped into this process (`mmap` of the VFIO device fd at the region's
/// offset). Unmapped on drop. Reads and writes are volatile and bounds-checked: the memory is a
/// device's.
#[derive(Debug)]
pub struct MappedRegion {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping belongs to this value alone; MMIO has no thread affinity.
unsafe impl Send for MappedRegion {}
// SAFETY: every access is a volatile read or write of a whole aligned word; concurrent accesses
// are what concurrent MMIO is, with no Rust references into the memory handed out.
unsafe impl Sync for MappedRegion {}

impl MappedRegion {
    pub(super) fn map(fd: &impl AsRawFd, offset: u64, len: u64, on: &str) -> Result<Self> {
        let len = usize::try_from(len).map_err(|_| Error::AddressOverflow {
            kind: "region",
            addr: offset,
            len,
        })?;
        let off = libc::off_t::try_from(offset).map_err(|_| Error::AddressOverflow {
            kind: "region offset",
            addr: offset,
            len: len as u64,
        })?;
        // SAFETY: a new shared mapping of the device fd at an address the kernel chooses aliases
        // no Rust object; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_err("mmap", on, std::io::Error::last_os_error()));
        }
        Ok(Self { ptr: p.cast(), len })
    }

    /// The virtual address of its first byte (what VFIO's `MAP_DMA` takes for peer-to-peer).
    pub fn va(&self) -> u64 {
        self.ptr as u64
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Never: regions are at least a page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, offset: u64, size: usize) -> Result<*mut u8> {
        let ok = offset % size as u64 == 0
            && offset
                .checked_add(size as u64)
                .is_some_and(|end| end <= self.len as u64);
        if !ok {
            return Err(Error::OutOfBounds {
                kind: "region offset",
                start: offset,
                len: size as u64,
                limit_start: 0,
                limit_len: self.len as u64,
            });
        }
        // SAFETY: offset + size <= len, so the pointer stays inside the mapping.
        Ok(unsafe { self.ptr.add(offset as usize) })
    }

    /// A 32-bit read at an aligned offset.
    pub fn read_u32(&self, offset: u64) -> Result<u32> {
        let p = self.at(offset, 4)?;
        // SAFETY: inside the mapping and 4-byte aligned (the mapping is page aligned).
        Ok(unsafe { p.cast::<u32>().read_volatile() })
    }

    /// A 32-bit write at an aligned offset.
    pub fn write_u32(&self, offset: u64, v: u32) -> Result<()> {
        let p = self.at(offset, 4)?;
        // SAFETY: as in read_u32.
        unsafe { p.cast::<u32>().write_volatile(v) };
        Ok(())
    }

    /// A 64-bit read at an aligned offset (one 8-byte access).
    pub fn read_u64(&self, offset: u64) -> Result<u64> {
        let p = self.at(offset, 8)?;
        // SAFETY: inside the mapping and 8-byte aligned.
        Ok(unsafe { p.cast::<u64>().read_volatile() })
    }

    /// A 64-bit write at an aligned offset (one 8-byte access).
    pub fn write_u64(&self, offset: u64, v: u64) -> Result<()> {
        let p = self.at(offset, 8)?;
        // SAFETY: as in read_u64.
        unsafe { p.cast::<u64>().write_volatile(v) };
        Ok(())
    }

    /// Copies bytes out, one 32-bit read at a time (`offset` and the length 4-byte aligned).
    pub fn read_bytes(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        for (i, word) in out.chunks_mut(4).enumerate() {
            let v = self.read_u32(offset + 4 * i as u64)?.to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        Ok(())
    }

    /// Copies bytes in, one 32-bit write at a time (`offset` and the length 4-byte aligned).
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<()> {
        if data.len() % 4 != 0 {
            return Err(Error::Misaligned {
                what: "region write length",
                value: data.len() as u64,
                align: 4,
            });
        }
        for (i, word) in data.chunks(4).enumerate() {
            let v = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            self.write_u32(offset + 4 * i as u64, v)?;
        }
        Ok(())
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by self; no pointer into it outlives self.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}
