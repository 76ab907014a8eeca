//! A mapping keeps its importer's domain, but not as a clone of the platform's `Arc`: threads
//! mapping through one domain would all write its one reference count. The registry shard wraps
//! the domain once and mappings share the wrapper, so the platform's count does not move per
//! mapping; and the mappings still unmap from the domain they were made in.

use p2p_core::prelude::*;
use p2p_core::testing::*;
use p2p_core::topology::presets;
use std::sync::Arc;

const RW: Access = Access::READ.union(Access::WRITE);

#[test]
fn mappings_do_not_clone_the_platforms_domain_each() {
    // ACS redirects peer traffic to the root: the plan maps through the NIC's domain.
    let topo = presets::acs_switch().unwrap();
    let gpu = Arc::new(
        TestExporter::new(
            &topo,
            "0000:03:00.0".parse().unwrap(),
            1 << 20,
            256,
            MemoryKind::FIXED,
        )
        .unwrap(),
    );
    let nic_addr: PciAddr = "0000:05:00.0".parse().unwrap();
    let caps = ImporterCaps {
        flags: ImporterFlags::P2P,
        ..ImporterCaps::default()
    };
    let nic = Arc::new(TestImporter::new(nic_addr, caps));
    let platform = Arc::new(TestPlatform::new(topo, DomainKind::Translated));
    let neg = Negotiator::new(platform.clone());
    let page = |i: u64| AddrRange::new(Offset(i * 4096), 4096).unwrap();
    let first = neg
        .map(&gpu, &nic, page(0), RW, &Policy::default())
        .unwrap();
    assert_eq!(first.strategy().unwrap(), Strategy::ViaIommu);
    let domain = platform.domain(nic_addr).unwrap();
    let count = Arc::strong_count(&domain);
    let more: Vec<Mapping> = (1..32)
        .map(|i| {
            neg.map(&gpu, &nic, page(i), RW, &Policy::default())
                .unwrap()
        })
        .collect();
    assert_eq!(
        Arc::strong_count(&domain),
        count,
        "31 more mappings cloned the platform's domain"
    );
    // Each still translates through that domain, and unmaps from it when dropped.
    let iova = |m: &Mapping| m.iova().unwrap().unwrap().start();
    assert!(more.iter().all(|m| domain.translate(iova(m)).is_some()));
    let at = iova(&first);
    drop(first);
    drop(more);
    assert_eq!(
        domain.translate(at),
        None,
        "a dropped mapping stayed mapped"
    );
}
