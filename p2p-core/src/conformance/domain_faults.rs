//! A domain under injected faults at every step of a map: whichever internal step fails (a table
//! allocation, a frame store), the map is all or nothing and the domain stays usable.

use super::{DomainConfig, Violation};
use crate::access::Access;
use crate::addr::{Iova, PhysAddr};
use crate::page::SZ_4K;
use crate::traits::IommuDomain;

/// Arms a domain's fault injection: `Some(n)` makes the `n`-th fallible step from now fail once
/// (`n` ≥ 1), `None` disarms. What counts as a step is the implementation's (a page-table frame
/// allocation, one check of a machine's fault injector).
pub type ArmFault = Box<dyn Fn(Option<u64>)>;

/// A fresh domain and the closure that arms its fault injection.
pub type FaultyDomain = (std::sync::Arc<dyn IommuDomain>, ArmFault);

/// Pages the faulted map covers: 16, across a 1 GiB boundary, so that it needs new tables at
/// every level on both sides.
const PAGES: u64 = 16;
/// Steps tried at most: more than any in-tree domain has in such a map.
const MAX_STEPS: u64 = 64;

/// On a fresh domain from `factory` each time, fails the `n`-th step of a 16-page map across a
/// 1 GiB boundary, for `n` = 1, 2, … until the map gets through: after each failure nothing of
/// the range translates, and the same map then succeeds and unmaps whole (the domain is still
/// usable; nothing is held by the failed call). Fresh domains, because a domain that keeps its
/// tables after an unmap would have no table left to allocate on the next try.
pub fn check_map_under_faults(
    factory: impl Fn() -> FaultyDomain,
    cfg: &DomainConfig,
) -> Result<(), Violation> {
    const RULE: &str = "IommuDomain::map is all or nothing whichever step fails, and a failed map \
                        leaves the domain usable";
    let iova = Iova((1 << 30) - (PAGES / 2) * SZ_4K);
    let len = PAGES * SZ_4K;
    let rw = Access::READ | Access::WRITE;
    let call = |n: u64| {
        format!(
            "fault armed at step {n}, then map {iova}+{len:#x} -> {}",
            cfg.phys
        )
    };
    for n in 1..=MAX_STEPS {
        let (domain, arm) = factory();
        let domain = &*domain;
        arm(Some(n));
        let faulted = domain.map(iova, cfg.phys, len, rw);
        arm(None);
        if faulted.is_ok() {
            // The map has fewer steps than `n`: every step was tried.
            return unmap_whole(domain, iova, len, || call(n));
        }
        if let Some(off) = (0..len)
            .step_by(SZ_4K as usize)
            .find(|&off| domain.translate(Iova(iova.0 + off)).is_some())
        {
            return Err(Violation::new(
                RULE,
                call(n),
                format!(
                    "the map failed ({faulted:?}) but {:#x} still translates",
                    iova.0 + off
                ),
            ));
        }
        if let Err(e) = domain.map(iova, PhysAddr(cfg.phys.0), len, rw) {
            return Err(Violation::new(
                RULE,
                format!("{}, then the same map again", call(n)),
                format!("the retry failed too: {e}"),
            ));
        }
        unmap_whole(domain, iova, len, || call(n))?;
    }
    Ok(())
}

fn unmap_whole(
    domain: &dyn IommuDomain,
    iova: Iova,
    len: u64,
    call: impl Fn() -> String,
) -> Result<(), Violation> {
    match domain.unmap(iova, len) {
        Ok(n) if n == len => Ok(()),
        got => Err(Violation::new(
            "IommuDomain::unmap of a whole mapped range returns its length",
            format!("{}, then unmap({iova}, {len:#x})", call()),
            format!("returned {got:?}"),
        )),
    }
}
