//! The conformance stress check (`p2p_core::conformance::stress_domain`) on the software IOMMU in
//! both formats and both flush policies: several threads mapping overlapping ranges of mixed sizes
//! while others allocate IOVAs, then a model check; afterwards every page-table frame but the
//! root is freed by the flush.

use backend_iommu::{ArmLpaeS2, FlushPolicy, Format, SoftIommu, VtdSecondLevel};
use p2p_core::conformance::{stress_domain, StressConfig};
use p2p_core::IommuDomain;
use std::sync::Arc;

fn stress<F: Format>(policy: FlushPolicy) {
    let mut collisions = 0;
    for seed in 0..4 {
        let d = Arc::new(SoftIommu::<F>::new(policy).unwrap());
        let report = stress_domain(d.clone(), &StressConfig::quick(seed))
            .unwrap_or_else(|e| panic!("{} {policy:?}: {e}", F::NAME));
        assert!(report.maps > 0, "{report:?}");
        collisions += report.collisions;
        d.flush_all().unwrap();
        assert_eq!(
            d.live_frames(),
            1,
            "{} {policy:?} seed {seed}: tables leaked",
            F::NAME
        );
    }
    assert!(
        collisions > 0,
        "the threads never overlapped: the check proved little"
    );
}

#[test]
fn vtd_strict() {
    stress::<VtdSecondLevel>(FlushPolicy::Strict);
}

#[test]
fn vtd_lazy() {
    stress::<VtdSecondLevel>(FlushPolicy::Lazy { batch: 16 });
}

#[test]
fn arm_strict() {
    stress::<ArmLpaeS2>(FlushPolicy::Strict);
}

#[test]
fn arm_lazy() {
    stress::<ArmLpaeS2>(FlushPolicy::Lazy { batch: 16 });
}
