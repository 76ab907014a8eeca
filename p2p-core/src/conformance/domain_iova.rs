//! The IOVA allocator beside a domain, as [`IommuDomain::alloc_iova`]'s contract states it:
//! a size-aligned range whose last byte is at most the limit, inside the aperture, outside every
//! reserved region, and overlapping no live allocation.

use super::scratch::Scratch;
use super::suite::DomainConfig;
use super::Violation;
use crate::addr::{AddrRange, Iova};
use crate::traits::IommuDomain;

const ALLOC: &str = "IommuDomain::alloc_iova returns a size-aligned range whose last byte is at \
                     most the limit, inside the aperture, outside every reserved region, \
                     overlapping no live allocation";
const FREE: &str = "IommuDomain::free_iova of a live allocation succeeds";

/// Reserved regions checked at most.
const MAX_REGIONS: usize = 8;

/// Allocations of sizes from one page to 2 MiB under a 4 GiB and a 16 MiB limit, and of small
/// ranges just under each reserved region's top, keep every rule; all are freed after.
pub fn check_iova_alloc(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    s.rule("a translated domain has at least one page size");
    let pg = d
        .page_sizes()
        .min_page()
        .ok_or_else(|| s.fail("page_sizes() has none"))?;
    s.rule(ALLOC);
    let ap = d.aperture();
    let mut live: Vec<AddrRange<Iova>> = Vec::new();
    let mut limits = vec![s.limit()];
    if let Some(low) = ap.start().0.checked_add((16 << 20) - 1) {
        limits.push(low.min(s.limit()));
    }
    for limit in limits {
        for pages in [1, 2, 16, 256, 512] {
            alloc_one(&mut s, &mut live, pages * pg, limit)?;
        }
    }
    for r in d.reserved_regions().iter().take(MAX_REGIONS) {
        let Some(top) = r.range.last() else { continue };
        if r.range.start().0 >= ap.start().0.saturating_add(64 * pg) && ap.contains(top) {
            for pages in [1, 16] {
                alloc_one(&mut s, &mut live, pages * pg, top.0)?;
            }
        }
    }
    s.rule(FREE);
    for r in live {
        s.call(format!("free_iova({}, {:#x})", r.start(), r.len()));
        d.free_iova(r.start(), r.len())
            .map_err(|e| s.fail(format!("failed: {e}")))?;
    }
    s.finish();
    Ok(())
}

/// One allocation of `len` at or below `limit`, checked against every rule and `live`.
fn alloc_one(
    s: &mut Scratch<'_>,
    live: &mut Vec<AddrRange<Iova>>,
    len: u64,
    limit: u64,
) -> Result<(), Violation> {
    s.call(format!("alloc_iova({len:#x}, {limit:#x})"));
    let a =
        s.d.alloc_iova(len, limit)
            .map_err(|e| s.fail(format!("failed: {e}")))?;
    let r = AddrRange::new(a, len).map_err(|e| s.fail(format!("returned {a}: {e}")))?;
    let bad = if a.0 % len != 0 {
        Some(format!("{r} is not aligned to its size"))
    } else if r.last().is_none_or(|l| l.0 > limit) {
        Some(format!("{r} ends above the limit"))
    } else if !s.d.aperture().contains_range(&r) {
        Some(format!("{r} leaves the aperture {}", s.d.aperture()))
    } else if let Some(res) = s.d.reserved_regions().iter().find(|x| x.range.overlaps(&r)) {
        Some(format!(
            "{r} overlaps the reserved {:?} {}",
            res.kind, res.range
        ))
    } else {
        live.iter()
            .find(|l| l.overlaps(&r))
            .map(|l| format!("{r} overlaps the live allocation {l}"))
    };
    live.push(r);
    match bad {
        Some(why) => Err(s.fail(why)),
        None => Ok(()),
    }
}
