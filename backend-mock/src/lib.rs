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
//! let map = m.negotiator().map(&gpu, &nic, AddrRange::new(Offset(0), 4096)?, Access::WRITE, &Policy::default())?;
//! nic.dma_write(map.segments()?[0].addr, b"peer to peer").unwrap();
//! assert_eq!(gpu.cpu_read(0, 12), b"peer to peer");
//! drop(map);
//! assert!(m.finish().is_empty());
//! # Ok(()) }
//! ```
//!
//! ## Your own exporter and importer on the machine
//!
//! The machine backs every BAR of its topology with bytes, so an exporter of your own (see
//! `p2p_core::guide` for writing one) whose chunks report a BAR's addresses from the topology
//! (`m.platform().topology()`) is DMA-able as it is; the CPU sees the bytes through
//! [`m.platform().memory()`](MockPlatform::memory). DMA is issued by a [`MockNic`] engine
//! ([`Machine::nic`]): your importer keeps one and does its DMA through it, while its own
//! `invalidate` decides how it stops. [`MockConfig::domains`] picks the IOMMU (`SoftIommu` in
//! VT-d format by default) and [`MockConfig::sanitizer`] what the DMA sanitizer does.
//!
//! ```
//! use backend_mock::{Machine, MockConfig, MockNic, SanitizerMode};
//! use p2p_core::export::BarExporter; // stands in for your exporter
//! use p2p_core::prelude::*;
//! use std::sync::Arc;
//!
//! /// A NIC of your own, without ODP, whose DMA engine is the machine's.
//! #[derive(Debug)]
//! struct MyNic(Arc<MockNic>);
//!
//! impl DmaImporter for MyNic {
//!     fn device(&self) -> PciAddr { self.0.device() }
//!     fn caps(&self) -> ImporterCaps { self.0.caps() }
//!     fn invalidate(&self, _: &Invalidation) -> Result<()> { Ok(()) /* fence the queues */ }
//! }
//!
//! # fn main() -> p2p_core::Result<()> {
//! let config = MockConfig { sanitizer: SanitizerMode::Collect, ..MockConfig::new(3) };
//! let m = Machine::new(p2p_core::topology::presets::acs_switch()?, &config)?;
//! let bar = Arc::new(BarExporter::new(&m.platform().topology(), "0000:03:00.0".parse()?, 0)?);
//! let caps = ImporterCaps { flags: ImporterFlags::P2P, ..ImporterCaps::default() };
//! let nic = Arc::new(MyNic(m.nic("0000:05:00.0".parse()?, caps)?));
//! let map = m.negotiator().map(&bar, &nic, AddrRange::new(Offset(0x10), 8)?, Access::WRITE, &Policy::default())?;
//! assert_eq!(map.strategy()?, Strategy::ViaIommu); // ACS sends it through the NIC's IOMMU
//! nic.0.dma_write(map.segments()?[0].addr, b"8 bytes!").expect("mapped");
//! let bar0 = m.platform().topology().endpoint("0000:03:00.0".parse()?)?.bars[0];
//! assert_eq!(m.platform().memory().read(bar0.cpu.0 + 0x10, 8), b"8 bytes!");
//! drop(map);
//! assert!(m.finish().is_empty(), "the sanitizer saw nothing wrong");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod dma;
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

pub use dma::DmaEngine;
pub use domain::{FlushMode, MockDomain};
pub use events::{Event, EventLog};
pub use faults::{FaultInjector, FaultPoint};
pub use gpu::MockGpu;
pub use nic::MockNic;
pub use platform::{DomainChoice, DomainFactory, Machine, MockConfig, MockIommu, MockPlatform};
pub use route::{DmaFault, Routed, Target, Via};
pub use sanitizer::Sanitizer;
pub use sanitizer::{Finding, FindingKind, SanitizerMode};
