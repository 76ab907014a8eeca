//! What the negotiator relies on of a [`Platform`] and a [`DmaImporter`]: a topology whose
//! generation changes only with it, one stable domain per device with a page size and an
//! aperture, host memory that gives pinned bounce buffers, and importer capabilities that do not
//! change under it and whose DMA mask is a mask.

use super::Violation;
use crate::error::Result;
use crate::pci::PciAddr;
use crate::traits::{DmaImporter, DomainKind, IommuDomain, Platform, Residency};
use std::sync::Arc;

const GENERATION: &str =
    "Platform::topology and topology_generation keep one generation while the topology is \
                          unchanged";
const DOMAIN: &str = "Platform::domain returns the same domain (the same Arc) for a device on \
                      every call while the topology is unchanged, and fails for a device not \
                      in it";
const KIND: &str = "Platform::domain_kind is the kind of Platform::domain, with the same errors";
const TRANSLATED: &str = "a translated domain the platform hands out has a page size and a \
                          non-empty aperture";
const HOST: &str = "Platform::host_memory is one exporter of host RAM whose pinned allocations \
                    have chunks";
const STABLE: &str = "DmaImporter::device and caps answer the same on every call";
const MASK: &str = "ImporterCaps::dma_mask is a mask (2^n - 1) covering at least one page";

/// Endpoints whose domains are checked at most.
const MAX_DEVICES: usize = 64;

/// Checks the platform's topology generation, its domains (per endpoint, and for an unknown
/// device) and its host memory.
pub fn check_platform(p: &dyn Platform) -> std::result::Result<(), Violation> {
    let topo = p.topology();
    let again = p.topology();
    if topo.generation() != again.generation() {
        return Err(Violation::new(
            GENERATION,
            "topology() twice",
            format!(
                "generations {} then {}",
                topo.generation(),
                again.generation()
            ),
        ));
    }
    if p.topology_generation() != topo.generation() {
        return Err(Violation::new(
            GENERATION,
            "topology(), then topology_generation()",
            format!(
                "generation {} then {}",
                topo.generation(),
                p.topology_generation()
            ),
        ));
    }
    let devices: Vec<PciAddr> = topo.endpoints().map(|(a, _)| a).take(MAX_DEVICES).collect();
    for dev in devices {
        check_kind(p, dev)?;
        let (a, b) = (p.domain(dev), p.domain(dev));
        match (a, b) {
            (Ok(a), Ok(b)) if same(&a, &b) => check_translated(dev, &*a)?,
            (Err(_), Err(_)) => {}
            (a, b) => {
                return Err(Violation::new(
                    DOMAIN,
                    format!("domain({dev}) twice"),
                    format!("{:?} then {:?}", a.map(|d| d.kind()), b.map(|d| d.kind())),
                ))
            }
        }
    }
    if let Some(stranger) = unknown_device(p) {
        check_kind(p, stranger)?;
        if let Ok(d) = p.domain(stranger) {
            let call = format!("domain({stranger}), a device not in the topology");
            return Err(Violation::new(
                DOMAIN,
                call,
                format!("gave a {} domain", d.kind()),
            ));
        }
    }
    check_host(p)
}

/// `domain_kind(dev)` answers what `domain(dev)` does: its kind, or an error when it fails.
fn check_kind(p: &dyn Platform, dev: PciAddr) -> std::result::Result<(), Violation> {
    match (p.domain(dev).map(|d| d.kind()), p.domain_kind(dev)) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        (Err(_), Err(_)) => Ok(()),
        (a, b) => Err(Violation::new(
            KIND,
            format!("domain({dev}), then domain_kind({dev})"),
            format!("{a:?} then {b:?}"),
        )),
    }
}

/// Whether two handles are the same domain.
fn same(a: &Arc<dyn IommuDomain>, b: &Arc<dyn IommuDomain>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// A translated domain has what `establish` needs: a smallest page and an aperture.
fn check_translated(dev: PciAddr, d: &dyn IommuDomain) -> std::result::Result<(), Violation> {
    if d.kind() == DomainKind::Translated
        && (d.page_sizes().min_page().is_none() || d.aperture().is_empty())
    {
        return Err(Violation::new(
            TRANSLATED,
            format!("domain({dev})"),
            format!("page sizes {:?}, aperture {}", d.page_sizes(), d.aperture()),
        ));
    }
    Ok(())
}

/// An address the platform's topology does not know, if one is found among a few.
fn unknown_device(p: &dyn Platform) -> Option<PciAddr> {
    let topo = p.topology();
    [(0xffff, 0xff, 0x1f, 7), (0xfffe, 0xfe, 0x1e, 6)]
        .into_iter()
        .filter_map(|(s, b, d, f)| PciAddr::new(s, b, d, f).ok())
        .find(|&a| topo.lookup(a).is_err())
}

/// Host memory is one exporter, in host RAM, and a pinned bounce buffer of it has chunks.
fn check_host(p: &dyn Platform) -> std::result::Result<(), Violation> {
    let (a, b) = (p.host_memory(), p.host_memory());
    let info = a.info();
    if a.id() != b.id() || !matches!(info.residency, Residency::Host { .. }) {
        return Err(Violation::new(
            HOST,
            "host_memory() twice",
            format!("{} then {}, {}", a.id(), b.id(), info.residency),
        ));
    }
    let fail = |call: &str, why: String| Violation::new(HOST, call.to_owned(), why);
    let g = a
        .allocate(0x1000, true)
        .map_err(|e| fail("allocate(0x1000, pin)", format!("failed: {e}")))?;
    let chunks: Result<u64> = a.chunks(&g).map(|c| c.iter().map(|c| c.len).sum::<u64>());
    let covered = g.range.pages(0x1000).map(|r| r.len()).unwrap_or(0);
    match chunks {
        Ok(n) if n == covered => {}
        got => {
            return Err(fail(
                "allocate(0x1000, pin), then chunks",
                format!("{got:?} bytes, expected {covered:#x}"),
            ))
        }
    }
    a.release(&g).map_err(|e| {
        fail(
            "allocate(0x1000, pin), then release",
            format!("failed: {e}"),
        )
    })?;
    Ok(())
}

/// Checks an importer: its device and capabilities do not change between calls, and its DMA
/// mask is `2^n - 1` with `n >= 12` (what `dma_mask(bits)` makes).
pub fn check_importer(i: &dyn DmaImporter) -> std::result::Result<(), Violation> {
    let (d1, c1, d2, c2) = (i.device(), i.caps(), i.device(), i.caps());
    if d1 != d2 || c1 != c2 {
        return Err(Violation::new(
            STABLE,
            "device(), caps() twice",
            format!("{d1} {c1:?} then {d2} {c2:?}"),
        ));
    }
    let m = c1.dma_mask;
    if m < 0xfff || m & m.wrapping_add(1) != 0 {
        return Err(Violation::new(
            MASK,
            format!("caps() of {d1}"),
            format!("dma_mask {m:#x}"),
        ));
    }
    Ok(())
}
