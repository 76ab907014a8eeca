//! The simulator's behaviours as wrappers around any [`IommuDomain`](p2p_core::IommuDomain), so
//! that the software IOMMU, the VFIO domain, the passthrough domains and out-of-tree domains go
//! through the same oracle as the reference [`MockDomain`](crate::MockDomain):
//!
//! - [`Sanitized`]: logs every call to the machine's event log and applies the DMA sanitizer's
//!   domain checks (dma-debug's `check_unmap`: unmap of nothing, unmap of another size), and
//!   classifies each device translation (fresh, stale IOTLB entry, fault).
//! - [`Faulty`]: the machine's one fault-injection mechanism ([`FaultInjector`](crate::FaultInjector))
//!   at the domain's injection points: page-table memory on map, IOTLB flush timeouts.
//!
//! ```
//! use backend_iommu::{FlushPolicy, SoftIommu, VtdSecondLevel};
//! use backend_mock::wrap::{Faulty, Sanitized};
//! use backend_mock::{EventLog, FaultInjector, FaultPoint, Sanitizer, SanitizerMode};
//! use p2p_core::prelude::*;
//! use std::sync::Arc;
//! let log = Arc::new(EventLog::default());
//! let sanitizer = Arc::new(Sanitizer::new(SanitizerMode::Collect, log.clone()));
//! let faults = Arc::new(FaultInjector::new(7));
//! let nic: PciAddr = "0000:05:00.0".parse().unwrap();
//! let soft = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
//! // One line: any domain, sanitized and with injectable faults.
//! let d = Faulty::new(Sanitized::new(soft, nic, log.clone(), sanitizer.clone()), faults.clone(), log.clone());
//! faults.fail_nth(1);
//! assert!(d.map(Iova(0x10_0000), PhysAddr(0x8000), 0x1000, Access::READ).is_err());
//! d.map(Iova(0x10_0000), PhysAddr(0x8000), 0x1000, Access::READ).unwrap();
//! assert_eq!(d.unmap(Iova(0x10_0000), 0x2000).unwrap(), 0x1000); // a wrong-size unmap...
//! assert_eq!(sanitizer.findings().len(), 1);                     // ...is a finding
//! ```

mod faulty;
mod sanitized;

pub use faulty::Faulty;
pub use sanitized::{Lookup, Sanitized};
