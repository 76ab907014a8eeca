//! Mapping and unmapping as [`IommuDomain`]'s contract states them: a map is all or nothing, an
//! unmap returns the bytes it unmapped walking leaves of any size and stopping only at a hole, a
//! range cutting a larger page is refused whole, and translate answers the byte mapped there.

use super::scratch::{Scratch, RW};
use super::suite::DomainConfig;
use super::Violation;
use crate::access::Access;
use crate::addr::{is_aligned, Iova};
use crate::error::Error;
use crate::page::{PageSizes, SZ_2M};
use crate::traits::IommuDomain;

const ALL_OR_NOTHING: &str = "IommuDomain::map of a range any part of which is mapped fails \
                              with Error::AlreadyMapped and leaves nothing new mapped";
const TRANSLATE: &str = "IommuDomain::translate answers the mapped page plus the offset within \
                         it, with the access it was mapped with, and nothing where nothing is \
                         mapped";
const UNMAP_WHOLE: &str = "IommuDomain::unmap returns the bytes unmapped: all of a mapped range, \
                           none of an unmapped one";
const UNMAP_HOLE: &str = "IommuDomain::unmap stops at the first IOVA that is not mapped and \
                          returns the bytes before it";
const UNMAP_MIXED: &str = "IommuDomain::unmap walks across leaves of any size (2 MiB then 4 KiB, \
                           4 KiB then 2 MiB) and returns the whole length";
const UNMAP_SPLIT: &str = "IommuDomain::unmap of a range whose ends would cut a larger page is \
                           refused with an error and nothing unmapped";
const PHYS_CONFIG: &str = "DomainConfig::phys is 2 MiB aligned (the mixed-size checks map 2 MiB \
                           pages from it)";

/// A map overlapping a live page (at its start, its end, in its middle, or exactly) fails with
/// [`Error::AlreadyMapped`] and maps nothing of its range.
pub fn check_all_or_nothing(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    let pg = s.min_page()?;
    let w = s.window(16 * pg)?.0;
    s.rule(ALL_OR_NOTHING);
    let (live, live_phys) = (w + 2 * pg, s.phys(2 * pg));
    s.map(live, live_phys, pg, RW)?;
    for (start, pages) in [(w, 4), (live, 1), (live, 2), (w + pg, 2)] {
        let (iova, len) = (start, pages * pg);
        let phys = s.phys(8 * pg);
        s.call(format!("map {iova:#x}+{len:#x} -> {phys}"));
        let is_already = |e: &Error| matches!(e, Error::AlreadyMapped(_));
        s.expect_err(
            d.map(Iova(iova), phys, len, RW),
            is_already,
            "Error::AlreadyMapped",
        )?;
        for p in 0..pages {
            let at = iova + p * pg;
            if at == live {
                s.expect_phys(at, live_phys, RW)?;
            } else {
                s.expect_none(at, "after the refused map")?;
            }
        }
    }
    s.unmap(live, pg, pg)?;
    s.finish();
    Ok(())
}

/// Translate answers the page mapped plus the offset in it, with the access mapped, and
/// nothing beyond the mapping; an unmap spanning two maps returns both.
pub fn check_translate(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    let pg = s.min_page()?;
    let w = s.window(4 * pg)?.0;
    s.rule(TRANSLATE);
    let (a, b) = (s.phys(0), s.phys(8 * pg));
    s.map(w, a, 2 * pg, Access::READ)?;
    s.map(w + 2 * pg, b, pg, RW)?;
    for (off, phys, access) in [
        (0, a.0, Access::READ),
        (0x123, a.0 + 0x123, Access::READ),
        (pg + 0xabc, a.0 + pg + 0xabc, Access::READ),
        (2 * pg + 0x10, b.0 + 0x10, RW),
        (3 * pg - 1, b.0 + pg - 1, RW),
    ] {
        s.expect_phys(w + off, crate::addr::PhysAddr(phys), access)?;
    }
    s.expect_none(w + 3 * pg, "past the mapping")?;
    s.rule(UNMAP_WHOLE);
    s.unmap(w, 3 * pg, 3 * pg)?;
    for off in [0, pg, 2 * pg] {
        s.expect_none(w + off, "after its unmap")?;
    }
    s.finish();
    Ok(())
}

/// An unmap of a mapped range returns its length, of an unmapped one zero, and of a range
/// with a hole the bytes before the hole (what lies after the hole stays mapped).
pub fn check_unmap_returns(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    let pg = s.min_page()?;
    let w = s.window(8 * pg)?.0;
    s.rule(UNMAP_WHOLE);
    s.map(w, s.phys(0), 4 * pg, RW)?;
    s.unmap(w, 4 * pg, 4 * pg)?;
    s.expect_none(w + 3 * pg, "after its unmap")?;
    s.unmap(w, 4 * pg, 0)?;
    s.rule(UNMAP_HOLE);
    s.map(w, s.phys(0), 2 * pg, RW)?;
    s.map(w + 3 * pg, s.phys(3 * pg), pg, RW)?;
    s.unmap(w, 4 * pg, 2 * pg)?;
    s.expect_phys(w + 3 * pg, s.phys(3 * pg), RW)?;
    s.unmap(w + 3 * pg, 5 * pg, pg)?;
    s.finish();
    Ok(())
}

/// With 2 MiB pages: the scratch, its smallest page and an 8 MiB window (`None` without them).
fn huge_window<'a>(
    d: &'a dyn IommuDomain,
    cfg: &'a DomainConfig,
) -> Result<Option<(Scratch<'a>, u64, u64)>, Violation> {
    if !d.page_sizes().contains(PageSizes::SIZE_2M) {
        return Ok(None);
    }
    let mut s = Scratch::new(d, cfg);
    let pg = s.min_page()?;
    s.rule(PHYS_CONFIG);
    if !is_aligned(cfg.phys.0, SZ_2M) {
        return Err(s.fail(format!("it is {}", cfg.phys)));
    }
    let w = s.window(4 * SZ_2M)?.0;
    Ok(Some((s, pg, w)))
}

/// Where the domain has 2 MiB pages: one unmap across a 2 MiB page and 4 KiB pages (either
/// order) returns the whole length, and a hole stops it.
pub fn check_unmap_mixed_sizes(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let Some((mut s, pg, w)) = huge_window(d, cfg)? else {
        return Ok(());
    };
    s.rule(UNMAP_MIXED);
    s.map(w, s.phys(0), SZ_2M, RW)?;
    s.map(w + SZ_2M, s.phys(SZ_2M), pg, RW)?;
    s.map(w + SZ_2M + pg, s.phys(SZ_2M + pg), pg, RW)?;
    s.expect_phys(w + 0x12345, s.phys(0x12345), RW)?;
    s.unmap(w, SZ_2M + 2 * pg, SZ_2M + 2 * pg)?;
    for at in [w, w + SZ_2M / 2, w + SZ_2M, w + SZ_2M + pg] {
        s.expect_none(at, "after the unmap")?;
    }
    s.map(w + SZ_2M - pg, s.phys(SZ_2M - pg), pg, RW)?;
    s.map(w + SZ_2M, s.phys(SZ_2M), SZ_2M, RW)?;
    s.unmap(w + SZ_2M - pg, SZ_2M + pg, SZ_2M + pg)?;
    s.rule(UNMAP_HOLE);
    s.map(w, s.phys(0), SZ_2M, RW)?;
    s.map(w + SZ_2M, s.phys(SZ_2M), pg, RW)?;
    s.map(w + SZ_2M + 2 * pg, s.phys(SZ_2M + 2 * pg), pg, RW)?;
    s.unmap(w, SZ_2M + 3 * pg, SZ_2M + pg)?;
    s.expect_phys(w + SZ_2M + 2 * pg, s.phys(SZ_2M + 2 * pg), RW)?;
    s.unmap(w + SZ_2M + 2 * pg, pg, pg)?;
    s.finish();
    Ok(())
}

/// Where the domain has 2 MiB pages: an unmap whose range cuts a 2 MiB page at its start (at
/// the page's first byte or its middle) or at its end is refused with nothing unmapped.
pub fn check_unmap_split(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let Some((mut s, pg, w)) = huge_window(d, cfg)? else {
        return Ok(());
    };
    split_refused(&mut s, w, pg)?;
    s.finish();
    Ok(())
}

/// A 2 MiB page cut at the start of the range (twice) or at its end: refused, nothing unmapped.
fn split_refused(s: &mut Scratch<'_>, w: u64, pg: u64) -> Result<(), Violation> {
    s.rule(UNMAP_SPLIT);
    let top = w + 2 * SZ_2M;
    s.map(w, s.phys(0), SZ_2M, RW)?;
    s.map(top - pg, s.phys(2 * SZ_2M - pg), pg, RW)?;
    s.map(top, s.phys(2 * SZ_2M), SZ_2M, RW)?;
    for (iova, len) in [(w, pg), (w + SZ_2M / 2, SZ_2M / 2), (top - pg, 2 * pg)] {
        s.call(format!("unmap({iova:#x}, {len:#x})"));
        if let Ok(n) = s.d.unmap(Iova(iova), len) {
            return Err(s.fail(format!("returned Ok({n:#x}), expected a refusal")));
        }
        s.expect_phys(w, s.phys(0), RW)?;
        s.expect_phys(w + SZ_2M - pg, s.phys(SZ_2M - pg), RW)?;
        s.expect_phys(top - pg, s.phys(2 * SZ_2M - pg), RW)?;
        s.expect_phys(top, s.phys(2 * SZ_2M), RW)?;
    }
    s.unmap(w, SZ_2M, SZ_2M)?;
    s.unmap(top - pg, SZ_2M + pg, SZ_2M + pg)
}
