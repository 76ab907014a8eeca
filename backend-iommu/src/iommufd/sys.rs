//! The calls of the iommufd path that the rust-vmm crates do not wrap, defined from the kernel's
//! uapi headers, and the translation of `iommufd-ioctls` errors into typed errors.
//!
//! `iommufd-ioctls` 0.4 covers opening `/dev/iommu` and `IOMMU_IOAS_ALLOC` / `MAP` / `MAP_FILE` /
//! `UNMAP` / `IOMMU_DESTROY`; `iommufd-bindings` 0.2 and `vfio-bindings` 0.7 have every struct.
//! What is left are four ioctl numbers, each `_IO(type, nr)` as the header writes it.

use crate::vfio::sys::{io, ioctl_ptr, os_err};
use iommufd_bindings::iommufd::{
    iommu_ioas_iova_ranges, iommu_iova_range, IOMMUFD_CMD_IOAS_IOVA_RANGES, IOMMUFD_TYPE,
};
use iommufd_ioctls::IommufdError;
use p2p_core::{Error, Result};
use std::os::fd::AsRawFd;
use vfio_bindings::bindings::vfio::{
    vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_device_feature,
    vfio_device_feature_dma_buf, vfio_region_dma_range, VFIO_DEVICE_FEATURE_DMA_BUF,
    VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE,
};

/// `IOMMU_IOAS_IOVA_RANGES`: `_IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)`
/// (include/uapi/linux/iommufd.h).
const IOAS_IOVA_RANGES: libc::c_ulong =
    ((IOMMUFD_TYPE as libc::c_ulong) << 8) | IOMMUFD_CMD_IOAS_IOVA_RANGES as libc::c_ulong;
/// `VFIO_DEVICE_FEATURE`: `_IO(VFIO_TYPE, VFIO_BASE + 17)` (include/uapi/linux/vfio.h).
const DEVICE_FEATURE: libc::c_ulong = io(17);
/// `VFIO_DEVICE_BIND_IOMMUFD`: `_IO(VFIO_TYPE, VFIO_BASE + 18)` (include/uapi/linux/vfio.h).
const DEVICE_BIND_IOMMUFD: libc::c_ulong = io(18);
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: `_IO(VFIO_TYPE, VFIO_BASE + 19)` (include/uapi/linux/vfio.h).
const DEVICE_ATTACH_IOMMUFD_PT: libc::c_ulong = io(19);

/// More ranges than any IOMMU reports (VT-d gives two or three): a reply asking for more is
/// refused rather than allocated for.
const MAX_IOVA_RANGES: u32 = 4096;

/// An `iommufd-ioctls` error as a typed OS error: the call, what it was applied to, the errno.
pub(crate) fn from_ioctls(call: &'static str, on: &str, e: IommufdError) -> Error {
    let errno = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<vmm_sys_util::errno::Error>())
        .map(|s| s.errno());
    let io = match (errno, &e) {
        (Some(n), _) => std::io::Error::from_raw_os_error(n),
        (None, IommufdError::OpenIommufd(io)) => std::io::Error::new(io.kind(), io.to_string()),
        (None, other) => std::io::Error::other(other.to_string()),
    };
    os_err(call, on, io)
}

/// The IOAS's usable IOVA ranges (inclusive pairs, as the kernel gives them) and the alignment
/// every map must keep.
pub(crate) fn iova_ranges(iommufd: &impl AsRawFd, ioas_id: u32) -> Result<(Vec<(u64, u64)>, u64)> {
    let on = format!("IOAS {ioas_id}");
    let mut room = 8u32;
    loop {
        let mut ranges = vec![iommu_iova_range::default(); room as usize];
        let mut cmd = iommu_ioas_iova_ranges {
            size: std::mem::size_of::<iommu_ioas_iova_ranges>() as u32,
            ioas_id,
            num_iovas: room,
            __reserved: 0,
            allowed_iovas: ranges.as_mut_ptr() as u64,
            out_iova_alignment: 0,
        };
        // SAFETY: IOAS_IOVA_RANGES reads and writes `cmd` (its size field says how much) and
        // writes at most `num_iovas` ranges at `allowed_iovas`, which points at `ranges`,
        // `room` entries long and alive across the call.
        let r = unsafe {
            ioctl_ptr(
                iommufd,
                IOAS_IOVA_RANGES,
                &mut cmd,
                "IOMMU_IOAS_IOVA_RANGES",
                &on,
            )
        };
        match r {
            Ok(_) => {
                let n = cmd.num_iovas.min(room) as usize;
                let list = ranges[..n].iter().map(|r| (r.start, r.last)).collect();
                return Ok((list, cmd.out_iova_alignment));
            }
            // EMSGSIZE: the kernel wrote how many there are; ask again with room for them.
            Err(Error::Os { errno, .. })
                if errno == Some(libc::EMSGSIZE) && cmd.num_iovas > room =>
            {
                if cmd.num_iovas > MAX_IOVA_RANGES {
                    return Err(Error::KernelReply {
                        call: "IOMMU_IOAS_IOVA_RANGES",
                        detail: format!("{} ranges (more than {MAX_IOVA_RANGES})", cmd.num_iovas),
                    });
                }
                room = cmd.num_iovas;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Binds a VFIO device cdev to an iommufd (`VFIO_DEVICE_BIND_IOMMUFD`): the device's DMA is then
/// governed by that iommufd. Returns the device's id in it.
pub(crate) fn bind_iommufd(device: &impl AsRawFd, iommufd: &impl AsRawFd, on: &str) -> Result<u32> {
    let mut bind = vfio_device_bind_iommufd {
        argsz: std::mem::size_of::<vfio_device_bind_iommufd>() as u32,
        flags: 0,
        iommufd: iommufd.as_raw_fd(),
        out_devid: 0,
        token_uuid_ptr: 0,
    };
    // SAFETY: BIND_IOMMUFD reads argsz bytes of `bind` and writes out_devid inside it; no token
    // pointer is passed (0).
    unsafe {
        ioctl_ptr(
            device,
            DEVICE_BIND_IOMMUFD,
            &mut bind,
            "VFIO_DEVICE_BIND_IOMMUFD",
            on,
        )?
    };
    Ok(bind.out_devid)
}

/// Attaches a bound device to an IOAS (`VFIO_DEVICE_ATTACH_IOMMUFD_PT` with the IOAS's id: the
/// kernel makes or reuses a hardware page table for it).
pub(crate) fn attach_ioas(device: &impl AsRawFd, ioas_id: u32, on: &str) -> Result<()> {
    let mut attach = vfio_device_attach_iommufd_pt {
        argsz: std::mem::size_of::<vfio_device_attach_iommufd_pt>() as u32,
        flags: 0,
        pt_id: ioas_id,
        pasid: 0,
    };
    // SAFETY: ATTACH_IOMMUFD_PT reads argsz bytes of `attach` and may write pt_id inside it.
    unsafe {
        ioctl_ptr(
            device,
            DEVICE_ATTACH_IOMMUFD_PT,
            &mut attach,
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
            on,
        )?
    };
    Ok(())
}

/// `VFIO_DEVICE_FEATURE_DMA_BUF`'s argument with its one range, laid out as the kernel reads
/// it: the feature header, the dma-buf request, then the range array.
#[repr(C)]
#[derive(Default)]
struct DmaBufRequest {
    feature: vfio_device_feature,
    dma_buf: vfio_device_feature_dma_buf,
    range: vfio_region_dma_range,
}

/// Exports `[offset, offset + len)` of region (BAR) `index` of a VFIO device as a dma-buf
/// (`VFIO_DEVICE_FEATURE` with `GET | DMA_BUF`, one range). Returns the new dma-buf's file.
pub(crate) fn export_dma_buf(
    device: &impl AsRawFd,
    index: u32,
    offset: u64,
    len: u64,
    on: &str,
) -> Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    let mut req = DmaBufRequest::default();
    req.feature.argsz = std::mem::size_of::<DmaBufRequest>() as u32;
    req.feature.flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF;
    req.dma_buf.region_index = index;
    req.dma_buf.open_flags = (libc::O_RDWR | libc::O_CLOEXEC) as u32;
    req.dma_buf.nr_ranges = 1;
    req.range = vfio_region_dma_range {
        offset,
        length: len,
    };
    // SAFETY: VFIO_DEVICE_FEATURE reads argsz bytes from `req`: the header, the request and
    // nr_ranges (1) ranges, which is exactly the struct (repr(C), fields in the kernel's order).
    let fd = unsafe {
        ioctl_ptr(
            device,
            DEVICE_FEATURE,
            &mut req,
            "VFIO_DEVICE_FEATURE(DMA_BUF)",
            on,
        )?
    };
    // SAFETY: on success the ioctl returns a new file descriptor that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Whether the kernel can export this device's BARs as dma-bufs (`VFIO_DEVICE_FEATURE` with
/// `PROBE | GET | DMA_BUF`: Linux 6.19 and later). `ENOTTY` (a kernel that does not know the
/// feature) and `EOPNOTSUPP` (a driver that cannot) are a plain no.
pub(crate) fn probe_dma_buf(device: &impl AsRawFd, on: &str) -> Result<bool> {
    let mut req = DmaBufRequest::default();
    req.feature.argsz = std::mem::size_of::<DmaBufRequest>() as u32;
    req.feature.flags =
        VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF;
    // SAFETY: with PROBE the kernel reads only the feature header of `req` (argsz bytes at most,
    // the whole struct) and writes nothing.
    let r = unsafe {
        ioctl_ptr(
            device,
            DEVICE_FEATURE,
            &mut req,
            "VFIO_DEVICE_FEATURE(PROBE DMA_BUF)",
            on,
        )
    };
    match r {
        Ok(_) => Ok(true),
        Err(Error::Os { errno: Some(e), .. }) if e == libc::ENOTTY || e == libc::EOPNOTSUPP => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
