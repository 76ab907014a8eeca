//! Page sizes and page-size bitmaps (as an IOMMU driver's `pgsize_bitmap`).

use bitflags::bitflags;

/// 4 KiB.
pub const SZ_4K: u64 = 4 << 10;
/// 2 MiB.
pub const SZ_2M: u64 = 2 << 20;
/// 1 GiB.
pub const SZ_1G: u64 = 1 << 30;

bitflags! {
    /// The page sizes a translation supports; each bit is a size (bit n = 2^n bytes), exactly as
    /// Linux's `pgsize_bitmap`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PageSizes: u64 {
        /// 4 KiB pages.
        const SIZE_4K = SZ_4K;
        /// 2 MiB pages.
        const SIZE_2M = SZ_2M;
        /// 1 GiB pages.
        const SIZE_1G = SZ_1G;
        // Other sizes (16 KiB, 64 KiB, 32 MiB, 512 MiB granules) are valid bits too.
        const _ = !0;
    }
}

impl PageSizes {
    /// The smallest supported page, or `None` if the bitmap is empty.
    pub fn min_page(self) -> Option<u64> {
        (!self.is_empty()).then(|| 1u64 << self.bits().trailing_zeros())
    }

    /// The largest supported page that is at most `len` bytes and to which `addrs` (the OR of the
    /// addresses involved, as `iommu_pgsize` does with `iova | paddr`) is aligned.
    pub fn best_fit(self, addrs: u64, len: u64) -> Option<u64> {
        let mut candidates = self.bits();
        if len == 0 {
            return None;
        }
        // Sizes no larger than len.
        let len_bits = 64 - len.leading_zeros();
        if len_bits < 64 {
            candidates &= (1u64 << len_bits) - 1;
        }
        // Sizes to which the addresses are aligned.
        if addrs != 0 {
            candidates &= (addrs & addrs.wrapping_neg()) | ((addrs & addrs.wrapping_neg()) - 1);
        }
        (candidates != 0).then(|| 1u64 << (63 - candidates.leading_zeros()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_picks_largest_aligned() {
        let p = PageSizes::SIZE_4K | PageSizes::SIZE_2M | PageSizes::SIZE_1G;
        assert_eq!(p.min_page(), Some(SZ_4K));
        assert_eq!(p.best_fit(0, SZ_1G), Some(SZ_1G));
        assert_eq!(p.best_fit(SZ_2M, SZ_1G), Some(SZ_2M));
        assert_eq!(p.best_fit(0, SZ_2M - 1), Some(SZ_4K));
        assert_eq!(p.best_fit(0x1000, SZ_1G), Some(SZ_4K));
        assert_eq!(p.best_fit(0x800, SZ_1G), None);
        assert_eq!(p.best_fit(0, 0), None);
        assert_eq!(PageSizes::empty().min_page(), None);
    }
}
