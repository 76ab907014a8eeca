//! VFIO devices through their cdevs (`/dev/vfio/devices/vfioN`), bound to an iommufd.

use super::ioas::Ioas;
use super::sys::{attach_ioas, bind_iommufd};
use crate::vfio::sys::os_err;
use crate::vfio::VfioDevice;
use p2p_core::{Error, PciAddr, Result, VfioProblem};
use std::fs::OpenOptions;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

/// The cdev of a device bound to vfio-pci: sysfs lists it under `vfio-dev/` (Linux 6.2+ with
/// `CONFIG_VFIO_DEVICE_CDEV`), as `vfioN`, which is `/dev/vfio/devices/vfioN`.
pub fn cdev_of(sys: &Path, device: PciAddr) -> Result<PathBuf> {
    let dir = sys.join(format!("bus/pci/devices/{device}/vfio-dev"));
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        os_err(
            "read_dir",
            &format!(
                "{} (is {device} bound to vfio-pci, on a kernel with VFIO cdevs?)",
                dir.display()
            ),
            e,
        )
    })?;
    for entry in entries {
        let name = entry
            .map_err(|e| os_err("read_dir", &dir.display().to_string(), e))?
            .file_name();
        let name = name.to_string_lossy();
        let digits = name.strip_prefix("vfio").unwrap_or("");
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(PathBuf::from(format!("/dev/vfio/devices/{name}")));
        }
    }
    Err(Error::Vfio {
        target: device.to_string(),
        problem: VfioProblem::NoCdev,
    })
}

/// Opens a device's cdev, binds it to `ioas`'s iommufd and attaches it to `ioas`
/// (`VFIO_DEVICE_BIND_IOMMUFD`, then `VFIO_DEVICE_ATTACH_IOMMUFD_PT`). From then on its DMA
/// goes through the IOAS. Build the [`IommufdDomain`](super::IommufdDomain) after every device
/// is attached: each attach can narrow the usable IOVA ranges.
pub fn open_cdev(sys: &Path, device: PciAddr, ioas: &Ioas) -> Result<VfioDevice> {
    let path = cdev_of(sys, device)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| os_err("open", &path.display().to_string(), e))?;
    let on = format!("{device} ({})", path.display());
    // SAFETY: the iommufd stays open for as long as `ioas` lives, which outlives this call.
    let iommufd = unsafe { BorrowedFd::borrow_raw(ioas.iommufd_fd()) };
    bind_iommufd(&file, &iommufd, &on)?;
    attach_ioas(&file, ioas.id(), &on)?;
    VfioDevice::new(file, device)
}
