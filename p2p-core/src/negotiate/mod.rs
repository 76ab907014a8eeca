//! The mapping negotiator: plans, mappings, the registry and the invalidation protocol.
//!
//! [`decide`] is the pure rule set; [`Negotiator`] wraps it with the plan cache, establishes
//! [`Mapping`]s, indexes them in the [`Registry`] and runs invalidations.
//!
//! # Refusal
//!
//! A refusal is an answer, not a failure, until something is asked of it:
//!
//! - [`Negotiator::negotiate`] returns `Ok(plan)` whose [`Plan::strategy`] is
//!   [`Strategy::Refused`] with the first rule that failed (and every reason in
//!   [`Plan::reasons`]): the question was answered. `Err` means the question could not be asked
//!   (a device not in the topology, a domain the platform does not have).
//! - [`Negotiator::establish`] of a refused plan and [`Negotiator::map`] of a refused pair
//!   return `Err(`[`Error::Refused`](crate::Error::Refused)`)` carrying the same reason, having
//!   touched nothing (no registration, grant or IOVA).
//!
//! ```
//! # use p2p_core::prelude::*;
//! # use p2p_core::testing::*;
//! # use std::sync::Arc;
//! # fn main() -> p2p_core::Result<()> {
//! let topo = p2p_core::topology::presets::workstation()?;
//! let gpu = Arc::new(TestExporter::new(&topo, "0000:03:00.0".parse()?, 1 << 20, 256, MemoryKind::DEVICE_PRIVATE)?);
//! let nic = Arc::new(TestImporter::new("0000:05:00.0".parse()?, ImporterCaps { flags: ImporterFlags::P2P, ..ImporterCaps::default() }));
//! let neg = Negotiator::new(Arc::new(TestPlatform::new(topo, DomainKind::Translated)));
//!
//! // Device-private memory and an importer without ODP: refused, as an answer...
//! let plan = neg.negotiate(&gpu, &nic, Access::READ, &Policy::default())?;
//! assert_eq!(plan.strategy, Strategy::Refused(Reason::MovableNeedsOdp));
//! // ...and as an error once a mapping is asked for.
//! let range = AddrRange::new(Offset(0), 4096)?;
//! match neg.map(&gpu, &nic, range, Access::READ, &Policy::default()) {
//!     Err(Error::Refused { refusal, .. }) => assert_eq!(refusal, Reason::MovableNeedsOdp),
//!     other => panic!("{other:?}"),
//! }
//! assert!(matches!(neg.establish(&plan, &gpu, &nic, range), Err(Error::Refused { .. })));
//! # Ok(()) }
//! ```

mod address_space;
mod decide;
mod domain_cache;
mod entries;
mod establish;
mod importers;
mod invalidation;
mod mapping;
mod negotiator;
mod observer;
mod pair;
mod plan;
mod plan_cache;
mod policy;
pub mod protocol;
mod registry;
mod resources;
mod seq;
mod sg;

pub use address_space::{AddressSpace, Backing, Registration};
pub use decide::{decide, Facts};
pub use invalidation::{Invalidating, InvalidationReport};
pub use mapping::{BounceBuffer, Mapping};
pub use negotiator::Negotiator;
pub use observer::{MappingEvent, MappingObserver, TeardownCause};
pub use plan::{Isolation, Plan, Reason, ReasonList, Strategy};
pub(crate) use plan_cache::FxHasher;
pub use plan_cache::{CacheStats, PLAN_CACHE_CAPACITY};
pub use policy::{Fallback, Policy};
pub use registry::{MappingInfo, Registry};
pub use seq::Sequence;
pub use sg::{merge_segments, Segment};
