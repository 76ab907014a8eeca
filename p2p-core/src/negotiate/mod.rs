//! The mapping negotiator: plans, mappings, the registry and the invalidation protocol.
//!
//! [`decide`] is the pure rule set; [`Negotiator`] wraps it with the plan cache, establishes
//! [`Mapping`]s, indexes them in the [`Registry`] and runs invalidations.

mod address_space;
mod decide;
mod establish;
mod invalidation;
mod mapping;
mod negotiator;
mod observer;
mod plan;
mod plan_cache;
mod policy;
pub mod protocol;
mod registry;
mod seq;
mod sg;

pub use address_space::{AddressSpace, Backing, Registration};
pub use decide::{decide, Facts};
pub use invalidation::{Invalidating, InvalidationReport};
pub use mapping::{BounceBuffer, Mapping};
pub use negotiator::Negotiator;
pub use observer::{MappingEvent, MappingObserver, TeardownCause};
pub use plan::{Isolation, Plan, Reason, Strategy};
pub use plan_cache::{CacheStats, PLAN_CACHE_CAPACITY};
pub use policy::{Fallback, Policy};
pub use registry::{MappingInfo, Registry};
pub use seq::Sequence;
pub use sg::{merge_segments, Segment};
