//! Process address spaces: registering a virtual range for an importer (what `ibv_reg_mr` does)
//! when its pages are a mix of host RAM and device memory.

use super::{merge_segments, Mapping, Negotiator, Policy, Segment};
use crate::access::Access;
use crate::addr::{AddrRange, Offset, VirtAddr};
use crate::error::{Error, Result};
use crate::traits::{DmaImporter, ImporterFlags, MemoryExporter};
use std::sync::Arc;

/// What backs one virtual page.
#[derive(Debug, Clone)]
pub enum Backing {
    /// A host RAM page at this CPU physical address (an offset in the platform's host exporter).
    Host(Offset),
    /// A page of device memory (HMM device-private or a dma-buf-backed VMA).
    Device {
        /// Its exporter.
        exporter: Arc<dyn MemoryExporter>,
        /// The page's offset in the exporter's memory.
        offset: Offset,
    },
    /// A raw `remap_pfn_range` mapping (a BAR mmap): neither pinnable nor faultable.
    Pfnmap,
    /// Nothing mapped.
    Unmapped,
}

/// A process address space, as the registration sees it.
pub trait AddressSpace: Send + Sync + std::fmt::Debug {
    /// The page size of its mappings.
    fn page_size(&self) -> u64;
    /// What backs the page containing `va` now.
    fn backing(&self, va: VirtAddr) -> Backing;
}

/// A registered virtual range: one mapping per run of contiguous backing, and the merged
/// scatter list in virtual-address order.
#[derive(Debug)]
pub struct Registration {
    range: AddrRange<VirtAddr>,
    mappings: Vec<Mapping>,
}

impl Registration {
    /// The virtual range.
    pub fn range(&self) -> AddrRange<VirtAddr> {
        self.range
    }

    /// The mappings, in virtual-address order.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The scatter list, merged across runs and split at `max_segment`; an error if any run was
    /// invalidated (an ODP importer then re-registers or re-faults).
    pub fn segments(&self, max_segment: u64) -> Result<Vec<Segment>> {
        let mut pieces = Vec::new();
        for m in &self.mappings {
            pieces.extend(m.segments()?.into_iter().map(|s| (s.addr, s.len)));
        }
        Ok(merge_segments(pieces, max_segment))
    }
}

impl Negotiator {
    /// Registers `range` of `space` for `importer`: resolves every page's backing, groups runs
    /// and maps each through the negotiator. All or nothing.
    ///
    /// An importer without ODP must pin; device pages cannot be pinned (a device-private page's
    /// CPU PTE is a swap entry and GUP migrates it back to RAM), so registering them fails with
    /// [`Error::CannotPin`]. A PFNMAP or unmapped page fails with [`Error::Fault`] for every
    /// importer (`hmm_range_fault` and GUP both give -EFAULT).
    pub fn register(
        &self,
        space: &dyn AddressSpace,
        range: AddrRange<VirtAddr>,
        importer: &Arc<dyn DmaImporter>,
        access: Access,
        policy: &Policy,
    ) -> Result<Registration> {
        let page = space.page_size();
        if !range.is_aligned(page) {
            return Err(Error::Misaligned {
                what: "virtual range",
                value: range.start().0,
                align: page,
            });
        }
        if range.is_empty() {
            return Err(Error::EmptyRange {
                what: "virtual range",
            });
        }
        let odp = importer.caps().flags.contains(ImporterFlags::ODP);
        let host = self.platform().host_memory();
        // Resolve into runs of (exporter, first offset, length).
        let mut runs: Vec<(Arc<dyn MemoryExporter>, Offset, u64)> = Vec::new();
        let mut va = range.start().0;
        while va < range.end().0 {
            let (exporter, offset) = match space.backing(VirtAddr(va)) {
                Backing::Host(off) => (host.clone(), off),
                Backing::Device { exporter, offset } => {
                    if !odp {
                        tracing::info!(va, importer = %importer.device(), "pin refused: device memory for an importer without ODP");
                        return Err(Error::CannotPin {
                            va,
                            importer: importer.device(),
                            reason: "device memory cannot be pinned; register with an ODP-capable importer",
                        });
                    }
                    (exporter, offset)
                }
                Backing::Pfnmap => {
                    return Err(Error::Fault {
                        va,
                        reason: "a PFNMAP mapping (raw BAR mmap) can be neither pinned nor faulted",
                    })
                }
                Backing::Unmapped => {
                    return Err(Error::Fault {
                        va,
                        reason: "nothing is mapped there",
                    })
                }
            };
            match runs.last_mut() {
                Some((e, start, len))
                    if e.id() == exporter.id() && start.0.checked_add(*len) == Some(offset.0) =>
                {
                    *len += page;
                }
                _ => runs.push((exporter, offset, page)),
            }
            va += page;
        }
        // Map every run; a failure drops the mappings made so far, which unmaps them.
        let mut mappings = Vec::with_capacity(runs.len());
        for (exporter, start, len) in runs {
            mappings.push(self.map(
                &exporter,
                importer,
                AddrRange::new(start, len)?,
                access,
                policy,
            )?);
        }
        Ok(Registration { range, mappings })
    }
}
