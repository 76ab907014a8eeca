//! Host RAM as an exporter: a locked buffer whose pages are translated to physical addresses
//! through `/proc/self/pagemap`.

use crate::os::locked::{Backing, LockedRegion, PAGE};
use crate::os::pagemap::Pagemap;
use p2p_core::addr::{align_down, align_up, AddrRange, BusAddr, Offset, PhysAddr};
use p2p_core::export::GrantBook;
use p2p_core::traits::{
    Chunk, ChunkList, ExportGrant, ExporterId, ExporterInfo, FileSlice, MemoryExporter, Residency,
};
use p2p_core::{Error, Result};
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;

/// A buffer of locked host RAM, exported to devices. Offsets are offsets into the buffer; its
/// DMA address is the physical address (RAM is not behind a host-bridge window).
///
/// `mlock` keeps the pages resident, but the kernel may still migrate them (compaction of
/// unevictable pages, `vm.compact_unevictable_allowed`), so [`chunks`](MemoryExporter::chunks)
/// reads the pagemap afresh on every call. A device programmed with those addresses needs the
/// kernel to pin the pages for as long as it uses them: VFIO's `MAP_DMA` does, which is why the
/// IOMMU backend maps this buffer by its virtual address.
///
/// Made with [`memfd`](Self::memfd), the buffer is a memfd mapped shared, and every chunk
/// carries the memfd and its offset ([`Chunk::file`]): a domain that maps by file (iommufd) then
/// hands the kernel the file, and the kernel pins the file's pages itself.
///
/// Reading page frame numbers needs `CAP_SYS_ADMIN`: without it [`new`](Self::new) fails with an
/// error that says so.
#[derive(Debug)]
pub struct LockedHostMemory {
    id: ExporterId,
    region: RwLock<LockedRegion>,
    memfd: Option<Arc<std::fs::File>>,
    pagemap: Pagemap,
    numa: u32,
    window: AddrRange<BusAddr>,
    book: Mutex<GrantBook>,
}

impl LockedHostMemory {
    /// Allocates and locks `len` bytes (huge pages when the machine has them) on behalf of NUMA
    /// node `numa`, and translates every page once to learn the span of physical addresses.
    pub fn new(len: u64, numa: u32) -> Result<Self> {
        Self::over(LockedRegion::new(len)?, None, numa)
    }

    /// Allocates `len` bytes as a memfd, mapped shared and locked, whose chunks carry the memfd
    /// (see the type's documentation).
    pub fn memfd(len: u64, numa: u32) -> Result<Self> {
        let (region, file) = LockedRegion::memfd(len)?;
        Self::over(region, Some(Arc::new(file)), numa)
    }

    /// The memfd behind the buffer, if it was made with [`memfd`](Self::memfd).
    pub fn file(&self) -> Option<&Arc<std::fs::File>> {
        self.memfd.as_ref()
    }

    fn over(region: LockedRegion, memfd: Option<Arc<std::fs::File>>, numa: u32) -> Result<Self> {
        let pagemap = Pagemap::open()?;
        let pages = pagemap.phys_pages(region.va(), (region.len() / PAGE) as usize)?;
        let lo = pages.iter().copied().min().unwrap_or(0);
        let hi = pages.iter().map(|p| p + PAGE).max().unwrap_or(PAGE);
        let window = AddrRange::new(BusAddr(lo), hi - lo)?;
        let id = ExporterId::fresh();
        tracing::debug!(%id, len = region.len(), backing = ?region.backing(), %window, "locked host memory");
        Ok(Self {
            id,
            book: Mutex::new(GrantBook::new(id, region.len())),
            region: RwLock::new(region),
            memfd,
            pagemap,
            numa,
            window,
        })
    }

    /// The virtual address of offset 0 (what VFIO's `MAP_DMA` takes).
    pub fn va(&self) -> u64 {
        self.region.read().va()
    }

    /// Bytes in the buffer.
    pub fn len(&self) -> u64 {
        self.region.read().len()
    }

    /// Never: the buffer has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// What backs the buffer (huge pages or base pages).
    pub fn backing(&self) -> Backing {
        self.region.read().backing()
    }

    /// The physical address of the byte at `offset`, read from the pagemap now.
    pub fn phys(&self, offset: Offset) -> Result<PhysAddr> {
        let region = self.region.read();
        self.bounds(&region, offset.0, 1)?;
        let page = self
            .pagemap
            .phys_page(region.va() + align_down(offset.0, PAGE))?;
        Ok(PhysAddr(page + offset.0 % PAGE))
    }

    /// Copies `data` into the buffer at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut region = self.region.write();
        self.bounds(&region, offset, data.len() as u64)?;
        region.as_mut_slice()[offset as usize..][..data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Copies bytes out of the buffer at `offset`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let region = self.region.read();
        self.bounds(&region, offset, out.len() as u64)?;
        out.copy_from_slice(&region.as_slice()[offset as usize..][..out.len()]);
        Ok(())
    }

    /// Grants outstanding.
    pub fn grants(&self) -> usize {
        self.book.lock().live()
    }

    fn bounds(&self, region: &LockedRegion, offset: u64, len: u64) -> Result<()> {
        let r = AddrRange::new(Offset(offset), len)?;
        if r.end().0 > region.len() {
            return Err(Error::OutOfBounds {
                kind: "offset",
                start: offset,
                len,
                limit_start: 0,
                limit_len: region.len(),
            });
        }
        Ok(())
    }
}

impl MemoryExporter for LockedHostMemory {
    fn id(&self) -> ExporterId {
        self.id
    }

    fn info(&self) -> ExporterInfo {
        ExporterInfo {
            residency: Residency::Host { numa: self.numa },
            size: self.len(),
            movable: false,
            pinnable: true,
            bus_window: self.window,
        }
    }

    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.book.lock().export(range, pin)
    }

    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.book.lock().allocate(len, pin)
    }

    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        let range = self.book.lock().get(grant)?.range;
        let region = self.region.read();
        let start = align_down(range.start().0, PAGE);
        let end = align_up(range.end().0, PAGE).unwrap_or(range.end().0);
        let mut out = ChunkList::new();
        let pages = self
            .pagemap
            .phys_pages(region.va() + start, ((end - start) / PAGE) as usize)?;
        for (i, phys) in pages.into_iter().enumerate() {
            let off = start + i as u64 * PAGE;
            match out.last_mut() {
                Some(last) if last.phys.0 + last.len == phys => last.len += PAGE,
                _ => out.push(Chunk {
                    offset: Offset(off),
                    len: PAGE,
                    phys: PhysAddr(phys),
                    bus: BusAddr(phys),
                    mmio: false,
                    file: self.memfd.as_ref().map(|file| FileSlice {
                        file: file.clone(),
                        offset: off,
                    }),
                }),
            }
        }
        Ok(out)
    }

    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.book.lock().release(grant)
    }
}
