//! The grant book-keeping an exporter needs: which ranges are granted, and which were carved out
//! by `allocate` (bounce buffers, scratch windows).

use crate::addr::{align_up, AddrRange, Offset};
use crate::error::{Error, Result};
use crate::testing::alloc_top_down;
use crate::traits::{ExportGrant, ExporterId};
use std::collections::{BTreeMap, HashMap};

const ALIGN: u64 = 4096;

/// The grants of one exporter whose memory object is `size` bytes: [`export`](Self::export)
/// checks the range, [`allocate`](Self::allocate) carves fresh page-aligned space (top down), and
/// [`release`](Self::release) forgets a grant and frees what it carved.
#[derive(Debug)]
pub struct GrantBook {
    exporter: ExporterId,
    size: u64,
    next: u64,
    grants: HashMap<u64, ExportGrant>,
    /// Ranges handed out by `allocate`: start → length.
    carved: BTreeMap<u64, u64>,
}

impl GrantBook {
    /// An empty book for `exporter`'s object of `size` bytes.
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

    /// Forgets a grant; an error if it is unknown (released twice, or another exporter's).
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

    /// Grants outstanding.
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
