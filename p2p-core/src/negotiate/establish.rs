//! Turning a plan into resources: grant, IOVA range and page-table entries, scatter list. All or
//! nothing: every error path gives back what it took.

use super::domain_cache::DomainRef;
use super::pair::Pair;
use super::registry::{MappedPieces, Resources};
use super::sg::{merge_inline, split, Segments};
use super::{Plan, Strategy};
use crate::access::Access;
use crate::addr::{AddrRange, Address, DmaAddr, Iova, Offset};
use crate::error::{Error, Result};
use crate::pci::PciAddr;
use crate::traits::{
    Chunk, ChunkList, DomainKind, ExportGrant, ImporterCaps, IommuDomain, MapAttrs, MapPiece,
    MemoryExporter, Platform,
};
use smallvec::{smallvec, SmallVec};
use std::sync::Arc;

/// Builds the resources of a mapping of `range` under `plan`, for an importer with `caps` (those
/// the plan was made for), in its `domain`.
pub(crate) fn build(
    platform: &dyn Platform,
    plan: &Plan,
    pair: Pair<'_>,
    caps: ImporterCaps,
    range: AddrRange<Offset>,
    domain: DomainRef,
) -> Result<Box<Resources>> {
    let exporter = pair.exporter;
    if let Strategy::Refused(why) = &plan.strategy {
        // Refused plans touch nothing: no grant, no IOVA.
        return Err(Error::Refused {
            exporter: plan.exporter,
            importer: plan.importer,
            refusal: why.clone(),
        });
    }
    let (grant, chunks) = exporter
        .export_with_chunks(range, plan.pin)
        .inspect_err(|err| {
            // The two refusals a user tunes for (a window size, a pinning policy) are worth a
            // line.
            if matches!(err, Error::WindowFull { .. } | Error::NotPinnable { .. }) {
                tracing::info!(exporter = %plan.exporter, importer = %plan.importer, %range, %err, "grant refused");
            }
        })?;
    let built = with_grant(
        platform,
        plan,
        &grant,
        chunks,
        (pair.device, caps),
        &**domain,
    );
    match built {
        // Boxed here, where it is built: the registry keeps it boxed, and a `Resources` moved
        // through the `Result`s on the way is a copy of a few hundred bytes each time.
        Ok((mapped, segments, bounce)) => Ok(Resources {
            strategy: plan.strategy.clone(),
            grant,
            bounce,
            domain: Some(domain),
            iova: mapped.as_ref().map(|m| m.range),
            mapped: mapped.map(|m| m.pieces).unwrap_or_default(),
            segments,
        }
        .boxed()),
        Err(e) => {
            release_quietly(exporter, &grant);
            Err(e)
        }
    }
}

/// `(DmaAddr, len)` pieces before merging into segments: a mapping of one or two chunks (the
/// common case) holds them inline.
type Pieces = SmallVec<[(DmaAddr, u64); 2]>;

/// An IOVA allocation and the pieces of it mapped, one per chunk.
struct Mapped {
    range: AddrRange<Iova>,
    pieces: MappedPieces,
}

type Built = (
    Option<Mapped>,
    Segments,
    Option<(Arc<dyn MemoryExporter>, ExportGrant)>,
);

/// The set-up after the grant: the importer is its address and capabilities.
type Importer = (PciAddr, ImporterCaps);

fn with_grant(
    platform: &dyn Platform,
    plan: &Plan,
    grant: &ExportGrant,
    chunks: ChunkList,
    importer: Importer,
    domain: &dyn IommuDomain,
) -> Result<Built> {
    let caps = importer.1;
    let len = grant.range.len();
    let (iova, pieces, bounce) = match &plan.strategy {
        Strategy::Direct | Strategy::Identity => {
            let pieces = bus_pieces(&chunks, importer)?;
            (None, exact(pieces, &chunks, grant, len)?, None)
        }
        Strategy::ViaIommu => {
            // One contiguous IOVA range: split, not merged.
            let (mapped, (start, len)) =
                map_exact(domain, &chunks, grant, len, caps.dma_mask, plan.access)?;
            return Ok((Some(mapped), split(start, len, caps.max_segment), None));
        }
        Strategy::Bounce => {
            let host = platform.host_memory();
            let bgrant = host.allocate(len, true)?;
            let staged = host
                .chunks(&bgrant)
                .and_then(|hchunks| match domain.kind() {
                    DomainKind::Translated => {
                        map_exact(domain, &hchunks, &bgrant, len, caps.dma_mask, plan.access)
                            .map(|(m, p)| (Some(m), smallvec![p]))
                    }
                    DomainKind::Identity => bus_pieces(&hchunks, importer)
                        .and_then(|p| exact(p, &hchunks, &bgrant, len))
                        .map(|p| (None, p)),
                    DomainKind::Blocked => Err(Error::WrongDomainKind {
                        op: "bounce",
                        kind: "blocked",
                    }),
                });
            match staged {
                Ok((iova, pieces)) => (iova, pieces, Some((host, bgrant))),
                Err(e) => {
                    release_quietly(&*host, &bgrant);
                    return Err(e);
                }
            }
        }
        Strategy::Refused(_) => unreachable!("refused plans return before the grant"),
    };
    Ok((iova, merge_inline(pieces, caps.max_segment), bounce))
}

/// The pieces of whole pages cut down to exactly the grant's bytes: the first address is that of
/// the byte at `grant.range.start()` (as Linux's `dma_map_*` returns the address of the first
/// byte, in-page offset included) and the lengths add up to the grant's length.
///
/// A bounce buffer may be larger than the range (its allocator rounds up): `len` is the range's.
fn exact(pieces: Pieces, chunks: &[Chunk], grant: &ExportGrant, len: u64) -> Result<Pieces> {
    let first = chunks.first().map_or(grant.range.start().0, |c| c.offset.0);
    // let-else rather than `ok_or` here and below: on the hot path an eagerly built error is
    // also dropped on success.
    let Some(mut skip) = grant.range.start().0.checked_sub(first) else {
        return Err(Error::Misaligned {
            what: "first chunk offset (after the grant's start)",
            value: first,
            align: 4096,
        });
    };
    let mut keep = len;
    let mut out = Pieces::new();
    for (addr, len) in pieces {
        if keep == 0 {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = (len - skip).min(keep);
        out.push((DmaAddr(addr.0 + skip), take));
        keep -= take;
        skip = 0;
    }
    if keep != 0 {
        return Err(Error::OutOfBounds {
            kind: "chunks",
            start: grant.range.start().0,
            len,
            limit_start: first,
            limit_len: len - keep,
        });
    }
    Ok(out)
}

/// [`map_into`], then its one IOVA piece cut to the `len` bytes at `grant`'s start (as
/// [`exact`] cuts pieces). All or nothing: if the cut fails, the map is given back.
fn map_exact(
    domain: &dyn IommuDomain,
    chunks: &[Chunk],
    grant: &ExportGrant,
    len: u64,
    dma_mask: u64,
    access: Access,
) -> Result<(Mapped, (DmaAddr, u64))> {
    let (mapped, total) = map_into(domain, chunks, dma_mask, access)?;
    let first = chunks.first().map_or(grant.range.start().0, |c| c.offset.0);
    let err = match grant.range.start().0.checked_sub(first) {
        Some(skip) if skip <= total && total - skip >= len => {
            let start = DmaAddr(mapped.range.start().raw() + skip);
            return Ok((mapped, (start, len)));
        }
        Some(skip) => Error::OutOfBounds {
            kind: "chunks",
            start: grant.range.start().0,
            len,
            limit_start: first,
            limit_len: total.saturating_sub(skip),
        },
        None => Error::Misaligned {
            what: "first chunk offset (after the grant's start)",
            value: first,
            align: 4096,
        },
    };
    undo_map(domain, &mapped);
    Err(err)
}

/// Gives back a whole `map_into` (unmap, flush, free) when a later step fails.
fn undo_map(domain: &dyn IommuDomain, mapped: &Mapped) {
    if let Err(err) = domain.unmap_and_free(mapped.range, &mapped.pieces) {
        tracing::warn!(%err, "rollback of an IOMMU map failed");
    }
}

fn release_quietly(exporter: &dyn MemoryExporter, grant: &ExportGrant) {
    if let Err(err) = exporter.release(grant) {
        tracing::warn!(%err, "releasing a grant during rollback failed");
    }
}

/// Bus addresses of the chunks, each checked against the importer's DMA mask.
fn bus_pieces(chunks: &[Chunk], (device, caps): Importer) -> Result<Pieces> {
    let mask = caps.dma_mask;
    chunks
        .iter()
        .map(|c| {
            let r = AddrRange::new(c.bus, c.len)?;
            match r.last() {
                Some(last) if last.0 > mask => Err(Error::DmaMaskExceeded {
                    device,
                    addr: last.0,
                    mask,
                }),
                _ => Ok((DmaAddr(c.bus.0), c.len)),
            }
        })
        .collect()
}

/// Maps the chunks' CPU physical pages into one contiguous IOVA range below `dma_mask`;
/// returns it with its length. The chunks are mapped back to back by one `map_pieces` (each
/// chunk one piece, with MMIO attributes for device memory), so that each can be unmapped as it
/// was mapped.
fn map_into(
    domain: &dyn IommuDomain,
    chunks: &[Chunk],
    dma_mask: u64,
    access: Access,
) -> Result<(Mapped, u64)> {
    let Some(page) = domain.page_sizes().min_page() else {
        return Err(Error::WrongDomainKind {
            op: "map",
            kind: "page-size-less",
        });
    };
    let total = checked_total(chunks, page)?;
    let limit = domain.aperture().last().map_or(0, |a| a.0).min(dma_mask);
    let iova = domain.alloc_iova(total, limit)?;
    let range = match AddrRange::new(iova, total) {
        Ok(range) => range,
        Err(e) => {
            // A domain that handed out a range that wraps: give the allocation back.
            if let Err(err) = domain.free_iova(iova, total) {
                tracing::warn!(%err, "freeing an IOVA allocation that wraps failed");
            }
            return Err(e);
        }
    };
    // Inline for up to two chunks: a one-chunk mapping allocates nothing here. One pass builds
    // both the pieces to map and where each lands.
    let mut pieces: SmallVec<[MapPiece; 2]> = SmallVec::new();
    let mut mapped = MappedPieces::new();
    let mut at = iova.0;
    for c in chunks {
        pieces.push(MapPiece {
            phys: c.phys,
            len: c.len,
            attrs: if c.mmio {
                MapAttrs::MMIO
            } else {
                MapAttrs::empty()
            },
            file: c.file.clone(),
        });
        mapped.push((Iova(at), c.len));
        at += c.len;
    }
    if let Err(e) = domain.map_pieces(iova, &pieces, access) {
        // map_pieces took back what it mapped: only the allocation is left to give back.
        undo_map(
            domain,
            &Mapped {
                range,
                pieces: MappedPieces::new(),
            },
        );
        return Err(e);
    }
    Ok((
        Mapped {
            range,
            pieces: mapped,
        },
        total,
    ))
}

/// The chunks' total length, each checked to be whole `page`s at a `page`-aligned address.
fn checked_total(chunks: &[Chunk], page: u64) -> Result<u64> {
    let mut total = 0u64;
    for c in chunks {
        if !c.phys.is_aligned(page) {
            return Err(Error::Misaligned {
                what: "chunk physical address",
                value: c.phys.0,
                align: page,
            });
        }
        if !crate::addr::is_aligned(c.len, page) {
            return Err(Error::Misaligned {
                what: "chunk length",
                value: c.len,
                align: page,
            });
        }
        let Some(sum) = total.checked_add(c.len) else {
            return Err(Error::AddressOverflow {
                kind: "iova",
                addr: 0,
                len: c.len,
            });
        };
        total = sum;
    }
    if total == 0 {
        return Err(Error::EmptyRange { what: "mapping" });
    }
    Ok(total)
}
