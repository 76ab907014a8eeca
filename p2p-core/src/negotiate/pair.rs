//! The two devices of a mapping as setting it up sees them: borrowed, each asked once for its
//! identity. A set-up reads the exporter's id and the importer's address at every step (the
//! registry shard, the plan's facts, the domain, error messages); through the trait objects each
//! read was a dynamic call.

use crate::pci::PciAddr;
use crate::traits::{DmaImporter, ExporterId, MemoryExporter};

/// An exporter and an importer, with the identities they gave once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair<'a> {
    pub exporter: &'a dyn MemoryExporter,
    pub importer: &'a dyn DmaImporter,
    /// `exporter.id()`.
    pub id: ExporterId,
    /// `importer.device()`.
    pub device: PciAddr,
}

impl<'a> Pair<'a> {
    /// The pair, asking each device its identity (which the traits' contracts keep the same for
    /// the device's life).
    pub fn new(exporter: &'a dyn MemoryExporter, importer: &'a dyn DmaImporter) -> Self {
        Self {
            exporter,
            importer,
            id: exporter.id(),
            device: importer.device(),
        }
    }
}
