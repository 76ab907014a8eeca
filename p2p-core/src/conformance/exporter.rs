//! [`MemoryExporter`]'s contract: grants of exactly the range asked, chunks in offset order that
//! are page aligned and cover exactly the pages the grant's range touches, a full window refused
//! with nothing reserved, pin rules, out-of-bounds and unknown grants refused, fresh allocations,
//! and revocation.

use super::Violation;
use crate::addr::{AddrRange, Offset};
use crate::error::{Error, Result};
use crate::page::SZ_4K;
use crate::traits::{Chunk, ExportGrant, ExporterId, ExporterInfo, MemoryExporter, Residency};

const PAGE: u64 = SZ_4K;
/// Single-page exports tried before concluding the exporter has no window to fill.
const WINDOW_PROBE: u64 = 4096;

const ID: &str = "MemoryExporter::id answers the same on every call: the registry indexes \
                  mappings by it";
const EXACT: &str = "MemoryExporter::export reserves exactly the range asked: the grant has that \
                     range, this exporter's id and the pin asked";
const CHUNKS: &str = "MemoryExporter::chunks are in offset order, page aligned (offset, length, \
                      phys, bus), cover exactly the pages the grant's range touches, keep one \
                      phys-to-bus offset, lie in info().bus_window, are MMIO exactly when the \
                      memory is in a device, and name no file or all the same file at one \
                      distance from their offsets";
const BOUNDS: &str = "MemoryExporter::export of a range that is empty or not inside 0..size \
                      fails with Error::OutOfBounds";
const UNKNOWN: &str = "MemoryExporter::release and chunks of a grant that is not outstanding \
                       (released, or another exporter's) fail with Error::UnknownGrant";
const PIN: &str = "a pinned export or allocation of memory that cannot be pinned fails with \
                   Error::NotPinnable; of pinnable memory it succeeds";
const WINDOW: &str = "MemoryExporter::export fails with Error::WindowFull when the window is \
                      full, and a refused export reserves nothing";
const WITH_CHUNKS: &str = "MemoryExporter::export_with_chunks is export then chunks of the \
                           grant: the same grant and the same chunks, the grant outstanding";
const ALLOCATE: &str = "MemoryExporter::allocate reserves len fresh bytes: a range of at least \
                        len bytes inside the object, overlapping no other live allocation";
const REVOKE: &str = "after a revoke, MemoryExporter::export and allocate fail with \
                      Error::Revoked, and a grant made before can still be released";

/// Runs every exporter check on `e` and returns the first violation: a stable id, exact grants and their
/// chunks, out-of-bounds and unknown grants, pin rules, fresh allocations, the full window, and
/// revocation. `revoke`, when the implementation can be revoked, revokes it (that check runs
/// last, as nothing can be exported after it). The window is probed with up to 4096 single-page
/// exports: an exporter that takes more without [`Error::WindowFull`] is taken to have no window
/// to fill. Every check releases what it was granted, so `e` ends as it began (but revoked).
pub fn check_exporter(
    e: &dyn MemoryExporter,
    revoke: Option<&dyn Fn()>,
) -> std::result::Result<(), Violation> {
    let (first, again) = (e.id(), e.id());
    if first != again {
        return Err(Violation::new(
            ID,
            "id() twice",
            format!("{first} then {again}"),
        ));
    }
    check_exact_grants(e)?;
    check_bounds_and_unknown(e)?;
    check_pin_rules(e)?;
    check_allocate(e)?;
    check_window_full(e)?;
    if let Some(revoke) = revoke {
        check_revoke(e, revoke)?;
    }
    let after = e.id();
    if after != first {
        return Err(Violation::new(
            ID,
            "id() after the other checks",
            format!("{first} then {after}"),
        ));
    }
    Ok(())
}

fn range(start: u64, len: u64) -> std::result::Result<AddrRange<Offset>, Violation> {
    AddrRange::new(Offset(start), len)
        .map_err(|err| Violation::new(EXACT, "a range", err.to_string()))
}

/// Ok, or a violation of `rule` naming the call.
fn ok<T>(rule: &'static str, call: String, r: Result<T>) -> std::result::Result<T, Violation> {
    r.map_err(|err| Violation::new(rule, call, format!("failed: {err}")))
}

/// Fails `rule` unless `r` is an error `is_want` accepts.
fn refused<T: std::fmt::Debug>(
    rule: &'static str,
    call: String,
    r: Result<T>,
    is_want: fn(&Error) -> bool,
) -> std::result::Result<(), Violation> {
    match r {
        Err(err) if is_want(&err) => Ok(()),
        Err(err) => Err(Violation::new(rule, call, format!("failed with `{err}`"))),
        Ok(v) => Err(Violation::new(rule, call, format!("succeeded: {v:?}"))),
    }
}

/// Exports of aligned, unaligned, page-crossing, last-byte and longer ranges, unpinned and (if
/// pinnable) pinned: each grant is exact and its chunks keep [`CHUNKS`].
fn check_exact_grants(e: &dyn MemoryExporter) -> std::result::Result<(), Violation> {
    let info = e.info();
    let size = info.size;
    let cases = [
        (0, PAGE),
        (100, 5000),
        (PAGE - 1, 2),
        (size.saturating_sub(1), 1),
        (0, 16 * PAGE),
    ];
    for (start, len) in cases.into_iter().filter(|&(s, l)| l > 0 && s + l <= size) {
        for pin in [false, true].into_iter().filter(|&p| !p || info.pinnable) {
            let r = range(start, len)?;
            let call = format!("export({r}, pin {pin})");
            let g = ok(EXACT, call.clone(), e.export(r, pin))?;
            if g.range != r || g.exporter != e.id() || g.pinned != pin {
                return Err(Violation::new(EXACT, call, format!("granted {g:?}")));
            }
            let chunks = ok(CHUNKS, format!("{call}, then chunks"), e.chunks(&g))?;
            check_chunks(&info, &g, &chunks)?;
            ok(EXACT, format!("{call}, then release"), e.release(&g))?;
            check_export_with_chunks(e, r, pin, &chunks)?;
        }
    }
    Ok(())
}

/// `export_with_chunks(r, pin)` grants what `export` does, with the chunks `chunks` says (those
/// of an earlier grant of the same range), and the grant is outstanding (it releases).
fn check_export_with_chunks(
    e: &dyn MemoryExporter,
    r: AddrRange<Offset>,
    pin: bool,
    chunks: &[Chunk],
) -> std::result::Result<(), Violation> {
    let call = format!("export_with_chunks({r}, pin {pin})");
    let (g, got) = ok(WITH_CHUNKS, call.clone(), e.export_with_chunks(r, pin))?;
    // Where the bytes are, and where in a file: what a mapping of them uses. (Not which open
    // file: an exporter may hand out a new descriptor of the same file on each call.)
    let key = |c: &Chunk| {
        let file = c.file.as_ref().map(|f| f.offset);
        (c.offset, c.len, c.phys, c.bus, c.mmio, file)
    };
    let same = got.len() == chunks.len() && got.iter().zip(chunks).all(|(a, b)| key(a) == key(b));
    let release = ok(WITH_CHUNKS, format!("{call}, then release"), e.release(&g));
    if g.range != r || g.exporter != e.id() || g.pinned != pin {
        return Err(Violation::new(WITH_CHUNKS, call, format!("granted {g:?}")));
    }
    if !same {
        return Err(Violation::new(
            WITH_CHUNKS,
            call,
            format!(
                "gave {:?}, where export then chunks gave {chunks:?}",
                &got[..]
            ),
        ));
    }
    release
}

/// The chunks of `g` keep every rule of [`CHUNKS`].
fn check_chunks(
    info: &ExporterInfo,
    g: &ExportGrant,
    chunks: &[Chunk],
) -> std::result::Result<(), Violation> {
    let call = format!("chunks of the grant of {}", g.range);
    let fail = |why: String| Err(Violation::new(CHUNKS, call.clone(), why));
    let pages = g
        .range
        .pages(PAGE)
        .map_err(|err| Violation::new(CHUNKS, call.clone(), err.to_string()))?;
    let mut at = pages.start().0;
    let delta = chunks.first().map(|c| c.bus.0.wrapping_sub(c.phys.0));
    // (the first chunk's file, its offset minus the chunk's): every chunk must agree.
    let file_of = |c: &Chunk| {
        c.file.as_ref().map(|f| {
            (
                std::sync::Arc::as_ptr(&f.file),
                f.offset.wrapping_sub(c.offset.0),
            )
        })
    };
    let file = chunks.first().map(file_of);
    let in_device = matches!(info.residency, Residency::Device(_));
    for c in chunks {
        let aligned = [c.offset.0, c.len, c.phys.0, c.bus.0]
            .iter()
            .all(|v| v % PAGE == 0);
        let bus = AddrRange::new(c.bus, c.len);
        if c.offset.0 != at || c.len == 0 {
            return fail(format!(
                "{c:?} does not start where the last one ended ({at:#x})"
            ));
        } else if !aligned {
            return fail(format!("{c:?} is not page aligned"));
        } else if Some(c.bus.0.wrapping_sub(c.phys.0)) != delta {
            return fail(format!(
                "{c:?} has another phys-to-bus offset than the first chunk"
            ));
        } else if !bus.is_ok_and(|b| info.bus_window.contains_range(&b)) {
            return fail(format!(
                "{c:?} is outside the bus window {}",
                info.bus_window
            ));
        } else if c.mmio != in_device {
            return fail(format!(
                "{c:?} has mmio {} with memory {}",
                c.mmio, info.residency
            ));
        } else if Some(file_of(c)) != file {
            return fail(format!(
                "{c:?} names another file, or another place in it, than the first chunk"
            ));
        }
        at += c.len;
    }
    if at != pages.end().0 {
        return fail(format!(
            "{chunks:?} cover up to {at:#x}, not the pages {pages}"
        ));
    }
    Ok(())
}

/// Out-of-bounds and empty exports are refused; a released or forged grant is unknown.
fn check_bounds_and_unknown(e: &dyn MemoryExporter) -> std::result::Result<(), Violation> {
    let size = e.info().size;
    let is_oob = |err: &Error| matches!(err, Error::OutOfBounds { .. });
    for (start, len) in [(size, PAGE), (size.saturating_sub(PAGE), 2 * PAGE), (0, 0)] {
        if let Ok(r) = AddrRange::new(Offset(start), len) {
            refused(
                BOUNDS,
                format!("export({r}) of an object of {size:#x} bytes"),
                e.export(r, false),
                is_oob,
            )?;
        }
    }
    let r = range(0, PAGE.min(size))?;
    let g = ok(UNKNOWN, format!("export({r})"), e.export(r, false))?;
    let is_unknown = |err: &Error| matches!(err, Error::UnknownGrant { .. });
    let forged = ExportGrant {
        exporter: ExporterId(g.exporter.0 ^ (1 << 63)),
        ..g.clone()
    };
    let call = format!("export({r}), then release of {forged:?}");
    refused(UNKNOWN, call, e.release(&forged), is_unknown)?;
    ok(UNKNOWN, format!("export({r}), then release"), e.release(&g))?;
    let twice = format!("export({r}), release, then release again");
    refused(UNKNOWN, twice, e.release(&g), is_unknown)?;
    let after = format!("export({r}), release, then chunks");
    refused(UNKNOWN, after, e.chunks(&g), is_unknown)
}

/// Pinned exports and allocations: refused with [`Error::NotPinnable`] if the memory cannot be
/// pinned, granted pinned otherwise.
fn check_pin_rules(e: &dyn MemoryExporter) -> std::result::Result<(), Violation> {
    let info = e.info();
    let r = range(0, PAGE.min(info.size))?;
    let is_np = |err: &Error| matches!(err, Error::NotPinnable { .. });
    if !info.pinnable {
        refused(
            PIN,
            format!("export({r}, pin) of unpinnable memory"),
            e.export(r, true),
            is_np,
        )?;
        return refused(
            PIN,
            "allocate(0x1000, pin) of unpinnable memory".into(),
            e.allocate(PAGE, true),
            is_np,
        );
    }
    let g = ok(PIN, format!("export({r}, pin)"), e.export(r, true))?;
    ok(PIN, "release".into(), e.release(&g))?;
    let g = ok(PIN, "allocate(0x1000, pin)".into(), e.allocate(PAGE, true))?;
    if !g.pinned {
        return Err(Violation::new(
            PIN,
            "allocate(0x1000, pin)",
            format!("granted {g:?}"),
        ));
    }
    ok(PIN, "release".into(), e.release(&g))
}

/// Three live allocations of odd sizes: each at least its length, inside the object, disjoint,
/// with chunks keeping [`CHUNKS`].
fn check_allocate(e: &dyn MemoryExporter) -> std::result::Result<(), Violation> {
    let info = e.info();
    let mut live: Vec<ExportGrant> = Vec::new();
    for len in [PAGE + 5, 1, 3 * PAGE] {
        let call = format!("allocate({len:#x}) with {} live", live.len());
        let g = match e.allocate(len, false) {
            Ok(g) => g,
            // A small object can be full: what was granted so far has been checked.
            Err(Error::WindowFull { .. }) if !live.is_empty() => break,
            r => ok(ALLOCATE, call.clone(), r)?,
        };
        let clash = live.iter().find(|o| o.range.overlaps(&g.range));
        if g.range.len() < len || g.range.end().0 > info.size || clash.is_some() {
            return Err(Violation::new(
                ALLOCATE,
                call,
                format!("granted {}, live {clash:?}", g.range),
            ));
        }
        let chunks = ok(CHUNKS, format!("{call}, then chunks"), e.chunks(&g))?;
        check_chunks(&info, &g, &chunks)?;
        live.push(g);
    }
    for g in live {
        ok(ALLOCATE, format!("release of {:?}", g.range), e.release(&g))?;
    }
    Ok(())
}

/// Fills the window with single pages; if it fills within [`WINDOW_PROBE`] pages (`n`), an
/// export of `n + 1` pages into the empty window is refused and then `n` pages fit again.
fn check_window_full(e: &dyn MemoryExporter) -> std::result::Result<(), Violation> {
    let size = e.info().size;
    let Some(n) = fill_window(e, size)? else {
        return Ok(());
    };
    if n == 0 || (n + 1) * PAGE > size {
        return Ok(());
    }
    let r = range(0, (n + 1) * PAGE)?;
    let is_full = |err: &Error| matches!(err, Error::WindowFull { .. });
    refused(
        WINDOW,
        format!("export({r}) into an empty window of {n} pages"),
        e.export(r, false),
        is_full,
    )?;
    match fill_window(e, size)? {
        Some(m) if m == n => Ok(()),
        m => Err(Violation::new(
            WINDOW,
            format!("export({r}) refused, then single pages until full"),
            format!("{m:?} pages fit, {n} before"),
        )),
    }
}

/// Exports single pages until [`Error::WindowFull`], releases them, and returns how many fit
/// (`None`: no refusal within the probe).
fn fill_window(e: &dyn MemoryExporter, size: u64) -> std::result::Result<Option<u64>, Violation> {
    let pages = (size / PAGE).max(1);
    let mut held = Vec::new();
    let mut full = None;
    for i in 0..WINDOW_PROBE {
        let r = range((i % pages) * PAGE, PAGE.min(size))?;
        match e.export(r, false) {
            Ok(g) => held.push(g),
            Err(Error::WindowFull { .. }) => {
                full = Some(i);
                break;
            }
            Err(err) => {
                return Err(Violation::new(
                    WINDOW,
                    format!("{i} single-page exports, then export({r})"),
                    format!("failed: {err}"),
                ))
            }
        }
    }
    for g in held {
        ok(WINDOW, format!("release of {:?}", g.range), e.release(&g))?;
    }
    Ok(full)
}

/// A grant made before the revoke can be released; exports and allocations after it fail.
fn check_revoke(e: &dyn MemoryExporter, revoke: &dyn Fn()) -> std::result::Result<(), Violation> {
    let r = range(0, PAGE.min(e.info().size))?;
    let g = ok(REVOKE, format!("export({r})"), e.export(r, false))?;
    revoke();
    let is_revoked = |err: &Error| matches!(err, Error::Revoked(_));
    refused(
        REVOKE,
        format!("export({r}), revoke, export({r})"),
        e.export(r, false),
        is_revoked,
    )?;
    refused(
        REVOKE,
        "revoke, allocate(0x1000)".into(),
        e.allocate(PAGE, false),
        is_revoked,
    )?;
    ok(
        REVOKE,
        format!("export({r}), revoke, then release"),
        e.release(&g),
    )
}
