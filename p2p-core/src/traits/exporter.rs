//! Memory exporters: whoever owns the memory a device will DMA to (a GPU's BAR, host RAM).

use super::ChunkList;
use crate::addr::{AddrRange, BusAddr, Offset, PhysAddr};
use crate::error::Result;
use crate::pci::PciAddr;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Identifies an exporter for the life of the process, and names it in messages.
///
/// An id made with [`fresh_named`](Self::fresh_named) prints as its name (`GPU 0000:03:00.0`),
/// one made with [`fresh`](Self::fresh) as `exporter#3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExporterId(pub u64);

static NEXT_EXPORTER: AtomicU64 = AtomicU64::new(1);

/// The names given with [`ExporterId::fresh_named`]. Like the ids, they live for the process:
/// an exporter is made once per device or memory object, so this stays small, and an error
/// that outlives its exporter still prints the name.
static NAMES: RwLock<BTreeMap<u64, Arc<str>>> = RwLock::new(BTreeMap::new());

impl ExporterId {
    /// An id no other call in this process returns: implementations take one at construction.
    pub fn fresh() -> Self {
        Self(NEXT_EXPORTER.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh id that messages print as `name`: say what the memory is and where
    /// (`GPU 0000:03:00.0`, `host RAM`).
    pub fn fresh_named(name: impl Into<String>) -> Self {
        let id = Self::fresh();
        let name: Arc<str> = Arc::from(name.into());
        NAMES
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.0, name);
        id
    }

    /// The name given at construction, if any.
    pub fn name(self) -> Option<Arc<str>> {
        NAMES
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&self.0)
            .cloned()
    }
}

impl fmt::Display for ExporterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(&name),
            None => write!(f, "exporter#{}", self.0),
        }
    }
}

/// Where an exporter's memory is right now. Device memory can move to host RAM (HMM
/// migration, TTM eviction); the negotiator plans for where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Residency {
    /// In a device's BAR (peer-to-peer).
    Device(PciAddr),
    /// In host RAM attached to a NUMA node.
    Host {
        /// The NUMA node.
        numa: u32,
    },
}

impl fmt::Display for Residency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Residency::Device(dev) => write!(f, "in the BAR of {dev}"),
            Residency::Host { numa } => write!(f, "in host RAM on NUMA node {numa}"),
        }
    }
}

/// Whether memory may move and whether a grant may pin it: the two facts about memory that
/// decide between pinning and ODP. Named, so a constructor call says what it builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryKind {
    /// The memory may move (TTM eviction, HMM migration), so an importer without ODP must pin
    /// it.
    pub movable: bool,
    /// A grant may pin it. Device-private memory (HMM) never can.
    pub pinnable: bool,
}

impl MemoryKind {
    /// Memory that moves unless pinned (GPU VRAM under TTM).
    pub const MOVABLE: Self = Self {
        movable: true,
        pinnable: true,
    };
    /// Memory that moves and cannot be pinned (HMM device-private): only ODP importers.
    pub const DEVICE_PRIVATE: Self = Self {
        movable: true,
        pinnable: false,
    };
    /// Memory that stays where it is (a controller memory buffer, a fixed BAR carve-out).
    pub const FIXED: Self = Self {
        movable: false,
        pinnable: true,
    };
}

/// What the negotiator needs to know of an exporter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExporterInfo {
    /// Where the memory is now.
    pub residency: Residency,
    /// Bytes in the exporter's memory object (valid offsets are `0..size`).
    pub size: u64,
    /// Whether the memory may move (so grants to importers without ODP must pin it).
    pub movable: bool,
    /// Whether a grant may pin it (device-private memory never can).
    pub pinnable: bool,
    /// The span of bus addresses its chunks can have: a device whose DMA mask does not reach its
    /// top cannot use bus addresses.
    pub bus_window: AddrRange<BusAddr>,
}

/// A grant: the exporter has reserved a window for `range` of its memory. Released with
/// [`MemoryExporter::release`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExportGrant {
    /// Who granted it.
    pub exporter: ExporterId,
    /// The exporter's handle for it.
    pub id: u64,
    /// Which bytes of the memory object.
    pub range: AddrRange<Offset>,
    /// Whether the grant pins the memory (it cannot move until released).
    pub pinned: bool,
}

/// The open file that holds a chunk's memory, and where in it the chunk begins: a memfd, or a
/// dma-buf a device exported (Linux's `VFIO_DEVICE_FEATURE_DMA_BUF`). A domain that maps by
/// file (iommufd's `IOMMU_IOAS_MAP_FILE`) hands the kernel this instead of an address, so memory
/// that has no virtual address in the process (a peer BAR exported as a dma-buf) can still be
/// mapped, and the kernel, not the process, keeps track of where it is.
///
/// Two slices are equal when they name the same open file (not merely the same path) at the
/// same offset.
#[derive(Debug, Clone)]
pub struct FileSlice {
    /// The file, shared by every chunk cut from it.
    pub file: Arc<std::fs::File>,
    /// Byte offset of the chunk's first byte in the file.
    pub offset: u64,
}

impl FileSlice {
    /// The slice `by` bytes further into the same file (`None` if the offset would overflow).
    pub fn advance(&self, by: u64) -> Option<Self> {
        Some(Self {
            file: self.file.clone(),
            offset: self.offset.checked_add(by)?,
        })
    }
}

impl PartialEq for FileSlice {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.offset == other.offset
    }
}

impl Eq for FileSlice {}

/// A physically contiguous piece of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset in the memory object.
    pub offset: Offset,
    /// Bytes.
    pub len: u64,
    /// CPU physical address (what an IOMMU maps).
    pub phys: PhysAddr,
    /// PCI bus address (what a switch routes).
    pub bus: BusAddr,
    /// Whether it is device MMIO (a BAR) rather than RAM.
    pub mmio: bool,
    /// The file the chunk's bytes are in, for exporters whose memory is a memfd or a dma-buf
    /// (`None` for memory known only by address). Domains that map by file use it; others map
    /// `phys`.
    pub file: Option<FileSlice>,
}

/// Owns memory that devices DMA to, and hands out grants of it.
///
/// Contract:
/// - [`export`](Self::export) reserves exactly the range asked (the grant carries that range,
///   this exporter's id and the pin asked) or fails with no reservation made (a BAR window can
///   be full: [`Error::WindowFull`](crate::Error::WindowFull)); a range that is empty or not
///   inside `0..size` fails with [`Error::OutOfBounds`](crate::Error::OutOfBounds); a pinned
///   grant (or allocation) of memory that cannot be pinned fails with
///   [`Error::NotPinnable`](crate::Error::NotPinnable).
/// - [`allocate`](Self::allocate) reserves `len` fresh bytes: a range of at least `len` bytes
///   inside `0..size` that overlaps no other live allocation.
/// - After a revoke, `export` and `allocate` fail with [`Error::Revoked`](crate::Error::Revoked);
///   a grant made before can still be released.
/// - [`chunks`](Self::chunks) reports where a grant's bytes are now, in offset order: page-aligned
///   chunks (4 KiB: offset, length, `phys` and `bus`) covering the pages the grant's range
///   touches ([`AddrRange::pages`]), exactly those; within a grant every chunk has the same
///   `bus - phys` offset and lies in [`ExporterInfo::bus_window`], and a chunk is `mmio` exactly
///   when the memory is in a device ([`Residency::Device`]). Within a grant either no chunk
///   names a file ([`Chunk::file`]) or every one names the same open file, each at the same
///   distance from its chunk's offset (the file holds the grant's bytes in order).
/// - [`export_with_chunks`](Self::export_with_chunks) is [`export`](Self::export) then
///   [`chunks`](Self::chunks) of the grant, as one call: the same grant and the same chunks, and
///   when it fails no grant is outstanding.
/// - [`chunks`](Self::chunks) and [`release`](Self::release) of a grant that is not outstanding
///   (released already, or another exporter's) fail with
///   [`Error::UnknownGrant`](crate::Error::UnknownGrant).
/// - Moving or revoking memory is the exporter owner's act, and goes through the negotiator
///   first, which tells every importer and tears their mappings down. To move (migration,
///   eviction) ask with [`Negotiator::begin_invalidation`](crate::negotiate::Negotiator::begin_invalidation):
///   pinned grants make it fail with
///   [`Error::Pinned`](crate::Error::Pinned). When the memory goes away regardless (device
///   reset, dma-buf revoke) force it with [`Negotiator::begin_forced_revoke`](crate::negotiate::Negotiator::begin_forced_revoke):
///   pinned mappings die too.
pub trait MemoryExporter: Send + Sync + fmt::Debug {
    /// Its id: the same on every call for the exporter's life (the registry indexes mappings by
    /// it, and a set-up asks once).
    fn id(&self) -> ExporterId;
    /// What it is and where its memory is now.
    fn info(&self) -> ExporterInfo;
    /// Reserves a window for `range`, pinned or not.
    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant>;
    /// Reserves `len` fresh bytes anywhere (a bounce buffer, a new GPU allocation).
    ///
    /// The default refuses with [`Error::CannotAllocate`](crate::Error::CannotAllocate): a
    /// device that only exports memory its owner already placed (a BAR, a CMB) need not
    /// implement it. A [`Platform::host_memory`](crate::Platform::host_memory) must, since
    /// bounce buffers come from it.
    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        let _ = (len, pin);
        Err(crate::Error::CannotAllocate {
            exporter: self.id(),
        })
    }
    /// The physically contiguous pieces of a grant, in offset order: page-aligned chunks covering
    /// the pages the grant's range touches.
    ///
    /// The [`ChunkList`] holds one or two chunks without allocating (this is called on every
    /// mapping): return a contiguous grant as `ChunkList::from(chunk)`, and build longer lists
    /// with [`push`](ChunkList::push) or `collect`.
    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList>;
    /// Gives a grant back; an error if it is unknown (released twice).
    fn release(&self, grant: &ExportGrant) -> Result<()>;

    /// [`export`](Self::export) and [`chunks`](Self::chunks) of the new grant in one call, as
    /// the negotiator does on every mapping: an exporter that keeps its grants under a lock can
    /// do both under one acquisition. On failure no grant is outstanding.
    ///
    /// The default calls the two (and releases the grant if `chunks` fails).
    fn export_with_chunks(
        &self,
        range: AddrRange<Offset>,
        pin: bool,
    ) -> Result<(ExportGrant, ChunkList)> {
        let grant = self.export(range, pin)?;
        match self.chunks(&grant) {
            Ok(chunks) => Ok((grant, chunks)),
            Err(e) => {
                if let Err(err) = self.release(&grant) {
                    tracing::warn!(%err, "releasing a grant whose chunks failed");
                }
                Err(e)
            }
        }
    }

    /// Copies `buf.len()` bytes of the memory object at `offset` into `buf`, through the CPU's
    /// view of wherever the memory is now. The bytes must lie inside `grant`'s range and the
    /// grant must be outstanding ([`Error::OutOfBounds`](crate::Error::OutOfBounds),
    /// [`Error::UnknownGrant`](crate::Error::UnknownGrant) otherwise).
    ///
    /// Used to fill and drain bounce buffers ([`Mapping::sync_for_device`](crate::negotiate::Mapping::sync_for_device)).
    /// The default fails with
    /// [`Error::NoCpuAccess`](crate::Error::NoCpuAccess): memory the CPU cannot reach can still
    /// be mapped peer to peer, only not bounced. A
    /// [`Platform::host_memory`](crate::Platform::host_memory) must implement it and
    /// [`write_grant`](Self::write_grant).
    fn read_grant(&self, grant: &ExportGrant, offset: Offset, buf: &mut [u8]) -> Result<()> {
        let _ = (grant, offset, buf);
        Err(crate::Error::NoCpuAccess {
            exporter: self.id(),
        })
    }

    /// Copies `data` into the memory object at `offset`, under the same rules as
    /// [`read_grant`](Self::read_grant).
    fn write_grant(&self, grant: &ExportGrant, offset: Offset, data: &[u8]) -> Result<()> {
        let _ = (grant, offset, data);
        Err(crate::Error::NoCpuAccess {
            exporter: self.id(),
        })
    }
}

/// Checks that `len` bytes at `offset` lie inside `grant`'s range: the bounds rule of
/// [`MemoryExporter::read_grant`] and [`MemoryExporter::write_grant`], for implementations to share.
pub fn check_grant_access(grant: &ExportGrant, offset: Offset, len: usize) -> Result<()> {
    let wanted = AddrRange::new(offset, len as u64)?;
    if grant.range.contains_range(&wanted) {
        return Ok(());
    }
    Err(crate::Error::OutOfBounds {
        kind: "offset",
        start: offset.0,
        len: len as u64,
        limit_start: grant.range.start().0,
        limit_len: grant.range.len(),
    })
}

/// A shared exporter is an exporter: `&Arc<MyExporter>` can be passed wherever an
/// `&impl MemoryExporter` is taken (as [`Negotiator::negotiate`](crate::negotiate::Negotiator::negotiate)
/// does).
impl<T: MemoryExporter + ?Sized> MemoryExporter for Arc<T> {
    fn id(&self) -> ExporterId {
        (**self).id()
    }
    fn info(&self) -> ExporterInfo {
        (**self).info()
    }
    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        (**self).export(range, pin)
    }
    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        (**self).allocate(len, pin)
    }
    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        (**self).chunks(grant)
    }
    fn export_with_chunks(
        &self,
        range: AddrRange<Offset>,
        pin: bool,
    ) -> Result<(ExportGrant, ChunkList)> {
        (**self).export_with_chunks(range, pin)
    }
    fn release(&self, grant: &ExportGrant) -> Result<()> {
        (**self).release(grant)
    }
    fn read_grant(&self, grant: &ExportGrant, offset: Offset, buf: &mut [u8]) -> Result<()> {
        (**self).read_grant(grant, offset, buf)
    }
    fn write_grant(&self, grant: &ExportGrant, offset: Offset, data: &[u8]) -> Result<()> {
        (**self).write_grant(grant, offset, data)
    }
}

/// Turns a shared exporter of any type into the trait object the registry keeps, so that
/// [`Negotiator::establish`](crate::negotiate::Negotiator::establish) and
/// [`map`](crate::negotiate::Negotiator::map) take `&Arc<MyExporter>` and
/// `&Arc<dyn MemoryExporter>` alike. Implemented for every sized exporter and for
/// `dyn MemoryExporter`; there is nothing to implement by hand.
pub trait IntoDynExporter: MemoryExporter {
    /// The same object as `Arc<dyn MemoryExporter>`.
    fn into_dyn(self: Arc<Self>) -> Arc<dyn MemoryExporter>;

    /// The same object as `&dyn MemoryExporter`: lets the negotiator use a device it was
    /// handed without taking a reference count (a locked write to a line every thread using
    /// the device shares) beyond the one the registry keeps.
    fn as_dyn(&self) -> &dyn MemoryExporter;
}

impl<T: MemoryExporter + 'static> IntoDynExporter for T {
    fn into_dyn(self: Arc<Self>) -> Arc<dyn MemoryExporter> {
        self
    }
    fn as_dyn(&self) -> &dyn MemoryExporter {
        self
    }
}

impl IntoDynExporter for dyn MemoryExporter {
    fn into_dyn(self: Arc<Self>) -> Arc<dyn MemoryExporter> {
        self
    }
    fn as_dyn(&self) -> &dyn MemoryExporter {
        self
    }
}
