//! Identity-DMA backend of p2pdma for Linux.
//!
//! With no IOMMU translating (no IOMMU, `iommu=pt`, identity default domains), a device reaches
//! memory by its bus address:
//!
//! - [`IdentityDomain`]: the domain every device is in; nothing is mapped, nothing allocated.
//! - [`BarExporter`] (from p2p-core, re-exported): a peer's BAR, whose bus address is its CPU
//!   physical address plus the host bridge's window offset (read from sysfs by
//!   [`p2p_core::topology::sysfs`]).
//! - [`LockedHostMemory`]: host RAM, allocated and locked (huge pages when available) and
//!   translated to physical addresses through `/proc/self/pagemap`.
//! - [`PassthroughPlatform`]: the machine, from its sysfs tree.
//!
//! The negotiator does the rest: a device whose DMA mask does not reach an exporter's top bus
//! address gets a bounce plan or a refusal, as the caller's policy says.
//!
//! ```
//! use backend_passthrough::{BarExporter, PassthroughPlatform};
//! use p2p_core::prelude::*;
//! use p2p_core::testing::{TestHostMemory, TestImporter};
//! use p2p_core::topology::{presets, Bar};
//! use std::sync::Arc;
//! # fn main() -> p2p_core::Result<()> {
//! let topo = presets::workstation()?;
//! let (gpu, _) = topo.endpoints().find(|(_, e)| e.class == p2p_core::topology::DeviceClass::Gpu).unwrap();
//! let (nic, _) = topo.endpoints().find(|(_, e)| e.class == p2p_core::topology::DeviceClass::Nic).unwrap();
//! let index = topo.endpoint(gpu)?.bars[0].index;
//! let bar: Arc<dyn MemoryExporter> = Arc::new(BarExporter::new(&topo, gpu, index)?);
//! let platform = Arc::new(PassthroughPlatform::new(topo, Arc::new(TestHostMemory::new(1 << 30, 1 << 20))));
//! let negotiator = Negotiator::new(platform);
//! let caps = ImporterCaps { flags: ImporterFlags::ODP | ImporterFlags::P2P, dma_mask: dma_mask(64), max_segment: 0 };
//! let nic: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(nic, caps));
//! let plan = negotiator.negotiate(&*bar, &*nic, Access::READ | Access::WRITE, &Policy::default())?;
//! println!("{}", plan.strategy);
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod domain;
mod host_memory;
#[allow(unsafe_code)]
pub mod os;
mod platform;

pub use domain::IdentityDomain;
pub use host_memory::LockedHostMemory;
pub use os::locked::{Backing, LockedRegion};
pub use os::pagemap::Pagemap;
pub use p2p_core::export::BarExporter;
pub use platform::PassthroughPlatform;
