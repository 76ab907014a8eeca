//! A registry shard keeps its entries in slots, and a dropped mapping's slot goes to the next
//! mapping of the shard. An invalidation collects the keys (slot and id) of the mappings it
//! covers under the lock, then visits them one at a time without it: a mapping dropped in
//! between, whose slot a new mapping took, must be skipped, not mistaken for the newcomer.

mod common;

use common::movable_gpu_and_odp_caps;
use p2p_core::prelude::*;
use p2p_core::testing::*;
use std::sync::{Arc, Mutex};

const RW: Access = Access::READ.union(Access::WRITE);

/// Runs inside the first invalidation notice.
type Hook = Box<dyn FnOnce() + Send>;

/// A NIC whose first invalidation notice runs a hook (with no negotiator lock held) before it
/// acknowledges.
struct HookedNic {
    inner: TestImporter,
    hook: Mutex<Option<Hook>>,
}

impl std::fmt::Debug for HookedNic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedNic").finish_non_exhaustive()
    }
}

impl DmaImporter for HookedNic {
    fn device(&self) -> PciAddr {
        self.inner.device()
    }
    fn caps(&self) -> ImporterCaps {
        self.inner.caps()
    }
    fn invalidate(&self, notice: &Invalidation) -> Result<()> {
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        self.inner.invalidate(notice)
    }
}

fn page(i: u64) -> AddrRange<Offset> {
    AddrRange::new(Offset(i * 4096), 4096).unwrap()
}

/// Mappings A (page 0) and B (page 1) are covered by an invalidation of pages 0–1. While the
/// NIC handles A's notice, B is dropped and C (page 8, outside the invalidation) is set up: C
/// takes B's slot (a shard reuses the slot freed last). The invalidation must tear down A only;
/// C stays live and its NIC hears of nothing but A.
#[test]
fn an_invalidation_skips_a_slot_reused_after_it_collected_the_keys() {
    let (topo, gpu, caps) = movable_gpu_and_odp_caps();
    let nic = Arc::new(HookedNic {
        inner: TestImporter::new("0000:05:00.0".parse().unwrap(), caps),
        hook: Mutex::new(None),
    });
    let neg = Arc::new(Negotiator::new(Arc::new(TestPlatform::new(
        topo,
        DomainKind::Translated,
    ))));
    let p = Policy::default();
    let a = neg.map(&gpu, &nic, page(0), RW, &p).unwrap();
    let b = neg.map(&gpu, &nic, page(1), RW, &p).unwrap();
    let b_id = b.id();
    let c_slot: Arc<Mutex<Option<Mapping>>> = Arc::default();
    {
        let (neg, gpu, nic2, c_slot) = (neg.clone(), gpu.clone(), nic.clone(), c_slot.clone());
        *nic.hook.lock().unwrap() = Some(Box::new(move || {
            drop(b);
            let c = neg.map(&gpu, &nic2, page(8), RW, &Policy::default());
            *c_slot.lock().unwrap() = Some(c.expect("page 8 is not being invalidated"));
        }));
    }
    let report = neg
        .invalidate(
            gpu.id(),
            AddrRange::new(Offset(0), 2 * 4096).unwrap(),
            InvalidationKind::Move,
        )
        .unwrap();
    let c = c_slot.lock().unwrap().take().expect("the hook ran");
    assert_ne!(c.id(), b_id);
    assert_eq!(report.mappings, 1, "only A was live and covered");
    assert!(!a.is_live());
    assert!(c.is_live(), "the newcomer in B's slot was left alone");
    let told: Vec<u64> = nic
        .inner
        .invalidations()
        .iter()
        .map(|n| n.mapping)
        .collect();
    assert_eq!(told, [a.id()]);
    let ids: Vec<u64> = neg.registry().all().iter().map(|m| m.id).collect();
    assert_eq!(ids, [a.id(), c.id()]);
}

/// Ids and slots are per registry: a mapping of one negotiator has the key of another's
/// mapping of the same exporter. Re-faulting it through the other negotiator is refused and
/// leaves that negotiator's mapping as it was.
#[test]
fn a_refault_through_another_negotiator_is_refused() {
    let (topo, gpu, caps) = movable_gpu_and_odp_caps();
    let nic = Arc::new(TestImporter::new("0000:05:00.0".parse().unwrap(), caps));
    let negotiator = || {
        Negotiator::new(Arc::new(TestPlatform::new(
            topo.clone(),
            DomainKind::Translated,
        )))
    };
    let (a, b) = (negotiator(), negotiator());
    let p = Policy::default();
    let on_a = a.map(&gpu, &nic, page(0), RW, &p).unwrap();
    a.invalidate(gpu.id(), page(0), InvalidationKind::Move)
        .unwrap();
    let on_b = b.map(&gpu, &nic, page(3), RW, &p).unwrap();
    assert_eq!(on_a.id(), on_b.id(), "the same id in both registries");
    assert!(matches!(
        b.refault(&on_a, &p),
        Err(Error::CannotRefault { .. })
    ));
    assert!(on_b.is_live());
    assert_eq!(on_b.range(), page(3));
    assert!(!on_a.is_live());
    assert!(
        a.refault(&on_a, &p).is_ok(),
        "its own negotiator re-faults it"
    );
    assert!(on_a.is_live());
}
