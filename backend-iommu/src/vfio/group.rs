//! A VFIO group: the unit of isolation the IOMMU gives (`/dev/vfio/<n>`).

use super::device::VfioDevice;
use super::sys::{self, ioctl_ptr, os_err};
use p2p_core::{Error, PciAddr, Result, VfioProblem};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use vfio_bindings::bindings::vfio::{vfio_group_status, VFIO_GROUP_FLAGS_VIABLE};

/// An open VFIO group.
#[derive(Debug)]
pub struct VfioGroup {
    file: File,
    id: u32,
}

impl VfioGroup {
    /// The IOMMU group of a device, from `<sysfs>/bus/pci/devices/<addr>/iommu_group`.
    pub fn id_of(sysfs: &Path, device: PciAddr) -> Result<u32> {
        let link = sysfs.join(format!("bus/pci/devices/{device}/iommu_group"));
        let target = std::fs::read_link(&link).map_err(|e| Error::Sysfs {
            path: link.display().to_string(),
            message: format!("cannot read link (is an IOMMU on and the device in a group?): {e}"),
        })?;
        target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::Sysfs {
                path: link.display().to_string(),
                message: format!("links to {}, not a group", target.display()),
            })
    }

    /// Opens `/dev/vfio/<id>` and checks that the group is viable (every device in it bound to
    /// a VFIO driver or none).
    pub fn open(id: u32) -> Result<Self> {
        let path = format!("/dev/vfio/{id}");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| os_err("open", &path, e))?;
        let mut status = vfio_group_status {
            argsz: std::mem::size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: GROUP_GET_STATUS writes the struct, whose argsz is its size.
        unsafe {
            ioctl_ptr(
                &file,
                sys::GROUP_GET_STATUS,
                &mut status,
                "VFIO_GROUP_GET_STATUS",
                &path,
            )?
        };
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::Vfio {
                target: path.to_string(),
                problem: VfioProblem::GroupNotViable,
            });
        }
        Ok(Self { file, id })
    }

    /// The group number.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Opens a device of the group. The group must be attached to a container whose IOMMU is
    /// set (the kernel refuses before that).
    pub fn device(&self, addr: PciAddr) -> Result<VfioDevice> {
        let name = addr.to_string();
        let cname = CString::new(name.clone()).unwrap_or_else(|_| unreachable!("no NUL in a BDF"));
        let on = format!("/dev/vfio/{} ({name})", self.id);
        // SAFETY: GROUP_GET_DEVICE_FD reads a NUL-terminated string at its argument, which
        // cname is for the whole call.
        let fd = unsafe {
            ioctl_ptr(
                &self.file,
                sys::GROUP_GET_DEVICE_FD,
                cname.as_ptr().cast_mut(),
                "VFIO_GROUP_GET_DEVICE_FD",
                &on,
            )?
        };
        // SAFETY: the ioctl returned a new file descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        VfioDevice::new(File::from(owned), addr)
    }
}
