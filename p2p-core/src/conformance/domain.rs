//! [`IommuDomain`] under concurrent use: several threads map and unmap overlapping ranges of mixed
//! sizes (4 KiB, 64 KiB, 2 MiB) in one window while others allocate and free IOVA ranges, then a
//! model check after they join.

use crate::access::Access;
use crate::addr::{AddrRange, Iova, PhysAddr};
use crate::error::Error;
use crate::page::{SZ_2M, SZ_4K};
use crate::rand::SplitMix64;
use crate::traits::IommuDomain;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How hard and how long [`stress_domain`] works.
#[derive(Debug, Clone, Copy)]
pub struct StressConfig {
    /// Seeds every thread's operations (thread `t` uses `seed + t`).
    pub seed: u64,
    /// Threads mapping and unmapping in the shared window.
    pub mappers: usize,
    /// Threads allocating and freeing IOVA ranges.
    pub allocators: usize,
    /// Operations each thread does at least.
    pub min_ops: u64,
    /// Keep going until this much time has passed (after `min_ops`).
    pub budget: Duration,
}

impl StressConfig {
    /// Three mappers, one allocator, a few hundred operations each, at most about a second.
    pub fn quick(seed: u64) -> Self {
        Self {
            seed,
            mappers: 3,
            allocators: 1,
            min_ops: 300,
            budget: Duration::from_millis(300),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StressReport {
    /// Maps that succeeded.
    pub maps: u64,
    /// Maps refused because another thread held part of the range.
    pub collisions: u64,
    /// IOVA allocations checked.
    pub allocations: u64,
}

/// The window the mappers share.
const WINDOW: u64 = 4 * SZ_2M;

/// Runs the stress check on a translated domain. It fails (with the seed in the message) if a
/// map is not all or nothing, a mapped range does not translate to what it was mapped to, an
/// unmap of a whole owned range returns less than its length, a range still translates to its
/// old page after its unmap, two live IOVA allocations overlap or one is misaligned, or after
/// every thread joined anything in the window is still mapped.
pub fn stress_domain(
    domain: Arc<dyn IommuDomain>,
    cfg: &StressConfig,
) -> Result<StressReport, String> {
    let fail = |what: String| format!("seed {}: {what}", cfg.seed);
    let limit = domain.aperture().last().map_or(0, |a| a.0);
    let window = domain
        .alloc_iova(WINDOW, limit)
        .map_err(|e| fail(format!("cannot allocate the window: {e}")))?;
    let live_iovas = Arc::new(Mutex::new(BTreeMap::new()));
    let threads: Vec<_> = (0..cfg.mappers + cfg.allocators)
        .map(|t| {
            let (domain, cfg, live) = (domain.clone(), *cfg, live_iovas.clone());
            std::thread::spawn(move || {
                let mut rng = SplitMix64::new(cfg.seed.wrapping_add(t as u64));
                if t < cfg.mappers {
                    mapper(&*domain, window, t as u64, &mut rng, &cfg)
                } else {
                    allocator(&*domain, &live, &mut rng, &cfg)
                }
            })
        })
        .collect();
    let mut report = StressReport::default();
    for th in threads {
        let r = th
            .join()
            .map_err(|_| fail("a thread panicked".into()))?
            .map_err(&fail)?;
        report.maps += r.maps;
        report.collisions += r.collisions;
        report.allocations += r.allocations;
    }
    for off in (0..WINDOW).step_by(SZ_4K as usize) {
        if let Some(t) = domain.translate(Iova(window.0 + off)) {
            return Err(fail(format!(
                "after every thread unmapped its ranges, iova {:#x} still translates to {}",
                window.0 + off,
                t.phys
            )));
        }
    }
    domain.flush().map_err(|e| fail(format!("flush: {e}")))?;
    domain
        .free_iova(window, WINDOW)
        .map_err(|e| fail(format!("free of the window: {e}")))?;
    Ok(report)
}

/// Running until both the operation count and the time budget are spent.
fn keep_going(done: u64, start: Instant, cfg: &StressConfig) -> bool {
    done < cfg.min_ops || start.elapsed() < cfg.budget
}

/// Maps random ranges of the window to pages only this thread uses, holds up to four at once
/// (so other threads' maps collide with them), checks each before unmapping it.
fn mapper(
    d: &dyn IommuDomain,
    window: Iova,
    thread: u64,
    rng: &mut SplitMix64,
    cfg: &StressConfig,
) -> Result<StressReport, String> {
    const SIZES: [u64; 3] = [SZ_4K, 16 * SZ_4K, SZ_2M];
    let mut report = StressReport::default();
    let mut held: Vec<(Iova, u64, PhysAddr)> = Vec::new();
    let start = Instant::now();
    let mut op = 0u64;
    while keep_going(op, start, cfg) {
        op += 1;
        if held.len() >= 4 || (!held.is_empty() && rng.below(2) == 0) {
            let (iova, len, phys) = held.swap_remove(rng.below(held.len() as u64) as usize);
            check_and_unmap(d, iova, len, phys)?;
            continue;
        }
        let len = SIZES[rng.below(3) as usize];
        let iova = Iova(window.0 + rng.below(WINDOW / len) * len);
        // 2 MiB-aligned physical pages no other thread or operation uses: (thread, op) in the
        // bits above 21, so a stale translation is recognisable as this operation's.
        let phys = PhysAddr(((thread << 16 | (op & 0xffff)) + 1) << 21);
        match d.map(iova, phys, len, Access::READ | Access::WRITE) {
            Ok(()) => {
                report.maps += 1;
                held.push((iova, len, phys));
            }
            Err(Error::AlreadyMapped(_)) => {
                report.collisions += 1;
                check_absent(d, iova, len, phys, "after a refused map")?;
            }
            Err(e) => return Err(format!("map {iova}+{len:#x}: {e}")),
        }
    }
    for (iova, len, phys) in held {
        check_and_unmap(d, iova, len, phys)?;
    }
    Ok(report)
}

/// Checks that a range this thread holds translates to what it was mapped to, unmaps it whole,
/// and checks that it no longer translates there.
fn check_and_unmap(
    d: &dyn IommuDomain,
    iova: Iova,
    len: u64,
    phys: PhysAddr,
) -> Result<(), String> {
    for off in [0, len / 2, len - SZ_4K] {
        let want = PhysAddr(phys.0 + off);
        match d.translate(Iova(iova.0 + off)) {
            Some(t) if t.phys == want => {}
            got => {
                return Err(format!(
                    "{iova}+{off:#x} mapped to {want} translates to {got:?}"
                ))
            }
        }
    }
    match d.unmap(iova, len) {
        Ok(n) if n == len => {}
        got => return Err(format!("unmap of owned {iova}+{len:#x} returned {got:?}")),
    }
    check_absent(d, iova, len, phys, "after its unmap")
}

/// No page of `[iova, iova+len)` translates into `[phys, phys+len)`.
fn check_absent(
    d: &dyn IommuDomain,
    iova: Iova,
    len: u64,
    phys: PhysAddr,
    when: &str,
) -> Result<(), String> {
    for off in (0..len).step_by(SZ_4K as usize) {
        if let Some(t) = d.translate(Iova(iova.0 + off)) {
            if t.phys.0.wrapping_sub(phys.0) < len {
                return Err(format!(
                    "{} still translates to {} {when}",
                    iova.0 + off,
                    t.phys
                ));
            }
        }
    }
    Ok(())
}

/// Allocates and frees IOVA ranges of random sizes, checking that live ones never overlap and
/// that each is size-aligned and under the limit.
fn allocator(
    d: &dyn IommuDomain,
    live: &Mutex<BTreeMap<u64, u64>>,
    rng: &mut SplitMix64,
    cfg: &StressConfig,
) -> Result<StressReport, String> {
    let mut report = StressReport::default();
    let mut mine: Vec<(Iova, u64)> = Vec::new();
    let limit = (1u64 << 40) - 1;
    let start = Instant::now();
    while keep_going(report.allocations, start, cfg) {
        if mine.len() > 16 || (!mine.is_empty() && rng.below(2) == 0) {
            let (iova, len) = mine.swap_remove(rng.below(mine.len() as u64) as usize);
            lock(live).remove(&iova.0);
            d.free_iova(iova, len)
                .map_err(|e| format!("free_iova {iova}+{len:#x}: {e}"))?;
            continue;
        }
        let len = SZ_4K << rng.below(8);
        let iova = d
            .alloc_iova(len, limit)
            .map_err(|e| format!("alloc_iova {len:#x}: {e}"))?;
        report.allocations += 1;
        let r = AddrRange::new(iova, len).map_err(|e| e.to_string())?;
        if iova.0 % len != 0 || r.last().is_none_or(|l| l.0 > limit) {
            return Err(format!(
                "alloc_iova({len:#x}) gave {r}: misaligned or above the limit"
            ));
        }
        let mut l = lock(live);
        if let Some((&a, &n)) = l.range(..r.end().0).next_back() {
            if a + n > iova.0 {
                return Err(format!(
                    "alloc_iova gave {r}, which overlaps live {a:#x}+{n:#x}"
                ));
            }
        }
        l.insert(iova.0, len);
        mine.push((iova, len));
    }
    for (iova, len) in mine {
        lock(live).remove(&iova.0);
        d.free_iova(iova, len).map_err(|e| e.to_string())?;
    }
    Ok(report)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
