//! The batching methods of [`IommuDomain`]: `map_pieces` (all or nothing, one map call a piece),
//! `unmap_gather` + `iotlb_sync` (nothing usable once the sync returned), `flush_all` (nothing
//! stale once it returned, in any domain), `unmap_and_free` (the pieces unmapped and synced, the
//! bytes counted, the range freed).

use super::scratch::{Scratch, RW};
use super::suite::{DomainConfig, InvalidationMode};
use super::Violation;
use crate::addr::{AddrRange, Iova, PhysAddr};
use crate::traits::{IommuDomain, IotlbGather, MapAttrs, MapPiece};

const PIECES: &str = "IommuDomain::map_pieces maps the pieces back to back, or, if one fails, \
                      nothing of them";
const UNMAP_AND_FREE: &str = "IommuDomain::unmap_and_free unmaps every piece, returns the bytes \
                              unmapped, and after it (and, in a lazy domain, flush_all) neither \
                              translate nor dma_translate answers for them";
const GATHER: &str = "after IommuDomain::unmap_gather and the iotlb_sync of its gather (and, in \
                      a lazy domain, flush_all), neither translate nor dma_translate answers";

/// Three pieces map back to back; when the third clashes with a live page, the first two are
/// taken back. Gathered unmaps of each piece return their lengths, the gather spans them all,
/// and after the sync (and `flush_all`) nothing translates, through the IOTLB or the walk.
pub fn check_batching(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    let pg = s.min_page()?;
    let w = s.window(8 * pg)?.0;
    let piece = |i: u64| MapPiece {
        file: None,
        phys: PhysAddr(cfg.phys.0 + i * pg),
        len: pg,
        attrs: MapAttrs::empty(),
    };
    let pieces = [piece(0), piece(1), piece(2)];
    s.rule(PIECES);
    s.map(w + 6 * pg, s.phys(7 * pg), pg, RW)?; // the clash for the second try
    s.call(format!("map_pieces({w:#x}, 3 pieces of {pg:#x})"));
    if let Err(e) = d.map_pieces(Iova(w), &pieces, RW) {
        return Err(s.fail(format!("failed: {e}")));
    }
    for i in 0..3 {
        s.expect_phys(w + i * pg, pieces[i as usize].phys, RW)?;
    }
    let clash = w + 4 * pg;
    s.call(format!(
        "map_pieces({clash:#x}, 3 pieces), its third on the live page"
    ));
    if d.map_pieces(Iova(clash), &pieces, RW).is_ok() {
        return Err(s.fail("it succeeded over a live page"));
    }
    s.expect_none(clash, "after the failed map_pieces")?;
    s.expect_none(clash + pg, "after the failed map_pieces")?;
    s.rule(GATHER);
    let mut gather = IotlbGather::default();
    for i in 0..3 {
        let at = w + i * pg;
        let _ = d.dma_translate(Iova(at)); // a device used it: the IOTLB may hold it
        s.call(format!("unmap_gather({at:#x}, {pg:#x})"));
        match d.unmap_gather(Iova(at), pg, &mut gather) {
            Ok(n) if n == pg => {}
            got => return Err(s.fail(format!("returned {got:?}, expected Ok({pg:#x})"))),
        }
    }
    if gather.span() != Some((Iova(w), 3 * pg)) {
        return Err(s.fail(format!("the gather spans {:?}", gather.span())));
    }
    s.call("iotlb_sync(gather)".into());
    d.iotlb_sync(&gather)
        .map_err(|e| s.fail(format!("iotlb_sync failed: {e}")))?;
    if matches!(cfg.invalidation, InvalidationMode::Lazy { .. }) {
        s.call("flush_all()".into());
        d.flush_all()
            .map_err(|e| s.fail(format!("flush_all failed: {e}")))?;
    }
    for i in 0..3 {
        let at = w + i * pg;
        s.expect_none(at, "after the sync")?;
        if let Some(t) = d.dma_translate(Iova(at)) {
            return Err(s.fail(format!("dma_translate({at:#x}) still answers {}", t.phys)));
        }
    }
    s.unmap(w + 6 * pg, pg, pg)?;
    s.finish();
    Ok(())
}

/// An allocation of four pages, its first three mapped as two pieces (one page, then two), each
/// used by a device; `unmap_and_free` of the allocation and those pieces returns three pages'
/// bytes, and afterwards (after `flush_all` in a lazy domain) nothing of it translates. (That the
/// range is free again is not observable through the trait: an allocator may hand out any free
/// range; each implementation's own tests check it.)
pub fn check_unmap_and_free(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    let pg = s.min_page()?;
    let (len, limit) = (4 * pg, s.limit());
    s.rule(UNMAP_AND_FREE);
    s.call(format!("alloc_iova({len:#x}, {limit:#x})"));
    let w = d
        .alloc_iova(len, limit)
        .map_err(|e| s.fail(format!("the allocation failed: {e}")))?;
    let range = AddrRange::new(w, len).map_err(|e| s.fail(e.to_string()))?;
    let pieces = [
        MapPiece::at(s.phys(0), pg, MapAttrs::empty()),
        MapPiece::at(s.phys(4 * pg), 2 * pg, MapAttrs::empty()),
    ];
    s.call(format!("map_pieces({w}, one page then two)"));
    if let Err(e) = d.map_pieces(w, &pieces, RW) {
        let _ = d.free_iova(w, len);
        return Err(s.fail(format!("failed: {e}")));
    }
    let used = [w.0, w.0 + pg, w.0 + 2 * pg];
    for at in used {
        let _ = d.dma_translate(Iova(at)); // a device used it: the IOTLB may hold it
    }
    let mapped = [(w, pg), (Iova(w.0 + pg), 2 * pg)];
    s.call(format!("unmap_and_free({range}, {mapped:x?})"));
    match d.unmap_and_free(range, &mapped) {
        Ok(n) if n == 3 * pg => {}
        got => return Err(s.fail(format!("returned {got:?}, expected Ok({:#x})", 3 * pg))),
    }
    if matches!(cfg.invalidation, InvalidationMode::Lazy { .. }) {
        s.call("flush_all()".into());
        d.flush_all()
            .map_err(|e| s.fail(format!("flush_all failed: {e}")))?;
    }
    for at in used {
        s.expect_none(at, "after unmap_and_free")?;
        if let Some(t) = d.dma_translate(Iova(at)) {
            return Err(s.fail(format!("dma_translate({at:#x}) still answers {}", t.phys)));
        }
    }
    s.finish();
    Ok(())
}
