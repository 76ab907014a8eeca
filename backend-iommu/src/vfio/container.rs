//! The VFIO container: one IOMMU context (type1v2) that groups join, and the DMA map of it.

use super::group::VfioGroup;
use super::sys::{self, ioctl_ptr, ioctl_val, os_err};
use p2p_core::access::Access;
use p2p_core::{Error, Result, VfioProblem};
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_iommu_type1_info,
    VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
};

/// What the container's IOMMU offers (`VFIO_IOMMU_GET_INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuInfo {
    /// Supported page sizes (a bitmap of sizes, as `iova_pgsizes`).
    pub page_sizes: u64,
    /// The usable IOVA ranges, inclusive at both ends, in order. Outside them: reserved
    /// (the MSI window, host-bridge windows, the top of a narrow address width).
    pub iova_ranges: Vec<(u64, u64)>,
}

/// Parses the `VFIO_IOMMU_GET_INFO` reply: the fixed struct, then the capability chain from
/// `cap_offset`. A reply without the IOVA-range capability (kernels before 5.4) gives one range
/// covering the 64-bit space, as the kernel then imposes none.
pub fn parse_iommu_info(reply: &[u8]) -> Result<IommuInfo> {
    let bad = |why: String| Error::KernelReply {
        call: "VFIO_IOMMU_GET_INFO",
        detail: why,
    };
    let u32_at = |off: usize| -> Result<u32> {
        reply
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad(format!("truncated at {off:#x}")))
    };
    let u64_at = |off: usize| -> Result<u64> {
        Ok(u64::from(u32_at(off)?) | (u64::from(u32_at(off + 4)?) << 32))
    };
    let flags = u32_at(4)?;
    let page_sizes = if flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
        u64_at(8)?
    } else {
        4096
    };
    let mut ranges = Vec::new();
    if flags & VFIO_IOMMU_INFO_CAPS != 0 {
        let mut off = u32_at(16)? as usize;
        // Each header is at least 8 bytes and must move forward: the walk ends.
        let mut hops = 0;
        while off != 0 {
            hops += 1;
            if hops > 64 || off < 24 {
                return Err(bad(format!(
                    "capability chain loops or points back ({off:#x})"
                )));
            }
            let header = u32_at(off)?;
            let id = header & 0xffff;
            let next = u32_at(off + 4)? as usize;
            if id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
                let n = u32_at(off + 8)? as usize;
                for i in 0..n {
                    let at = off + 16 + 16 * i;
                    let (s, e) = (u64_at(at)?, u64_at(at + 8)?);
                    if e < s {
                        return Err(bad(format!(
                            "IOVA range {s:#x}..={e:#x} ends before it starts"
                        )));
                    }
                    ranges.push((s, e));
                }
            }
            if next != 0 && next <= off {
                return Err(bad(format!(
                    "capability at {off:#x} points back to {next:#x}"
                )));
            }
            off = next;
        }
    }
    if ranges.is_empty() {
        ranges.push((0, u64::MAX));
    }
    ranges.sort_unstable();
    Ok(IommuInfo {
        page_sizes,
        iova_ranges: ranges,
    })
}

/// `/dev/vfio/vfio`: an IOMMU context. Groups join it ([`attach`](Self::attach)); the first join
/// sets its IOMMU model to type1v2, after which devices may be opened and DMA mapped.
#[derive(Debug)]
pub struct VfioContainer {
    file: File,
    iommu_set: Mutex<bool>,
}

impl VfioContainer {
    /// Opens a new container and checks the API version and type1v2 support.
    pub fn open() -> Result<Self> {
        let path = "/dev/vfio/vfio";
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| os_err("open", path, e))?;
        let version = ioctl_val(&file, sys::GET_API_VERSION, 0, "VFIO_GET_API_VERSION", path)?;
        if version as u32 != VFIO_API_VERSION {
            return Err(Error::Vfio {
                target: path.to_string(),
                problem: VfioProblem::ApiVersion {
                    found: i64::from(version),
                    expected: i64::from(VFIO_API_VERSION),
                },
            });
        }
        let ext = ioctl_val(
            &file,
            sys::CHECK_EXTENSION,
            VFIO_TYPE1v2_IOMMU.into(),
            "VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU)",
            path,
        )?;
        if ext != 1 {
            return Err(Error::Vfio {
                target: path.to_string(),
                problem: VfioProblem::NoType1v2,
            });
        }
        Ok(Self {
            file,
            iommu_set: Mutex::new(false),
        })
    }

    /// Adds a group to the container; the first one also sets the IOMMU model (type1v2).
    pub fn attach(&self, group: &VfioGroup) -> Result<()> {
        let mut fd = self.file.as_raw_fd();
        let on = format!("/dev/vfio/{}", group.id());
        // SAFETY: VFIO_GROUP_SET_CONTAINER reads one int (the container fd) at its argument.
        unsafe {
            ioctl_ptr(
                group.file(),
                sys::GROUP_SET_CONTAINER,
                &mut fd,
                "VFIO_GROUP_SET_CONTAINER",
                &on,
            )?;
        }
        let mut set = self.iommu_set.lock();
        if !*set {
            ioctl_val(
                &self.file,
                sys::SET_IOMMU,
                VFIO_TYPE1v2_IOMMU.into(),
                "VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU)",
                "/dev/vfio/vfio",
            )?;
            *set = true;
        }
        Ok(())
    }

    /// The IOMMU's page sizes and usable IOVA ranges.
    pub fn info(&self) -> Result<IommuInfo> {
        self.require_iommu("VFIO_IOMMU_GET_INFO")?;
        let mut words = vec![0u64; 4]; // the 24-byte struct, rounded to u64s
        loop {
            let argsz = (words.len() * 8) as u32;
            words[0] = u64::from(argsz);
            let ptr = words.as_mut_ptr().cast::<vfio_iommu_type1_info>();
            // SAFETY: VFIO_IOMMU_GET_INFO writes at most argsz bytes, which `words` holds, and
            // the buffer is 8-byte aligned as the struct needs.
            unsafe {
                ioctl_ptr(
                    &self.file,
                    sys::IOMMU_GET_INFO,
                    ptr,
                    "VFIO_IOMMU_GET_INFO",
                    "/dev/vfio/vfio",
                )?;
            }
            // The kernel raises argsz when the capabilities need more room.
            let wanted = (words[0] & 0xffff_ffff) as usize;
            if wanted <= words.len() * 8 {
                break;
            }
            words = vec![0u64; wanted.div_ceil(8)];
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        parse_iommu_info(&bytes)
    }

    fn require_iommu(&self, call: &'static str) -> Result<()> {
        if *self.iommu_set.lock() {
            Ok(())
        } else {
            Err(Error::Vfio {
                target: call.to_string(),
                problem: VfioProblem::NoGroupAttached,
            })
        }
    }

    /// `VFIO_IOMMU_MAP_DMA`: maps `size` bytes of this process's memory at `vaddr` to `iova`.
    /// The kernel pins the pages (or, for a mapped peer BAR, looks up its PFNs) for as long as
    /// the mapping lives.
    pub fn map_dma(&self, vaddr: u64, iova: u64, size: u64, access: Access) -> Result<()> {
        self.require_iommu("VFIO_IOMMU_MAP_DMA")?;
        let mut flags = 0;
        if access.contains(Access::READ) {
            flags |= VFIO_DMA_MAP_FLAG_READ;
        }
        if access.intersects(Access::WRITE | Access::ATOMIC) {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        let mut map = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        let on = format!("iova {iova:#x} size {size:#x} vaddr {vaddr:#x}");
        // SAFETY: MAP_DMA reads the struct, whose argsz is its size.
        unsafe {
            ioctl_ptr(
                &self.file,
                sys::IOMMU_MAP_DMA,
                &mut map,
                "VFIO_IOMMU_MAP_DMA",
                &on,
            )?
        };
        Ok(())
    }

    /// `VFIO_IOMMU_UNMAP_DMA`: unmaps every mapping inside `[iova, iova+size)`; returns the
    /// bytes unmapped. Type1 flushes the IOTLB before it returns.
    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64> {
        self.require_iommu("VFIO_IOMMU_UNMAP_DMA")?;
        let mut unmap = vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size,
            ..Default::default()
        };
        let on = format!("iova {iova:#x} size {size:#x}");
        // SAFETY: UNMAP_DMA reads and writes back the struct, whose argsz is its size (no
        // dirty bitmap is asked for).
        unsafe {
            ioctl_ptr(
                &self.file,
                sys::IOMMU_UNMAP_DMA,
                &mut unmap,
                "VFIO_IOMMU_UNMAP_DMA",
                &on,
            )?
        };
        Ok(unmap.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(flags: u32, pgsizes: u64, caps: &[(u16, u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&pgsizes.to_le_bytes());
        let mut off = 24usize;
        if !caps.is_empty() {
            b[16..20].copy_from_slice(&(off as u32).to_le_bytes());
        }
        for (i, (id, _, body)) in caps.iter().enumerate() {
            let len = 8 + body.len();
            let next = if i + 1 < caps.len() {
                (off + len) as u32
            } else {
                0
            };
            b.extend_from_slice(&(u32::from(*id) | (1 << 16)).to_le_bytes());
            b.extend_from_slice(&next.to_le_bytes());
            b.extend_from_slice(body);
            off += len;
        }
        b
    }

    fn ranges_body(r: &[(u64, u64)]) -> Vec<u8> {
        let mut v = (r.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(&[0; 4]);
        for (s, e) in r {
            v.extend_from_slice(&s.to_le_bytes());
            v.extend_from_slice(&e.to_le_bytes());
        }
        v
    }

    #[test]
    fn parses_page_sizes_and_iova_ranges() {
        // What VT-d reports with a 39-bit width: everything but the MSI window.
        let r = [(0xfef0_0000, 0x7f_ffff_ffff), (0, 0xfedf_ffff)];
        let b = reply(
            VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS,
            0x4020_1000,
            &[(2, 0, vec![0; 16]), (1, 0, ranges_body(&r))],
        );
        let info = parse_iommu_info(&b).unwrap();
        assert_eq!(info.page_sizes, 0x4020_1000);
        assert_eq!(
            info.iova_ranges,
            vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]
        );
        // No capability: no limit from the kernel.
        let info = parse_iommu_info(&reply(VFIO_IOMMU_INFO_PGSIZES, 0x1000, &[])).unwrap();
        assert_eq!(info.iova_ranges, vec![(0, u64::MAX)]);
    }

    #[test]
    fn malformed_replies_are_errors_not_loops() {
        let mut b = reply(
            VFIO_IOMMU_INFO_CAPS,
            0,
            &[(1, 0, ranges_body(&[(0, 0xfff)]))],
        );
        b[28..32].copy_from_slice(&24u32.to_le_bytes()); // next points at itself
        assert!(parse_iommu_info(&b)
            .unwrap_err()
            .to_string()
            .contains("points back"));
        let b = reply(
            VFIO_IOMMU_INFO_CAPS,
            0,
            &[(1, 0, ranges_body(&[(0x2000, 0x1000)]))],
        );
        assert!(parse_iommu_info(&b).is_err());
        let mut b = reply(
            VFIO_IOMMU_INFO_CAPS,
            0,
            &[(1, 0, ranges_body(&[(0, 0xfff)]))],
        );
        b.truncate(40);
        assert!(parse_iommu_info(&b)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(parse_iommu_info(&[0; 3]).is_err());
    }
}
