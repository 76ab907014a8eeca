//! The domain suite's entry points: [`check_domain`] runs every contract check of
//! [`IommuDomain`] on a fresh domain each, and [`DomainConfig`] says what the checks may assume.

use super::{
    domain_batch, domain_flush, domain_iova, domain_map, domain_piece, domain_refusals, Violation,
};
use crate::addr::PhysAddr;
use crate::traits::{DomainKind, IommuDomain};
use std::sync::Arc;

/// When a domain's IOTLB forgets an unmapped IOVA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationMode {
    /// `unmap` invalidates before it returns: nothing stale is ever usable (Linux
    /// `iommu.strict=1`, VFIO type1).
    Strict,
    /// `flush` queues; the queue is performed after at most `max_flushes` flushes, and until then
    /// `dma_translate` may still answer an unmapped IOVA with its old page (Linux's flush queue).
    Lazy {
        /// The bound: a stale translation still usable after this many flushes is a violation.
        max_flushes: usize,
    },
}

/// What the domain checks may assume of the implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainConfig {
    /// Strict or lazy invalidation.
    pub invalidation: InvalidationMode,
    /// The first byte of 16 MiB of physical memory the domain can map (2 MiB aligned). Checks
    /// map only inside it; a domain that maps only registered memory (VFIO) registers it first.
    pub phys: PhysAddr,
}

/// Bytes of physical memory the checks map, from [`DomainConfig::phys`].
pub const PHYS_SPAN: u64 = 16 << 20;

impl DomainConfig {
    /// A strict domain that can map the 16 MiB at 1 GiB.
    pub fn strict() -> Self {
        Self {
            invalidation: InvalidationMode::Strict,
            phys: PhysAddr(1 << 30),
        }
    }

    /// A lazy domain whose queue is performed within `max_flushes` flushes.
    pub fn lazy(max_flushes: usize) -> Self {
        Self {
            invalidation: InvalidationMode::Lazy { max_flushes },
            ..Self::strict()
        }
    }

    /// The same, mapping the 16 MiB at `phys` instead.
    pub fn with_phys(self, phys: PhysAddr) -> Self {
        Self { phys, ..self }
    }
}

impl Default for DomainConfig {
    fn default() -> Self {
        Self::strict()
    }
}

/// One contract check of a domain.
pub type DomainCheck = fn(&dyn IommuDomain, &DomainConfig) -> Result<(), Violation>;

/// The checks of a translated domain, in the order [`check_domain`] runs them, with their names.
pub const TRANSLATED_CHECKS: &[(&str, DomainCheck)] = &[
    ("map argument refusals", domain_refusals::check_map_refusals),
    ("all-or-nothing map", domain_map::check_all_or_nothing),
    ("translate", domain_map::check_translate),
    ("unmap return values", domain_map::check_unmap_returns),
    (
        "unmap across page sizes",
        domain_map::check_unmap_mixed_sizes,
    ),
    ("unmap refuses splits", domain_map::check_unmap_split),
    ("flush", domain_flush::check_flush),
    (
        "IOVA reuse before the flush",
        domain_flush::check_iova_reuse,
    ),
    ("IOVA allocation", domain_iova::check_iova_alloc),
    ("batching", domain_batch::check_batching),
    ("unmap_and_free", domain_batch::check_unmap_and_free),
    ("map_piece", domain_piece::check_map_piece),
];
// Injected faults at every step need the implementation's injection point, so they are not in
// this table: see `check_map_under_faults`, which takes a closure that arms it.

/// The checks of an identity or blocked domain.
pub const UNTRANSLATED_CHECKS: &[(&str, DomainCheck)] = &[(
    "identity and blocked domains",
    domain_refusals::check_untranslated,
)];

/// [`check_domain_with`] for a strict domain that can map the 16 MiB at 1 GiB.
pub fn check_domain(factory: impl Fn() -> Arc<dyn IommuDomain>) -> Result<(), Violation> {
    check_domain_with(factory, &DomainConfig::default())
}

/// Runs every check that applies to the domains `factory` makes, each on a fresh domain, and
/// returns the first violation. Translated domains get [`TRANSLATED_CHECKS`], identity and
/// blocked ones [`UNTRANSLATED_CHECKS`]. The concurrent [`stress_domain`](super::stress_domain)
/// is separate (it runs for a time budget).
pub fn check_domain_with(
    factory: impl Fn() -> Arc<dyn IommuDomain>,
    cfg: &DomainConfig,
) -> Result<(), Violation> {
    let checks = match factory().kind() {
        DomainKind::Translated => TRANSLATED_CHECKS,
        DomainKind::Identity | DomainKind::Blocked => UNTRANSLATED_CHECKS,
    };
    for (_, check) in checks {
        let domain = factory();
        check(&*domain, cfg)?;
    }
    Ok(())
}
