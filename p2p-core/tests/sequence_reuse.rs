//! A dropped mapping's sequence is given to a later mapping of the same shard instead of a new
//! allocation: the reuse must never hand out a sequence an invalidation still holds odd, and a
//! reused sequence must still tell its new mapping of every invalidation.

mod common;

use common::movable_gpu_and_odp_caps;
use p2p_core::prelude::*;
use p2p_core::testing::*;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

const RW: Access = Access::READ.union(Access::WRITE);

struct Rig {
    neg: Arc<Negotiator>,
    gpu: Arc<TestExporter>,
    nic: Arc<TestImporter>,
}

/// Movable GPU memory and an ODP importer: mappings pin nothing, so invalidations proceed.
fn rig() -> Rig {
    let (topo, gpu, caps) = movable_gpu_and_odp_caps();
    let nic = TestImporter::new("0000:05:00.0".parse().unwrap(), caps);
    Rig {
        neg: Arc::new(Negotiator::new(Arc::new(TestPlatform::new(
            topo,
            DomainKind::Translated,
        )))),
        gpu,
        nic: Arc::new(nic),
    }
}

fn page(i: u64) -> AddrRange<Offset> {
    AddrRange::new(Offset(i * 4096), 4096).unwrap()
}

impl Rig {
    fn map(&self, range: AddrRange<Offset>) -> Mapping {
        self.neg
            .map(&self.gpu, &self.nic, range, RW, &Policy::default())
            .unwrap()
    }
}

/// A mapping dropped while an invalidation holds its sequence odd: the next mapping, of a range
/// the invalidation does not cover, set up on the thread holding the invalidation, must not get
/// that sequence (its set-up would wait for the invalidation forever).
#[test]
fn a_sequence_an_invalidation_holds_is_not_reused() {
    let r = rig();
    let held = r.map(page(0));
    let guard = r
        .neg
        .begin_invalidation(r.gpu.id(), page(0), InvalidationKind::Move)
        .unwrap();
    drop(held);
    // Set up on another thread so that a wrong reuse fails the test instead of hanging it.
    let (tx, rx) = mpsc::channel();
    let (neg, gpu, nic) = (r.neg.clone(), r.gpu.clone(), r.nic.clone());
    std::thread::spawn(move || {
        let m = neg.map(&gpu, &nic, page(8), RW, &Policy::default());
        let _ = tx.send(m.map(|m| (m.is_live(), m.read_begin() % 2)));
    });
    let got = rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(got, Ok(Ok((true, 0))), "the new mapping waited or failed");
    drop(guard);
}

/// Mappings set up one after another (each taking the previous one's sequence) each see an
/// invalidation of their range begin and end, and are left invalidated by it.
#[test]
fn a_reused_sequence_still_reports_invalidations() {
    let r = rig();
    for round in 0..4 {
        let m = r.map(page(round));
        let seq = m.read_begin();
        assert_eq!(seq % 2, 0, "round {round}: a reused sequence starts even");
        assert!(!m.read_retry(seq));
        let guard = r
            .neg
            .begin_invalidation(r.gpu.id(), page(round), InvalidationKind::Move)
            .unwrap();
        assert!(m.read_retry(seq), "round {round}: the invalidation began");
        assert!(!m.is_live());
        guard.end();
        assert!(m.read_retry(seq), "round {round}: it ended to a new value");
        assert_eq!(m.read_begin() % 2, 0);
    }
    assert!(r.neg.registry().is_empty());
}
