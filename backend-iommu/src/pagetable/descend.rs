//! The mapper's way down and its check on the way back: [`PageTable::descend`] records every
//! entry it went through (read or installed), [`PageTable::path_intact`] re-reads exactly those
//! entries after the mapper's stores, and [`PageTable::abandon`] takes out the tables a mapper
//! installed under a table that was unlinked meanwhile.
//!
//! Why every entry of the path and not only the one linking the leaf table in: a mapper may read
//! the entry linking table `X` in just before an unlinker marks it, find `X` empty, unlink it,
//! and only then install a new table into `X`. The new table's own link (in `X`) stays intact,
//! but `X` is gone: only the entry above it tells. Re-reading the recorded entries costs one load
//! a level and no walk from the root.

use super::{PageTable, ROOT, UNLINKING};
use crate::format::{index, level_size, Format, Pte};
use crate::frames::Table;
use crate::sync::{spin, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use p2p_core::{Error, Result};

/// A run of leaves a mapper puts into one table: entries `first .. first + n`, entry
/// `first + k` being `leaf(k)`.
pub(super) struct Run<'a, L> {
    pub first: usize,
    pub n: usize,
    pub leaf: &'a L,
}

/// The leaf-maker of no run.
type NoLeaf = fn(usize) -> u64;

/// No run: a descent that only finds (or makes) tables.
pub(super) const NO_RUN: Option<Run<'static, NoLeaf>> = None;

/// The entries a descent went through: `links[l]` is the level-`l` entry on the way (for every
/// `l` above the target level) and its value as the descent read or installed it. The entries
/// themselves, not (table, index): the re-check then costs a load each, no table lookup.
#[derive(Debug, Clone, Copy)]
pub(super) struct Path<'a> {
    links: [(&'a AtomicU64, u64); ROOT + 1],
    /// The lowest level whose entry this descent installed (a table it made); above `ROOT` if
    /// it installed none. Every entry from there down to the target was installed by it too.
    installed: usize,
}

/// Where a descent ended.
#[derive(Debug)]
pub(super) struct Descent<'a> {
    /// The table at the target level.
    pub table: &'a Table,
    /// The entries on the way.
    pub path: Path<'a>,
    /// Whether the run was written into `table` before it was installed (a table this descent
    /// made): nobody could reach those entries before, so plain stores did.
    pub filled: bool,
}

impl<F: Format> PageTable<F> {
    /// The table at `level` that covers `iova`, creating tables on the way if `create`, and the
    /// entries that lead to it. `Ok(None)` when absent and not creating; `AlreadyMapped` if a
    /// leaf covers it higher up. If the table at `level` is made here and `fill` is given, the
    /// run is written into it before it is installed.
    pub(super) fn descend<L: Fn(usize) -> u64>(
        &self,
        iova: u64,
        level: usize,
        create: bool,
        fill: Option<Run<'_, L>>,
    ) -> Result<Option<Descent<'_>>> {
        let mut table = self.root_table();
        // (Levels at and below the target keep the placeholder and are never read.)
        let placeholder = &table[0];
        let mut path = Path {
            links: [(placeholder, 0); ROOT + 1],
            installed: ROOT + 1,
        };
        let mut filled = false;
        for l in (level + 1..=ROOT).rev() {
            let idx = index(iova, l);
            let slot = &table[idx];
            let (child, pte) = loop {
                let pte = slot.load(SeqCst);
                if pte & UNLINKING != 0 {
                    // The table below is being unlinked: wait for the verdict.
                    spin();
                    continue;
                }
                match F::decode(pte, l) {
                    Pte::Table(phys) => break (self.frames.table_at(phys), pte),
                    Pte::Leaf { .. } => {
                        return Err(Error::AlreadyMapped(iova & !(level_size(l) - 1)))
                    }
                    Pte::Invalid if !create => return Ok(None),
                    Pte::Invalid => {
                        let frame = self.frames.alloc(iova)?;
                        let child = self.table(frame);
                        let run = fill.as_ref().filter(|_| l == level + 1);
                        if let Some(run) = run {
                            prefill(child, run);
                        }
                        let new = F::table(self.frames.phys(frame));
                        // The swap publishes the prefilled entries (it is a release).
                        match slot.compare_exchange(pte, new, SeqCst, SeqCst) {
                            Ok(_) => {
                                path.installed = l;
                                filled = run.is_some();
                                break (child, new);
                            }
                            // Another thread installed a table (or a leaf) first.
                            Err(_) => {
                                if let Some(run) = run {
                                    unfill(child, run);
                                }
                                self.frames.release(frame);
                            }
                        }
                    }
                }
            };
            path.links[l] = (slot, pte);
            table = child;
        }
        Ok(Some(Descent {
            table,
            path,
            filled,
        }))
    }

    /// Whether every entry of `path` above `level` still holds what the descent saw (so none is
    /// marked or cleared): read after the mapper's stores and a full fence.
    pub(super) fn path_intact(&self, path: &Path<'_>, level: usize) -> bool {
        path.links[level + 1..=ROOT]
            .iter()
            .all(|&(slot, pte)| slot.load(SeqCst) == pte)
    }

    /// After a failed [`path_intact`](Self::path_intact) (and the run withdrawn): waits until no
    /// entry of the path is marked. If one was cleared or replaced for good, the table below it
    /// was unlinked and nothing can be reached through it any more (its frame is not reused
    /// while this walk is pinned, so the entry cannot come back to it); the tables this descent
    /// installed under it are taken out and retired, so that none is left inside a table on its
    /// way to the freelist. Tables installed above that point stay: they are reachable, and a
    /// reclaim takes them when empty.
    pub(super) fn abandon(&self, path: &Path<'_>, level: usize) {
        if path.installed > ROOT {
            return;
        }
        let settled = |l: usize| {
            let (slot, _) = path.links[l];
            loop {
                let cur = slot.load(SeqCst);
                if cur & UNLINKING == 0 {
                    return cur;
                }
                spin();
            }
        };
        let Some(broken) = (level + 1..=ROOT)
            .rev()
            .find(|&l| settled(l) != path.links[l].1)
        else {
            return; // only marked, and kept: the retry goes through the same tables
        };
        // Bottom up, so that each table is retired after the entry inside it was cleared.
        for l in path.installed..broken {
            let (slot, ours) = path.links[l];
            loop {
                match slot.compare_exchange(ours, 0, SeqCst, SeqCst) {
                    Ok(_) => {
                        if let Pte::Table(phys) = F::decode(ours, l) {
                            // Another mapper that went this way may still withdraw its entries
                            // from it: retired frames are reused only after its walk ends.
                            self.frames.retire(self.frames.frame_at(phys));
                        }
                        break;
                    }
                    Err(cur) if cur & UNLINKING != 0 => spin(),
                    // An unlinker inside the dead subtree took it (to the freelist).
                    Err(_) => break,
                }
            }
        }
    }
}

/// Writes a run into a table nobody else can reach yet.
fn prefill<L: Fn(usize) -> u64>(table: &Table, run: &Run<'_, L>) {
    for (k, e) in table[run.first..run.first + run.n].iter().enumerate() {
        e.store((run.leaf)(k), Relaxed);
    }
}

/// Clears a prefilled run again (the table was never installed).
fn unfill<L: Fn(usize) -> u64>(table: &Table, run: &Run<'_, L>) {
    for e in &table[run.first..run.first + run.n] {
        e.store(0, Relaxed);
    }
}
