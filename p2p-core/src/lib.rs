//! # p2p-core
//!
//! The vocabulary, PCIe topology, traits and mapping negotiator of p2pdma.
//!
//! Contents, one concept a module:
//!
//! - [`access`]: [`Access`] bitflags and [`DmaDirection`].
//! - [`addr`]: address newtypes that never mix ([`PhysAddr`], [`BusAddr`], [`Iova`], [`DmaAddr`],
//!   [`VirtAddr`], [`Offset`]) and ranges that never wrap.
//! - [`error`]: the one [`Error`] enum every fallible call returns.
//! - [`pci`]: [`PciAddr`] in lspci form.
//! - [`page`]: page sizes and the page-size bitmap.
//! - [`topology`]: host bridges, root ports, switches and endpoints with ACS bits; the path class
//!   (`LOC`…`SYS`) and the route Linux's p2pdma would take for any pair. Its readers and
//!   writers are cargo features, all on by default: `sysfs` (`topology::sysfs`, a Linux `/sys`
//!   tree), `nccl` (`topology::nccl`, NCCL's topology XML, with roxmltree), `json`
//!   (`topology::file`, the project's file format, with serde_json) and `render`
//!   (`topology::render`: matrix, DOT, reports); `serde` (implied by `json` and `render`)
//!   derives Serialize/Deserialize on the vocabulary. A driver that only negotiates turns them
//!   off and compiles none of serde, serde_json or roxmltree.
//! - [`traits`]: [`MemoryExporter`], [`DmaImporter`], [`IommuDomain`], [`Platform`].
//! - [`negotiate`]: the plan for an (exporter, importer, policy), mappings with merged scatter
//!   lists, the registry and the invalidation protocol for movable memory.
//! - [`export`]: exporters that need no backend (a BAR, device memory, host RAM) and the
//!   [`GrantBook`](export::GrantBook) every exporter keeps its grants in.
//! - [`reference`](mod@reference): the domain contract in its plainest form (a 4 KiB page map, an IOVA space),
//!   the state of the reference domains.
//! - [`range_alloc`]: first-fit, top-down range allocation.
//! - [`fault`]: the fault-injection countdown every injector shares.
//! - [`rand`]: the seeded generator behind everything random.
//! - [`conformance`]: checks of each trait's contract that any implementation runs in its tests.
//! - [`wrap`]: wrappers that add a behaviour to any implementation ([`wrap::Traced`]); a shared
//!   `Arc<D>` is a domain too.
//! - [`testing`]: the doubles p2p-core's tests and examples use (the simulated machine is
//!   backend-mock).
//! - Private: `hex` (hexadecimal numbers in serialized addresses, with `serde`), `sync` (the locks and atomics the
//!   loom models swap).
//!
//! **Writing a driver?** Start with the [implementer's guide](guide): a complete exporter and
//! importer of your own, what each method must guarantee, which thread calls what, and which
//! error to return.
//!
//! ```
//! use p2p_core::prelude::*;
//! use p2p_core::testing::*;
//! use std::sync::Arc;
//! # fn main() -> p2p_core::Result<()> {
//! let topo = p2p_core::topology::presets::workstation()?;
//! let gpu: PciAddr = "0000:03:00.0".parse()?;
//! let nic: PciAddr = "0000:05:00.0".parse()?;
//! let exporter = Arc::new(TestExporter::new(&topo, gpu, 1 << 20, 1024, MemoryKind::MOVABLE)?);
//! let caps = ImporterCaps { flags: ImporterFlags::ODP | ImporterFlags::P2P, dma_mask: dma_mask(64), max_segment: 1 << 16 };
//! let importer = Arc::new(TestImporter::new(nic, caps));
//! let neg = Negotiator::new(Arc::new(TestPlatform::new(topo, DomainKind::Translated)));
//!
//! let range = AddrRange::new(Offset(0), 1 << 20)?;
//! let mapping = neg.map(&exporter, &importer, range, Access::READ | Access::WRITE, &Policy::default())?;
//! assert_eq!(mapping.strategy()?, Strategy::Direct); // one switch, no ACS: bus addresses
//! assert_eq!(mapping.segments()?.len(), 16);          // 1 MiB split at 64 KiB
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod access;
pub mod addr;
pub mod conformance;
pub mod error;
pub mod export;
pub mod fault;
pub mod guide;
#[cfg(feature = "serde")]
mod hex;
pub mod negotiate;
mod own_lines;
pub mod page;
pub mod pci;
pub mod rand;
pub mod range_alloc;
pub mod reference;
mod slab;
mod sync;
pub mod testing;
pub mod topology;
pub mod traits;
pub mod wrap;

pub use access::{Access, DmaDirection};
pub use addr::{dma_mask, AddrRange, Address, BusAddr, DmaAddr, Iova, Offset, PhysAddr, VirtAddr};
pub use error::{Error, Result, VfioProblem};
pub use pci::PciAddr;
pub use traits::{DmaImporter, IommuDomain, MemoryExporter, Platform};

/// The names most users need, in one `use`.
pub mod prelude {
    pub use crate::access::{Access, DmaDirection};
    pub use crate::addr::{
        dma_mask, AddrRange, Address, BusAddr, DmaAddr, Iova, Offset, PhysAddr, VirtAddr,
    };
    pub use crate::error::{Error, Result};
    pub use crate::negotiate::{
        Fallback, Mapping, Negotiator, Plan, Policy, Reason, Segment, Strategy,
    };
    pub use crate::pci::PciAddr;
    pub use crate::topology::{PathClass, Route, Topology, TopologyBuilder};
    pub use crate::traits::*;
}
