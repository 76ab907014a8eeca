//! Checks that an implementation keeps its trait's written contract, for in-tree backends and
//! for out-of-tree ones alike: call them from your own tests with your implementation.
//!
//! ```
//! use p2p_core::conformance::{stress_domain, StressConfig};
//! use p2p_core::testing::TestDomain;
//! use p2p_core::traits::DomainKind;
//! use std::sync::Arc;
//!
//! let report = stress_domain(Arc::new(TestDomain::new(DomainKind::Translated)), &StressConfig::quick(7))
//!     .unwrap_or_else(|e| panic!("{e}"));
//! assert!(report.maps > 0);
//! ```
//!
//! Every check is seeded; a failure names the seed, so `StressConfig { seed, .. }` replays the
//! same operations (the interleaving of threads is the one thing a seed cannot fix, which is why
//! the stress checks run for a time budget rather than once).

mod domain;

pub use domain::{stress_domain, StressConfig, StressReport};
