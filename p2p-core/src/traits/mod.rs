//! The four traits a backend implements, in one place (as rust-vmm's `vm-memory` keeps its
//! traits beside each other): [`MemoryExporter`], [`DmaImporter`], [`IommuDomain`], [`Platform`].
//!
//! All are object safe and `Send + Sync`: drivers pick a backend at run time and hold
//! `Arc<dyn …>`.

mod chunks;
mod domain;
mod exporter;
mod importer;
mod platform;

pub use chunks::{ChunkList, ChunkListIter};
pub use domain::{
    check_iova_range, check_map_args, unmap_and_free_in_steps, DomainKind, IommuDomain,
    IotlbGather, MapAttrs, MapPiece, ReservedKind, ReservedRegion, Translation,
};
pub use exporter::{
    check_grant_access, Chunk, ExportGrant, ExporterId, ExporterInfo, FileSlice, IntoDynExporter,
    MemoryExporter, MemoryKind, Residency,
};
pub use importer::{
    DmaImporter, ImporterCaps, ImporterFlags, IntoDynImporter, Invalidation, InvalidationKind,
};
pub use platform::Platform;
