//! The kernel model the domain is tested against: iommufd's IOAS rules as Linux applies them.

use super::*;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs::File;

/// What an area of the IOAS maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// `IOMMU_IOAS_MAP`: this process's memory from that virtual address.
    Va(u64),
    /// `IOMMU_IOAS_MAP_FILE`: that file from that offset.
    File(FileSlice),
}

/// iommufd's IOAS rules (io_pagetable.c `iopt_check_iova`, `iopt_unmap_iova_range`). An unmap
/// removes the areas in IOVA order until one straddles an edge, then fails with `ENOENT`; those
/// removed before it stay removed.
#[derive(Debug)]
pub(super) struct FakeIoas {
    pub(super) ranges: Vec<(u64, u64)>,
    pub(super) alignment: u64,
    /// Every `IOMMU_IOAS_MAP` refused with this errno (a BAR's address: `EFAULT`).
    pub(super) refuse_va: Option<i32>,
    /// iova → (length, source).
    pub(super) areas: Mutex<BTreeMap<u64, (u64, Source)>>,
}

/// VT-d with a 39-bit width: everything but the MSI window.
pub(super) const VTD: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];

impl FakeIoas {
    pub(super) fn new(ranges: &[(u64, u64)], alignment: u64) -> Self {
        Self {
            ranges: ranges.to_vec(),
            alignment,
            refuse_va: None,
            areas: Mutex::new(BTreeMap::new()),
        }
    }

    pub(super) fn vtd() -> Self {
        Self::new(&VTD, 4096)
    }

    pub(super) fn map(&self, call: &'static str, iova: u64, len: u64, src: Source) -> Result<()> {
        let a = self.alignment;
        if iova & (a - 1) != 0 || len & (a - 1) != 0 || len == 0 {
            return Err(errno(call, iova, len, libc::EINVAL));
        }
        let last = iova
            .checked_add(len - 1)
            .ok_or_else(|| errno(call, iova, len, libc::EOVERFLOW))?;
        if !self.ranges.iter().any(|&(s, l)| s <= iova && last <= l) {
            return Err(errno(call, iova, len, libc::EINVAL));
        }
        let mut areas = self.areas.lock();
        if areas
            .iter()
            .any(|(&at, (l, _))| at <= last && iova < at + l)
        {
            return Err(errno(call, iova, len, libc::EEXIST));
        }
        areas.insert(iova, (len, src));
        Ok(())
    }

    /// The areas, as (iova, length, source).
    pub(super) fn areas(&self) -> Vec<(u64, u64, Source)> {
        let areas = self.areas.lock();
        areas
            .iter()
            .map(|(&a, (l, s))| (a, *l, s.clone()))
            .collect()
    }
}

pub(super) fn errno(call: &'static str, iova: u64, len: u64, e: i32) -> Error {
    let target = format!("iova {iova:#x}+{len:#x}");
    Error::os(call, target, std::io::Error::from_raw_os_error(e))
}

impl IoasOps for FakeIoas {
    fn iova_ranges(&self) -> Result<IoasRanges> {
        Ok(IoasRanges {
            ranges: self.ranges.clone(),
            alignment: self.alignment,
        })
    }
    fn map_va(&self, va: u64, iova: u64, len: u64, _: Access) -> Result<()> {
        if let Some(e) = self.refuse_va {
            return Err(errno("IOMMU_IOAS_MAP", iova, len, e));
        }
        self.map("IOMMU_IOAS_MAP", iova, len, Source::Va(va))
    }
    fn map_file(&self, file: &FileSlice, iova: u64, len: u64, _: Access) -> Result<()> {
        self.map("IOMMU_IOAS_MAP_FILE", iova, len, Source::File(file.clone()))
    }
    fn unmap(&self, iova: u64, len: u64) -> Result<u64> {
        let call = "IOMMU_IOAS_UNMAP";
        let last = len
            .checked_sub(1)
            .and_then(|l| iova.checked_add(l))
            .ok_or_else(|| errno(call, iova, len, libc::EINVAL))?;
        let mut areas = self.areas.lock();
        let hit: Vec<(u64, u64)> = areas
            .range(..=last)
            .filter(|(&a, (l, _))| a + l > iova)
            .map(|(&a, (l, _))| (a, *l))
            .collect();
        let straddles = |&(a, l): &(u64, u64)| a < iova || a + l - 1 > last;
        let mut done = 0;
        for area in hit {
            if straddles(&area) {
                return Err(errno(call, iova, len, libc::ENOENT));
            }
            areas.remove(&area.0);
            done += area.1;
        }
        match done {
            0 => Err(errno(call, iova, len, libc::ENOENT)),
            n => Ok(n),
        }
    }
}

/// A file of its own (every call opens a new one: slices of two calls' files never compare
/// equal). The kernel model never reads it.
pub(super) fn file() -> Arc<File> {
    Arc::new(File::open("/dev/zero").expect("open /dev/zero"))
}

/// `file` from `offset`.
pub(super) fn slice(file: &Arc<File>, offset: u64) -> FileSlice {
    let file = file.clone();
    FileSlice { file, offset }
}
