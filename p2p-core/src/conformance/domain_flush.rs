//! Invalidation as [`IommuDomain`]'s contract states it: after an unmap the table walk
//! ([`translate`](IommuDomain::translate)) answers nothing at once; what a device's request sees
//! ([`dma_translate`](IommuDomain::dma_translate)) answers nothing at once in a strict domain, and
//! within a bounded number of flushes in a lazy one; and a freed IOVA range is not handed out
//! again while a stale translation of it may still be usable.

use super::scratch::{Scratch, RW};
use super::suite::{DomainConfig, InvalidationMode};
use super::Violation;
use crate::addr::{AddrRange, Iova, PhysAddr};
use crate::traits::IommuDomain;

const FILL: &str = "IommuDomain::dma_translate of a mapped IOVA answers what translate answers";
const WALK: &str = "IommuDomain::translate answers nothing for an IOVA once its unmap returned";
const STRICT: &str = "a strict IommuDomain's dma_translate answers nothing for an IOVA once its \
                      unmap returned";
const LAZY: &str = "a lazy IommuDomain's dma_translate answers an unmapped IOVA with nothing or \
                    its old page, and with nothing after at most DomainConfig's max_flushes \
                    flushes";
const FLUSHED: &str = "after IommuDomain::unmap and a flush that succeeds (a lazy domain: once \
                       its queue is performed) neither translate nor dma_translate answers";
const REUSE: &str = "IommuDomain::alloc_iova does not hand out a freed range again while a \
                     translation of it may still be usable (dma_translate still answers)";

/// A device's view of a mapped IOVA matches the walk; after the unmap the walk answers nothing,
/// the device's view answers nothing (strict) or only the old page until a bounded number of
/// flushes (lazy), and after the flush neither answers.
pub fn check_flush(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    let pg = s.min_page()?;
    let w = s.window(4 * pg)?.0;
    s.rule(FILL);
    let p = s.phys(0);
    s.map(w, p, pg, RW)?;
    s.call(format!("dma_translate({:#x})", w + 0x10));
    match d.dma_translate(Iova(w + 0x10)) {
        Some(t) if t.phys == PhysAddr(p.0 + 0x10) && t.access == RW => {}
        got => return Err(s.fail(format!("answered {got:?}, expected {p}+0x10 {RW:?}"))),
    }
    s.rule(WALK);
    s.unmap(w, pg, pg)?;
    s.expect_none(w, "right after the unmap")?;
    drain(&mut s, w, p)?;
    s.rule(FLUSHED);
    flush(&mut s)?;
    s.expect_none(w, "after the flush")?;
    s.call(format!("dma_translate({w:#x})"));
    if let Some(t) = d.dma_translate(Iova(w)) {
        return Err(s.fail(format!("dma_translate answered {}", t.phys)));
    }
    s.finish();
    Ok(())
}

/// Calls `flush`, failing the current rule if it fails.
fn flush(s: &mut Scratch<'_>) -> Result<(), Violation> {
    s.call("flush()".into());
    s.d.flush()
        .map_err(|e| s.fail(format!("flush failed: {e}")))
}

/// After the unmap of `w` (which mapped `p`): strict, `dma_translate` answers nothing now;
/// lazy, it answers nothing or `p`, and nothing after at most `max_flushes` flushes.
fn drain(s: &mut Scratch<'_>, w: u64, p: PhysAddr) -> Result<(), Violation> {
    let max_flushes = match s.cfg.invalidation {
        InvalidationMode::Strict => {
            s.rule(STRICT);
            s.call(format!("dma_translate({w:#x})"));
            return match s.d.dma_translate(Iova(w)) {
                None => Ok(()),
                Some(t) => Err(s.fail(format!("answered {} {:?}", t.phys, t.access))),
            };
        }
        InvalidationMode::Lazy { max_flushes } => max_flushes,
    };
    s.rule(LAZY);
    for flushes in 0..=max_flushes {
        match s.d.dma_translate(Iova(w)) {
            None => return Ok(()),
            Some(t) if t.phys != p => {
                return Err(s.fail(format!(
                    "after {flushes} flushes dma_translate({w:#x}) answered {}, which was never \
                     mapped there",
                    t.phys
                )))
            }
            Some(_) if flushes == max_flushes => {
                return Err(s.fail(format!(
                    "dma_translate({w:#x}) still answers {p} after {flushes} flushes"
                )))
            }
            Some(_) => flush(s)?,
        }
    }
    Ok(())
}

/// Maps a range, lets a device's request fill the IOTLB, unmaps it and frees it without a
/// flush; the next allocations of the same size must not return it while `dma_translate` of it
/// still answers.
pub fn check_iova_reuse(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    let pg = s.min_page()?;
    s.rule(REUSE);
    let len = 16 * pg;
    let limit = s.limit();
    s.call(format!("alloc_iova({len:#x}, {limit:#x})"));
    let w = d
        .alloc_iova(len, limit)
        .map_err(|e| s.fail(format!("the allocation failed: {e}")))?;
    s.map(w.0, s.phys(0), len, RW)?;
    let filled = [w.0, w.0 + len - pg];
    for at in filled {
        s.call(format!("dma_translate({at:#x})"));
        d.dma_translate(Iova(at));
    }
    s.unmap(w.0, len, len)?;
    s.call(format!("free_iova({w}, {len:#x}) without a flush"));
    d.free_iova(w, len)
        .map_err(|e| s.fail(format!("free_iova failed: {e}")))?;
    let freed = AddrRange::new(w, len).map_err(|e| s.fail(e.to_string()))?;
    let mut fresh = Vec::new();
    for _ in 0..4 {
        s.call(format!("alloc_iova({len:#x}, {limit:#x})"));
        let a = d
            .alloc_iova(len, limit)
            .map_err(|e| s.fail(format!("the allocation failed: {e}")))?;
        fresh.push(a);
        let again = AddrRange::new(a, len).is_ok_and(|r| r.overlaps(&freed));
        if let Some((at, t)) = filled
            .iter()
            .find_map(|&at| Some((at, d.dma_translate(Iova(at))?)))
            .filter(|_| again)
        {
            return Err(s.fail(format!(
                "it returned {a} again while dma_translate({at:#x}) still answers {}",
                t.phys
            )));
        }
    }
    for a in fresh {
        let _ = d.free_iova(a, len);
    }
    s.finish();
    Ok(())
}
