//! The inputs [`IommuDomain::map`] must refuse, each with the error variant its contract names:
//! misaligned `iova`, `phys` or `len` ([`Error::Misaligned`]), an empty length
//! ([`Error::EmptyRange`]), a range leaving the aperture ([`Error::OutOfBounds`]), a range
//! touching a reserved region ([`Error::Reserved`]); and identity or blocked domains, which map
//! nothing ([`Error::WrongDomainKind`]).

use super::scratch::{Scratch, RW};
use super::suite::DomainConfig;
use super::Violation;
use crate::addr::{align_down, Iova, PhysAddr};
use crate::error::Error;
use crate::traits::{DomainKind, IommuDomain};

const MISALIGNED: &str = "IommuDomain::map refuses an iova, phys or len not aligned to the \
                          smallest page size with Error::Misaligned";
const EMPTY: &str = "IommuDomain::map refuses a zero length with Error::EmptyRange";
const APERTURE: &str = "IommuDomain::map refuses a range outside the aperture with \
                        Error::OutOfBounds";
const RESERVED: &str = "IommuDomain::map refuses a range touching a reserved region with \
                        Error::Reserved";
const NOTHING_MAPPED: &str = "a refused IommuDomain::map leaves nothing mapped";
const WRONG_KIND: &str = "IommuDomain::map of an identity or blocked domain fails with \
                          Error::WrongDomainKind";
const IDENTITY: &str = "an identity domain translates every IOVA outside its reserved regions \
                        to the same physical address; a blocked one translates none";

/// Reserved regions checked at most (a VFIO domain can report many holes).
const MAX_REGIONS: usize = 8;

fn is_misaligned(e: &Error) -> bool {
    matches!(e, Error::Misaligned { .. })
}

/// Misaligned, empty, out-of-aperture and reserved maps are refused with their variants, and
/// leave nothing mapped.
pub fn check_map_refusals(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    let page = min_page(&mut s)?;
    let w = s.window(4 * page)?.0;
    let p = s.phys(0);
    s.rule(MISALIGNED);
    let half = page / 2;
    for (iova, phys, len) in [
        (w + half, p, page),
        (w, PhysAddr(p.0 + half), page),
        (w, p, page + half),
    ] {
        refuse(&mut s, iova, phys, len, is_misaligned, "Error::Misaligned")?;
    }
    s.rule(EMPTY);
    let is_empty = |e: &Error| matches!(e, Error::EmptyRange { .. });
    refuse(&mut s, w, p, 0, is_empty, "Error::EmptyRange")?;
    s.rule(APERTURE);
    let ap = d.aperture();
    let is_oob = |e: &Error| matches!(e, Error::OutOfBounds { .. });
    let end = ap.end().0;
    if end.checked_add(2 * page).is_some() && end % page == 0 && end >= page {
        refuse(&mut s, end, p, page, is_oob, "Error::OutOfBounds")?;
        refuse(
            &mut s,
            end - page,
            p,
            2 * page,
            is_oob,
            "Error::OutOfBounds",
        )?;
    }
    s.rule(RESERVED);
    let is_reserved = |e: &Error| matches!(e, Error::Reserved { .. });
    for r in d.reserved_regions().iter().take(MAX_REGIONS) {
        let start = align_down(r.range.start().0, page);
        if !ap.contains(Iova(start)) || r.range.is_empty() {
            continue;
        }
        refuse(&mut s, start, p, page, is_reserved, "Error::Reserved")?;
        if start >= page && ap.contains(Iova(start - page)) {
            refuse(
                &mut s,
                start - page,
                p,
                2 * page,
                is_reserved,
                "Error::Reserved",
            )?;
        }
    }
    s.finish();
    Ok(())
}

/// The smallest page size, which a translated domain must have.
fn min_page(s: &mut Scratch<'_>) -> Result<u64, Violation> {
    s.rule("a translated domain has at least one page size");
    s.call("page_sizes()".into());
    s.d.page_sizes()
        .min_page()
        .ok_or_else(|| s.fail("it has none"))
}

/// `map(iova, phys, len)` fails with the error `is_want` accepts and maps nothing.
fn refuse(
    s: &mut Scratch<'_>,
    iova: u64,
    phys: PhysAddr,
    len: u64,
    is_want: fn(&Error) -> bool,
    want: &str,
) -> Result<(), Violation> {
    s.call(format!("map {iova:#x}+{len:#x} -> {phys}"));
    s.expect_err(s.d.map(Iova(iova), phys, len, RW), is_want, want)?;
    for off in [0, len.saturating_sub(1)] {
        if let Some(t) = s.d.translate(Iova(iova.wrapping_add(off))) {
            return Err(Violation::new(
                NOTHING_MAPPED,
                format!("map {iova:#x}+{len:#x} -> {phys} (refused)"),
                format!(
                    "translate({:#x}) answers {}",
                    iova.wrapping_add(off),
                    t.phys
                ),
            ));
        }
    }
    Ok(())
}

/// An identity or blocked domain refuses every map with [`Error::WrongDomainKind`]; an identity
/// domain translates an ordinary IOVA to the same address, a blocked one translates nothing.
pub fn check_untranslated(d: &dyn IommuDomain, cfg: &DomainConfig) -> Result<(), Violation> {
    let mut s = Scratch::new(d, cfg);
    s.rule(WRONG_KIND);
    let kind = d.kind();
    // Page aligned, inside any aperture, clear of the MSI window.
    let addr = ordinary_address(d);
    let is_wrong = |e: &Error| matches!(e, Error::WrongDomainKind { .. });
    s.call(format!(
        "map {addr:#x}+0x1000 -> {addr:#x} in a {kind} domain"
    ));
    s.expect_err(
        d.map(Iova(addr), PhysAddr(addr), 0x1000, RW),
        is_wrong,
        "Error::WrongDomainKind",
    )?;
    s.rule(IDENTITY);
    for a in [addr, addr + 0x123] {
        s.call(format!("translate({a:#x}) in a {kind} domain"));
        let got = (d.translate(Iova(a)), d.dma_translate(Iova(a)));
        let ok = match kind {
            DomainKind::Identity => [got.0, got.1]
                .iter()
                .all(|t| t.is_some_and(|t| t.phys == PhysAddr(a))),
            DomainKind::Blocked => got.0.is_none() && got.1.is_none(),
            DomainKind::Translated => true,
        };
        if !ok {
            return Err(s.fail(format!("translate, dma_translate answered {got:?}")));
        }
    }
    Ok(())
}

/// An IOVA in the aperture and in no reserved region (the checks' default: 256 MiB).
fn ordinary_address(d: &dyn IommuDomain) -> u64 {
    let reserved = d.reserved_regions();
    let ap = d.aperture();
    [0x1000_0000u64, 0x10_0000, 0x1_0000_0000, ap.start().0]
        .into_iter()
        .find(|&a| ap.contains(Iova(a)) && !reserved.iter().any(|r| r.range.contains(Iova(a))))
        .unwrap_or(0x1000_0000)
}
