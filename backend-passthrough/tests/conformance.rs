//! The conformance suite against the passthrough backend: the identity domain, the platform,
//! and locked host memory (which needs root to read page frame numbers; without it the test
//! says why and checks only that the library refuses with that reason).

use backend_passthrough::{BarExporter, IdentityDomain, LockedHostMemory, PassthroughPlatform};
use p2p_core::conformance::{check_domain, check_exporter, check_platform};
use p2p_core::testing::TestHostMemory;
use p2p_core::topology::presets;
use p2p_core::traits::{IommuDomain, MemoryExporter};
use std::sync::Arc;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[test]
fn conformance_identity_domain() {
    check_domain(|| Arc::new(IdentityDomain::new()) as Arc<dyn IommuDomain>)
        .unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn conformance_passthrough_platform() {
    let topo = presets::workstation().unwrap_or_else(|e| panic!("{e}"));
    let host: Arc<dyn MemoryExporter> = Arc::new(TestHostMemory::new(1 << 30, 1 << 20));
    let platform = PassthroughPlatform::new(topo.clone(), host);
    check_platform(&platform).unwrap_or_else(|v| panic!("{v}"));
    for (dev, ep) in topo.endpoints() {
        for bar in &ep.bars {
            let e = BarExporter::new(&topo, dev, bar.index).unwrap_or_else(|e| panic!("{e}"));
            check_exporter(&e, None).unwrap_or_else(|v| panic!("{dev} BAR{}: {v}", bar.index));
        }
    }
}

#[test]
fn conformance_locked_host_memory() {
    check_locked(LockedHostMemory::new(4 << 20, 0), "anonymous");
}

/// The memfd buffer too: its chunks name the memfd, one file at one distance from the offsets.
#[test]
fn conformance_memfd_host_memory() {
    check_locked(LockedHostMemory::memfd(4 << 20, 0), "memfd");
}

fn check_locked(made: p2p_core::Result<LockedHostMemory>, what: &str) {
    let mem = match made {
        Ok(mem) => mem,
        Err(e) if !is_root() => {
            let err = e.to_string();
            assert!(err.contains("CAP_SYS_ADMIN"), "{err}");
            println!("not root: the library refused with: {err}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    println!(
        "locked host memory ({what}): {:?}, {} bytes",
        mem.backing(),
        mem.len()
    );
    check_exporter(&mem, None).unwrap_or_else(|v| panic!("{v}"));
    let host: Arc<dyn MemoryExporter> = Arc::new(mem);
    let topo = presets::workstation().unwrap_or_else(|e| panic!("{e}"));
    check_platform(&PassthroughPlatform::new(topo, host)).unwrap_or_else(|v| panic!("{v}"));
}
