//! First-fit, top-down range allocation over a map of taken ranges: the simple reference
//! allocator behind [`GrantBook`](crate::export::GrantBook)'s carving and window slots and the
//! reference domains' IOVA space (the software IOMMU has its own, faster one).

use std::collections::BTreeMap;

/// First-fit allocation of `len` bytes aligned to `align` in `[lo, hi]` avoiding `taken`
/// (start → len), searching from the top down as Linux's IOVA allocator does. A simple reference
/// (O(n) in the allocations): the reference domains' IOVA space, grant carving and BAR window
/// slots.
pub fn alloc_top_down(
    taken: &BTreeMap<u64, u64>,
    lo: u64,
    hi: u64,
    len: u64,
    align: u64,
) -> Option<u64> {
    // Merge the taken ranges (they may overlap: reserved regions nest) into disjoint
    // [start, end) intervals, then walk the gaps from the top.
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (&s, &l) in taken {
        let e = s.saturating_add(l);
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut ceiling = hi.checked_add(1)?; // exclusive
    for &(s, e) in merged.iter().rev().chain(std::iter::once(&(0, 0))) {
        let floor = e.max(lo);
        if ceiling >= len && ceiling > floor {
            let start = crate::addr::align_down(ceiling - len, align);
            if start >= floor && start + len <= ceiling {
                return Some(start);
            }
        }
        ceiling = ceiling.min(s);
        if ceiling <= lo {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_down_allocation_respects_alignment_and_holes() {
        let mut taken = BTreeMap::new();
        assert_eq!(
            alloc_top_down(&taken, 0, 0xffff, 0x1000, 0x1000),
            Some(0xf000)
        );
        taken.insert(0xf000, 0x1000);
        assert_eq!(
            alloc_top_down(&taken, 0, 0xffff, 0x2000, 0x2000),
            Some(0xc000)
        );
        taken.insert(0x1000, 0xe000);
        assert_eq!(alloc_top_down(&taken, 0, 0xffff, 0x1000, 0x1000), Some(0));
        assert_eq!(alloc_top_down(&taken, 0x800, 0xffff, 0x1000, 0x1000), None);
    }

    #[test]
    fn top_down_allocation_handles_nested_reservations() {
        // An MSI window inside a PCI window, both reserved.
        let taken = BTreeMap::from([(0xf000_0000, 0x1000_0000), (0xfee0_0000, 0x10_0000)]);
        assert_eq!(
            alloc_top_down(&taken, 0x1000, 0xffff_ffff, 0x1000, 0x1000),
            Some(0xefff_f000)
        );
    }

    proptest::proptest! {
        #[test]
        fn top_down_allocation_never_overlaps(
            taken in proptest::collection::btree_map(0u64..64, 1u64..8, 0..10),
            len in 1u64..8,
            hi in 0u64..80,
        ) {
            let taken: BTreeMap<u64, u64> = taken.into_iter().map(|(s, l)| (s * 0x1000, l * 0x1000)).collect();
            let (len, hi) = (len * 0x1000, hi * 0x1000 + 0xfff);
            let got = alloc_top_down(&taken, 0, hi, len, 0x1000);
            // The reference: the highest aligned start whose range is free and below hi.
            let free = |s: u64| taken.iter().all(|(&t, &l)| s + len <= t || t + l <= s);
            let want = (0..=hi / 0x1000).rev().map(|p| p * 0x1000).find(|&s| s + len - 1 <= hi && free(s));
            proptest::prop_assert_eq!(got, want);
        }
    }
}
