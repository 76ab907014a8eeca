//! A VFIO device: its regions (BARs, config space), mapped or accessed through its fd.

use super::sys::{self, ioctl_ptr, ioctl_val, os_err, MappedRegion};
use p2p_core::{Error, PciAddr, Result, VfioProblem};
use parking_lot::Mutex;
use std::fs::File;
use std::os::unix::fs::FileExt;
use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_region_info, VFIO_DEVICE_FLAGS_PCI, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

/// PCI command register bits: memory space and bus master enable.
const COMMAND: u64 = 0x04;
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_MASTER: u16 = 1 << 2;

/// One region of a device (`VFIO_DEVICE_GET_REGION_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index (BARs 0–5, ROM 6, config 7).
    pub index: u32,
    /// Bytes (0 for a BAR the device does not implement).
    pub size: u64,
    /// Where it sits in the device fd.
    pub offset: u64,
    /// Readable through the fd.
    pub readable: bool,
    /// Writable through the fd.
    pub writable: bool,
    /// Can be mmapped.
    pub mmap: bool,
}

/// An open VFIO PCI device.
#[derive(Debug)]
pub struct VfioDevice {
    file: File,
    addr: PciAddr,
    regions: u32,
    /// Held across a read-modify-write of the command register: two racing updates (bus
    /// master on, memory off) must not lose one, as a lost "memory off" would silently undo a
    /// dma-buf revoke.
    command: Mutex<()>,
}

impl VfioDevice {
    pub(crate) fn new(file: File, addr: PciAddr) -> Result<Self> {
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: DEVICE_GET_INFO writes at most argsz bytes: the struct.
        unsafe {
            ioctl_ptr(
                &file,
                sys::DEVICE_GET_INFO,
                &mut info,
                "VFIO_DEVICE_GET_INFO",
                &addr.to_string(),
            )?
        };
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(Error::Vfio {
                target: addr.to_string(),
                problem: VfioProblem::NotPciDevice,
            });
        }
        Ok(Self {
            file,
            addr,
            regions: info.num_regions,
            command: Mutex::new(()),
        })
    }

    /// Its PCI address.
    pub fn addr(&self) -> PciAddr {
        self.addr
    }

    /// A region's size, offset and flags.
    pub fn region(&self, index: u32) -> Result<RegionInfo> {
        if index >= self.regions {
            return Err(Error::Vfio {
                target: self.addr.to_string(),
                problem: VfioProblem::NoRegion {
                    index,
                    regions: self.regions,
                },
            });
        }
        let mut info = vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        let on = format!("{} region {index}", self.addr);
        // SAFETY: DEVICE_GET_REGION_INFO writes at most argsz bytes: the struct (capabilities
        // beyond it are only reported through a larger argsz, which we do not give).
        unsafe {
            ioctl_ptr(
                &self.file,
                sys::DEVICE_GET_REGION_INFO,
                &mut info,
                "VFIO_DEVICE_GET_REGION_INFO",
                &on,
            )?
        };
        Ok(RegionInfo {
            index,
            size: info.size,
            offset: info.offset,
            readable: info.flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: info.flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmap: info.flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
        })
    }

    fn config(&self) -> Result<RegionInfo> {
        self.region(VFIO_PCI_CONFIG_REGION_INDEX)
    }

    /// Reads configuration space.
    pub fn read_config(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let r = self.config()?;
        self.file
            .read_exact_at(out, r.offset + offset)
            .map_err(|e| os_err("pread(config)", &format!("{} at {offset:#x}", self.addr), e))
    }

    /// Writes configuration space (vfio-pci virtualises what a user must not touch).
    pub fn write_config(&self, offset: u64, data: &[u8]) -> Result<()> {
        let r = self.config()?;
        self.file
            .write_all_at(data, r.offset + offset)
            .map_err(|e| {
                os_err(
                    "pwrite(config)",
                    &format!("{} at {offset:#x}", self.addr),
                    e,
                )
            })
    }

    /// Turns on memory decoding and bus mastering (command register bits 1 and 2): without
    /// them the device's DMA goes nowhere, silently.
    pub fn enable_bus_master(&self) -> Result<()> {
        self.update_command(|v| v | COMMAND_MEMORY | COMMAND_MASTER)
    }

    /// Rewrites the command register as `f` says, under the device's command lock.
    fn update_command(&self, f: impl FnOnce(u16) -> u16) -> Result<()> {
        let _held = self.command.lock();
        let mut cmd = [0u8; 2];
        self.read_config(COMMAND, &mut cmd)?;
        let v = f(u16::from_le_bytes(cmd));
        self.write_config(COMMAND, &v.to_le_bytes())
    }

    /// Turns memory decoding (command register bit 1) on or off. Off, the device's BARs answer
    /// nothing; vfio-pci then revokes every dma-buf exported from them, and iommufd unmaps
    /// those from every IOAS (Linux's `vfio_pci_dma_buf_move`): the kernel's revoke.
    pub fn set_memory_enabled(&self, on: bool) -> Result<()> {
        self.update_command(|v| {
            if on {
                v | COMMAND_MEMORY
            } else {
                v & !COMMAND_MEMORY
            }
        })
    }

    /// The device's file, for the calls other modules make on it (iommufd binding, dma-bufs).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Maps a BAR into this process.
    pub fn map_bar(&self, index: u32) -> Result<MappedRegion> {
        let r = self.region(index)?;
        if r.size == 0 || !r.mmap {
            return Err(Error::Vfio {
                target: format!("{} BAR{index}", self.addr),
                problem: VfioProblem::NotMappable {
                    size: r.size,
                    mmap_flag: r.mmap,
                },
            });
        }
        MappedRegion::map(
            &self.file,
            r.offset,
            r.size,
            &format!("{} BAR{index}", self.addr),
        )
    }

    /// Resets the device (function-level or bus reset, as the kernel can).
    pub fn reset(&self) -> Result<()> {
        ioctl_val(
            &self.file,
            sys::DEVICE_RESET,
            0,
            "VFIO_DEVICE_RESET",
            &self.addr.to_string(),
        )
        .map(|_| ())
    }
}
