//! # backend-mock
//!
//! A deterministic simulated machine for p2pdma: host RAM and every BAR backed by bytes, GPUs
//! that export BAR memory and migrate it to host RAM, NICs whose DMA engines route requests as
//! PCIe does (ACS redirect, switch windows, host bridge, IOMMU translation), seeded fault
//! injection, an ordered event log and the DMA sanitizer. The same seed gives the same run.
//!
//! ```
//! use backend_mock::{Machine, MockConfig};
//! use p2p_core::prelude::*;
//! use p2p_core::topology::presets;
//! # fn main() -> p2p_core::Result<()> {
//! let m = Machine::new(presets::workstation()?, &MockConfig::new(7))?;
//! let gpu = m.gpu("0000:03:00.0".parse()?, 1 << 20, 256, MemoryKind::MOVABLE)?;
//! let caps = ImporterCaps { flags: ImporterFlags::ODP | ImporterFlags::P2P, dma_mask: dma_mask(64), max_segment: 0 };
//! let nic = m.nic("0000:05:00.0".parse()?, caps)?;
//! let (exp, imp): (std::sync::Arc<dyn MemoryExporter>, std::sync::Arc<dyn DmaImporter>) = (gpu.clone(), nic.clone());
//! let map = m.negotiator().map(&exp, &imp, AddrRange::new(Offset(0), 4096)?, Access::WRITE, &Policy::default())?;
//! nic.dma_write(map.segments()?[0].addr, b"peer to peer").unwrap();
//! assert_eq!(gpu.cpu_read(0, 12), b"peer to peer");
//! drop(map);
//! assert!(m.finish().is_empty());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod domain;
pub mod events;
pub mod faults;
pub mod gpu;
pub mod host;
pub mod memory;
pub mod nic;
pub mod platform;
pub mod route;
pub mod sanitizer;
pub mod story;
pub mod wrap;

pub use domain::{FlushMode, MockDomain};
pub use events::{Event, EventLog};
pub use faults::{FaultInjector, FaultPoint};
pub use gpu::MockGpu;
pub use nic::MockNic;
pub use platform::{DomainChoice, DomainFactory, Machine, MockConfig, MockIommu, MockPlatform};
pub use route::{DmaFault, Routed, Target, Via};
pub use sanitizer::Sanitizer;
pub use sanitizer::{Finding, FindingKind, SanitizerMode};
