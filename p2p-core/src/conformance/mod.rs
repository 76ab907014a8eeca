//! Checks that an implementation keeps its trait's written contract, for in-tree backends and
//! for out-of-tree ones alike: call them from your own tests with your implementation. Each
//! check follows the trait's documentation sentence by sentence; a failure is a [`Violation`]
//! naming the rule (in the documentation's words), the calls that broke it and what happened.
//!
//! An out-of-tree domain's test, one line per configuration:
//!
//! ```
//! use p2p_core::conformance::{check_domain, check_domain_with, DomainConfig};
//! use p2p_core::testing::TestDomain;
//! use p2p_core::traits::{DomainKind, IommuDomain};
//! use std::sync::Arc;
//!
//! // A fresh domain per check: a failed check leaves its domain as it was when it failed.
//! let fresh = || Arc::new(TestDomain::new(DomainKind::Translated)) as Arc<dyn IommuDomain>;
//! check_domain(fresh).unwrap_or_else(|v| panic!("{v}"));
//! // A lazy domain says how many flushes its queue may take; a domain that maps only memory
//! // it knows says where that is (`DomainConfig::with_phys`).
//! check_domain_with(fresh, &DomainConfig::lazy(8)).unwrap_or_else(|v| panic!("{v}"));
//! ```
//!
//! And an exporter's, with its importer and platform:
//!
//! ```
//! use p2p_core::conformance::{check_exporter, check_importer, check_platform};
//! use p2p_core::testing::{TestExporter, TestImporter, TestPlatform};
//! use p2p_core::prelude::*;
//!
//! let topo = p2p_core::topology::presets::workstation().unwrap();
//! let gpu: PciAddr = "0000:03:00.0".parse().unwrap();
//! let exporter = TestExporter::new(&topo, gpu, 1 << 20, 64, MemoryKind::MOVABLE).unwrap();
//! check_exporter(&exporter, Some(&|| exporter.revoke())).unwrap_or_else(|v| panic!("{v}"));
//! let caps = ImporterCaps { flags: ImporterFlags::P2P, dma_mask: dma_mask(48), max_segment: 0 };
//! check_importer(&TestImporter::new(gpu, caps)).unwrap_or_else(|v| panic!("{v}"));
//! check_platform(&TestPlatform::new(topo, DomainKind::Translated)).unwrap_or_else(|v| panic!("{v}"));
//! ```
//!
//! Contents, one concept a file:
//!
//! - [`Violation`] (`violation.rs`): what a failed check reports.
//! - [`check_domain`], [`check_domain_with`], [`DomainConfig`] (`suite.rs`): every
//!   [`IommuDomain`](crate::IommuDomain) check, each on a fresh domain.
//! - `domain_refusals.rs`: [`check_map_refusals`] (misaligned, empty, out-of-aperture and
//!   reserved maps refused with their variants), [`check_untranslated`] (identity and blocked
//!   domains).
//! - `domain_map.rs`: [`check_all_or_nothing`], [`check_translate`], [`check_unmap_returns`],
//!   [`check_unmap_mixed_sizes`] (2 MiB and 4 KiB leaves in one unmap, holes),
//!   [`check_unmap_split`] (an unmap cutting a 2 MiB page refused whole).
//! - `domain_flush.rs`: [`check_flush`] (strict and lazy invalidation), [`check_iova_reuse`]
//!   (no IOVA reuse while a stale translation is usable).
//! - `domain_iova.rs`: [`check_iova_alloc`] (size-aligned, under the limit, in the aperture,
//!   outside reserved regions, disjoint).
//! - `domain.rs`: [`stress_domain`], the same rules under concurrent use with a model check.
//! - `exporter.rs`: [`check_exporter`] for [`MemoryExporter`](crate::MemoryExporter).
//! - `platform.rs`: [`check_platform`], [`check_importer`]: what the negotiator relies on.
//! - `domain_batch.rs`: [`check_batching`]: `map_pieces` all or nothing, `unmap_gather` +
//!   `iotlb_sync` and `flush_all` leave nothing usable; [`check_unmap_and_free`]: the same of
//!   the one-call teardown, which counts the bytes it unmapped.
//! - `domain_piece.rs`: [`check_map_piece`] (a piece maps as `map_attrs` would), and
//!   [`check_map_by_file`] for domains that map by file, given a file holding the memory.
//! - `domain_faults.rs`: [`check_map_under_faults`]: a map failed at each of its steps in turn
//!   (through the implementation's own injection point, armed by a closure) is all or nothing
//!   and leaves the domain usable.
//!
//! The stress check is seeded; a failure names the seed, so `StressConfig { seed, .. }` replays
//! the same operations (the interleaving of threads is the one thing a seed cannot fix, which is
//! why it runs for a time budget rather than once). The other checks are deterministic.

mod domain;
mod domain_batch;
mod domain_faults;
mod domain_flush;
mod domain_iova;
mod domain_map;
mod domain_piece;
mod domain_refusals;
mod exporter;
mod platform;
mod scratch;
mod suite;
mod violation;

pub use domain::{stress_domain, StressConfig, StressReport};
pub use domain_batch::{check_batching, check_unmap_and_free};
pub use domain_faults::{check_map_under_faults, ArmFault, FaultyDomain};
pub use domain_flush::{check_flush, check_iova_reuse};
pub use domain_iova::check_iova_alloc;
pub use domain_map::{
    check_all_or_nothing, check_translate, check_unmap_mixed_sizes, check_unmap_returns,
    check_unmap_split,
};
pub use domain_piece::{check_map_by_file, check_map_piece};
pub use domain_refusals::{check_map_refusals, check_untranslated};
pub use exporter::check_exporter;
pub use platform::{check_importer, check_platform};
pub use suite::{
    check_domain, check_domain_with, DomainCheck, DomainConfig, InvalidationMode, PHYS_SPAN,
    TRANSLATED_CHECKS, UNTRANSLATED_CHECKS,
};
pub use violation::Violation;
