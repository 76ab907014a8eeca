//! The grant book-keeping every exporter of this crate shares: which ranges are granted, and
//! which were carved out by `allocate` (bounce buffers, scratch windows).

use p2p_core::addr::{align_up, AddrRange, Offset};
use p2p_core::testing::alloc_top_down;
use p2p_core::traits::{ExportGrant, ExporterId};
use p2p_core::{Error, Result};
use std::collections::{BTreeMap, HashMap};

const ALIGN: u64 = 4096;

#[derive(Debug)]
pub(crate) struct GrantBook {
    exporter: ExporterId,
    size: u64,
    next: u64,
    grants: HashMap<u64, ExportGrant>,
    /// Ranges handed out by `allocate`: start → length.
    carved: BTreeMap<u64, u64>,
}

impl GrantBook {
    pub fn new(exporter: ExporterId, size: u64) -> Self {
        Self {
            exporter,
            size,
            next: 0,
            grants: HashMap::new(),
            carved: BTreeMap::new(),
        }
    }

    fn insert(&mut self, range: AddrRange<Offset>, pinned: bool) -> ExportGrant {
        self.next += 1;
        let g = ExportGrant {
            exporter: self.exporter,
            id: self.next,
            range,
            pinned,
        };
        self.grants.insert(g.id, g.clone());
        g
    }

    /// A grant of `range`, which must lie inside the memory object.
    pub fn export(&mut self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        if range.is_empty() || range.end().0 > self.size {
            return Err(Error::OutOfBounds {
                kind: "offset",
                start: range.start().0,
                len: range.len(),
                limit_start: 0,
                limit_len: self.size,
            });
        }
        Ok(self.insert(range, pin))
    }

    /// A grant of `len` fresh bytes (page aligned) no other allocation holds.
    pub fn allocate(&mut self, len: u64, pin: bool) -> Result<ExportGrant> {
        let size = align_up(len, ALIGN)
            .filter(|&s| s > 0)
            .ok_or(Error::EmptyRange { what: "allocation" })?;
        let used: u64 = self.carved.values().sum();
        let at = alloc_top_down(&self.carved, 0, self.size - 1, size, ALIGN).ok_or(
            Error::WindowFull {
                exporter: self.exporter,
                requested: len,
                available: self.size - used,
            },
        )?;
        self.carved.insert(at, size);
        Ok(self.insert(AddrRange::new(Offset(at), size)?, pin))
    }

    /// The grant as recorded.
    pub fn get(&self, grant: &ExportGrant) -> Result<&ExportGrant> {
        self.grants
            .get(&grant.id)
            .filter(|g| g.exporter == grant.exporter)
            .ok_or(Error::UnknownGrant {
                exporter: self.exporter,
                grant: grant.id,
            })
    }

    pub fn release(&mut self, grant: &ExportGrant) -> Result<()> {
        self.get(grant)?;
        let g = self
            .grants
            .remove(&grant.id)
            .unwrap_or_else(|| unreachable!("checked above"));
        if self.carved.get(&g.range.start().0) == Some(&g.range.len()) {
            self.carved.remove(&g.range.start().0);
        }
        Ok(())
    }

    pub fn live(&self) -> usize {
        self.grants.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a model (the set of live carved ranges): allocations never overlap, stay
        /// inside the object, and a release gives the space back.
        #[test]
        fn carved_ranges_never_overlap(ops in proptest::collection::vec((any::<bool>(), 1u64..0x9000), 1..60)) {
            let mut book = GrantBook::new(ExporterId::fresh(), 0x40000);
            let mut live: Vec<ExportGrant> = Vec::new();
            for (alloc, len) in ops {
                if alloc || live.is_empty() {
                    match book.allocate(len, false) {
                        Ok(g) => {
                            prop_assert!(g.range.end().0 <= 0x40000);
                            prop_assert!(g.range.len() >= len);
                            for other in &live {
                                prop_assert!(!g.range.overlaps(&other.range));
                            }
                            live.push(g);
                        }
                        Err(Error::WindowFull { .. }) => {
                            // Refused only when no free gap (all boundaries are page aligned)
                            // holds the page-rounded size.
                            let size = align_up(len, ALIGN).unwrap();
                            let mut taken: Vec<(u64, u64)> =
                                live.iter().map(|g| (g.range.start().0, g.range.end().0)).collect();
                            taken.sort_unstable();
                            let mut cursor = 0;
                            for (s, e) in taken.into_iter().chain([(0x40000, 0x40000)]) {
                                prop_assert!(s < cursor || s - cursor < size, "a gap at {cursor:#x} fits {size:#x}");
                                cursor = cursor.max(e);
                            }
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                } else {
                    let g = live.swap_remove(len as usize % live.len());
                    book.release(&g).unwrap();
                    prop_assert!(book.release(&g).is_err());
                }
                prop_assert_eq!(book.live(), live.len());
            }
        }
    }
}
