//! Scatter lists: the `(DmaAddr, len)` segments a device is programmed with.

use crate::addr::DmaAddr;
use smallvec::SmallVec;

/// A scatter list as a mapping holds it: the common one-segment list inline, not allocated.
pub(crate) type Segments = SmallVec<[Segment; 1]>;

/// One segment of a scatter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    /// What the device is programmed with.
    pub addr: DmaAddr,
    /// Bytes.
    pub len: u64,
}

/// Merges address-contiguous pieces and splits so that no segment is longer than `max_segment`
/// (an importer's `max_segment_size`; 0 means no limit). Empty pieces vanish.
pub fn merge_segments(
    pieces: impl IntoIterator<Item = (DmaAddr, u64)>,
    max_segment: u64,
) -> Vec<Segment> {
    merge_inline(pieces, max_segment).into_vec()
}

/// One contiguous range `[addr, addr + len)` as segments of at most `max_segment` bytes (0: no
/// limit): what [`merge_inline`] makes of a single piece, without its merging loop.
pub(crate) fn split(addr: DmaAddr, len: u64, max_segment: u64) -> Segments {
    if max_segment == 0 || len <= max_segment {
        let mut out = Segments::new();
        if len > 0 {
            out.push(Segment { addr, len });
        }
        return out;
    }
    merge_inline([(addr, len)], max_segment)
}

/// [`merge_segments`] into a list that holds one segment without allocating.
pub(crate) fn merge_inline(
    pieces: impl IntoIterator<Item = (DmaAddr, u64)>,
    max_segment: u64,
) -> Segments {
    let max = if max_segment == 0 {
        u64::MAX
    } else {
        max_segment
    };
    let mut out = Segments::new();
    for (addr, len) in pieces {
        let (mut addr, mut len) = (addr.0, len);
        while len > 0 {
            if let Some(last) = out.last_mut() {
                if last.addr.0.checked_add(last.len) == Some(addr) && last.len < max {
                    let take = len.min(max - last.len);
                    last.len += take;
                    addr += take;
                    len -= take;
                    continue;
                }
            }
            let take = len.min(max);
            out.push(Segment {
                addr: DmaAddr(addr),
                len: take,
            });
            addr += take;
            len -= take;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_and_splits() {
        let s = merge_segments(
            [
                (DmaAddr(0x1000), 0x1000),
                (DmaAddr(0x2000), 0x1000),
                (DmaAddr(0x8000), 0x1000),
            ],
            0,
        );
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            Segment {
                addr: DmaAddr(0x1000),
                len: 0x2000
            }
        );
        let s = merge_segments([(DmaAddr(0), 0x5000)], 0x2000);
        assert_eq!(
            s.iter().map(|s| s.len).collect::<Vec<_>>(),
            vec![0x2000, 0x2000, 0x1000]
        );
        assert!(merge_segments([(DmaAddr(5), 0)], 0).is_empty());
    }

    proptest! {
        /// `split` of one piece is what `merge_inline` makes of it.
        #[test]
        fn split_is_merge_of_one_piece(addr in 0u64..1 << 40, len in 0u64..1 << 24, max in prop_oneof![Just(0u64), 1u64..1 << 20]) {
            prop_assert_eq!(split(DmaAddr(addr), len, max), merge_inline([(DmaAddr(addr), len)], max));
        }

        #[test]
        fn covers_the_same_bytes_within_the_limit(
            pieces in proptest::collection::vec((0u64..64, 1u64..8), 0..20),
            max in 1u64..10,
        ) {
            // Build pieces on a page grid: start page, length in pages.
            let input: Vec<(DmaAddr, u64)> = pieces.iter().map(|&(p, l)| (DmaAddr(p * 0x1000), l * 0x1000)).collect();
            let out = merge_segments(input.clone(), max * 0x1000);
            let bytes = |v: &[(u64, u64)]| v.iter().flat_map(|&(a, l)| (0..l / 0x1000).map(move |i| a + i * 0x1000)).collect::<Vec<_>>();
            let inb = bytes(&input.iter().map(|&(a, l)| (a.0, l)).collect::<Vec<_>>());
            let outb = bytes(&out.iter().map(|s| (s.addr.0, s.len)).collect::<Vec<_>>());
            prop_assert_eq!(inb, outb);
            for s in &out {
                prop_assert!(s.len > 0 && s.len <= max * 0x1000);
            }
        }
    }
}
