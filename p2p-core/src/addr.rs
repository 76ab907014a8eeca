//! Address newtypes and ranges.
//!
//! Each kind of address is its own type so that a CPU physical address is never programmed into a
//! device by accident: converting between them is always an explicit call that says why it is
//! valid (a bus offset, an IOMMU translation, an identity domain).

use crate::error::{Error, Result};
use std::fmt;

/// What every address newtype shares: a raw `u64` and a name for error messages.
pub trait Address: Copy + Ord + fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// The kind of address, for messages ("iova", "phys", ...).
    const KIND: &'static str;
    /// Wraps a raw value.
    fn new(raw: u64) -> Self;
    /// The raw value.
    fn raw(self) -> u64;

    /// `self + off`, or [`Error::AddressOverflow`] if it wraps.
    fn checked_add(self, off: u64) -> Result<Self> {
        self.raw()
            .checked_add(off)
            .map(Self::new)
            .ok_or_else(|| Error::AddressOverflow {
                kind: Self::KIND,
                addr: self.raw(),
                len: off,
            })
    }

    /// Whether the address is a multiple of `align` (a power of two).
    fn is_aligned(self, align: u64) -> bool {
        is_aligned(self.raw(), align)
    }
}

/// Whether `value` is a multiple of `align`; `align` must be a power of two (0 and non powers of
/// two are never satisfied).
pub const fn is_aligned(value: u64, align: u64) -> bool {
    align.is_power_of_two() && value & (align - 1) == 0
}

/// Rounds `value` down to a multiple of the power of two `align`.
pub const fn align_down(value: u64, align: u64) -> u64 {
    value & !(align.wrapping_sub(1))
}

/// Rounds `value` up to a multiple of the power of two `align`; `None` if that wraps.
pub const fn align_up(value: u64, align: u64) -> Option<u64> {
    match value.checked_add(align.wrapping_sub(1)) {
        Some(v) => Some(align_down(v, align)),
        None => None,
    }
}

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl Address for $name {
            const KIND: &'static str = $kind;
            fn new(raw: u64) -> Self {
                Self(raw)
            }
            fn raw(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($kind, ":{:#x}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        #[cfg(feature = "serde")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                crate::hex::serialize(&self.0, s)
            }
        }

        #[cfg(feature = "serde")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                crate::hex::deserialize(d).map(Self)
            }
        }
    };
}

address_type!(
    /// A CPU physical address (what the CPU's memory controller and MMIO decoders see).
    PhysAddr,
    "phys"
);
address_type!(
    /// A PCI bus address: CPU physical plus the host bridge's window offset.
    BusAddr,
    "bus"
);
address_type!(
    /// An I/O virtual address in an IOMMU domain.
    Iova,
    "iova"
);
address_type!(
    /// The address a device is programmed with: a bus address or an IOVA, whichever the plan chose.
    DmaAddr,
    "dma"
);
address_type!(
    /// A virtual address in a process address space.
    VirtAddr,
    "va"
);
address_type!(
    /// A byte offset inside an exporter's memory object (a GPU buffer, host RAM).
    Offset,
    "offset"
);

/// A half-open range `[start, start + len)` of one kind of address. The end never wraps: every
/// constructor checks it, so `end()` cannot overflow.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange<A: Address> {
    start: A,
    len: u64,
}

impl<A: Address> AddrRange<A> {
    /// `[start, start + len)`; [`Error::AddressOverflow`] if the end would pass `u64::MAX + 1`.
    pub fn new(start: A, len: u64) -> Result<Self> {
        // The exclusive end may equal 2^64 only when it is exactly representable as "to the top";
        // we keep it simple and require start + len to fit in a u64.
        start.checked_add(len)?;
        Ok(Self { start, len })
    }

    /// `[start, end)`; [`Error::InvalidRange`] if `end < start`.
    pub fn from_bounds(start: A, end: A) -> Result<Self> {
        if end < start {
            return Err(Error::InvalidRange {
                kind: A::KIND,
                start: start.raw(),
                end: end.raw(),
            });
        }
        Ok(Self {
            start,
            len: end.raw() - start.raw(),
        })
    }

    /// First address.
    pub fn start(&self) -> A {
        self.start
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last address (checked at construction, so this cannot wrap).
    pub fn end(&self) -> A {
        A::new(self.start.raw() + self.len)
    }

    /// The last address, or `None` for an empty range.
    pub fn last(&self) -> Option<A> {
        (self.len > 0).then(|| A::new(self.start.raw() + self.len - 1))
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: A) -> bool {
        addr >= self.start && addr.raw() - self.start.raw() < self.len
    }

    /// Whether `other` lies entirely inside (an empty range lies inside any range that contains
    /// its start, or at the end).
    pub fn contains_range(&self, other: &Self) -> bool {
        other.start >= self.start && other.end() <= self.end()
    }

    /// Whether the two ranges share at least one byte.
    pub fn overlaps(&self, other: &Self) -> bool {
        !self.is_empty()
            && !other.is_empty()
            && self.start < other.end()
            && other.start < self.end()
    }

    /// The bytes both ranges hold, if any.
    pub fn intersection(&self, other: &Self) -> Option<Self> {
        let start = self.start.max(other.start);
        let end = self.end().min(other.end());
        (start < end).then(|| Self {
            start,
            len: end.raw() - start.raw(),
        })
    }

    /// A sub-range at `offset` from the start, `len` long; an error if it does not fit.
    pub fn subrange(&self, offset: u64, len: u64) -> Result<Self> {
        let sub = Self::new(self.start.checked_add(offset)?, len)?;
        if !self.contains_range(&sub) {
            return Err(Error::OutOfBounds {
                kind: A::KIND,
                start: sub.start.raw(),
                len,
                limit_start: self.start.raw(),
                limit_len: self.len,
            });
        }
        Ok(sub)
    }

    /// Whether start and length are both multiples of `align`.
    pub fn is_aligned(&self, align: u64) -> bool {
        is_aligned(self.start.raw(), align) && is_aligned(self.len, align)
    }

    /// The whole `page`-sized pages this range touches: `[0x800..0x1800)` in 4 KiB pages is
    /// `[0x0..0x2000)`, two pages. `page` must be a power of two; an error if the rounded-up end
    /// wraps.
    pub fn pages(&self, page: u64) -> Result<Self> {
        let start = align_down(self.start.raw(), page);
        let end = align_up(self.end().raw(), page).ok_or_else(|| Error::AddressOverflow {
            kind: A::KIND,
            addr: self.start.raw(),
            len: self.len,
        })?;
        Self::new(A::new(start), end - start)
    }
}

impl<A: Address> fmt::Debug for AddrRange<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:[{:#x}..{:#x})",
            A::KIND,
            self.start.raw(),
            self.end().raw()
        )
    }
}

impl<A: Address> fmt::Display for AddrRange<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}..{:#x})", self.start.raw(), self.end().raw())
    }
}

/// The largest address a device with `bits` of DMA addressing can emit (`bits` ≥ 64 means all).
pub const fn dma_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wrapping_range_is_an_error() {
        let err = AddrRange::new(Iova(u64::MAX - 10), 20).unwrap_err();
        assert!(
            matches!(err, Error::AddressOverflow { kind: "iova", .. }),
            "{err}"
        );
        assert!(AddrRange::new(Iova(u64::MAX - 10), 10).is_ok());
    }

    #[test]
    fn bounds_must_be_ordered() {
        assert!(AddrRange::from_bounds(PhysAddr(10), PhysAddr(5)).is_err());
        assert_eq!(
            AddrRange::from_bounds(PhysAddr(5), PhysAddr(10))
                .unwrap()
                .len(),
            5
        );
    }

    #[test]
    fn subrange_checks_bounds() {
        let r = AddrRange::new(BusAddr(0x1000), 0x1000).unwrap();
        assert_eq!(r.subrange(0x800, 0x800).unwrap().start(), BusAddr(0x1800));
        assert!(matches!(
            r.subrange(0x800, 0x801),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(r.subrange(u64::MAX, 1).is_err());
    }

    #[test]
    fn alignment_helpers() {
        assert!(is_aligned(0x2000, 0x1000));
        assert!(!is_aligned(0x2001, 0x1000));
        assert!(!is_aligned(0x2000, 0));
        assert!(!is_aligned(0x2000, 0x3000));
        assert_eq!(align_down(0x2fff, 0x1000), 0x2000);
        assert_eq!(align_up(0x2001, 0x1000), Some(0x3000));
        assert_eq!(align_up(u64::MAX, 0x1000), None);
        assert_eq!(dma_mask(32), 0xffff_ffff);
        assert_eq!(dma_mask(64), u64::MAX);
    }

    proptest! {
        #[test]
        fn ranges_never_wrap(start in any::<u64>(), len in any::<u64>()) {
            match AddrRange::new(DmaAddr(start), len) {
                Ok(r) => {
                    prop_assert!(start.checked_add(len).is_some());
                    prop_assert_eq!(r.end().raw() - r.start().raw(), len);
                    prop_assert!(r.end() >= r.start());
                }
                Err(e) => {
                    prop_assert!(start.checked_add(len).is_none());
                    let overflow = matches!(e, Error::AddressOverflow { .. });
                    prop_assert!(overflow);
                }
            }
        }

        #[test]
        fn intersection_agrees_with_overlap(a in 0u64..1000, al in 0u64..100, b in 0u64..1000, bl in 0u64..100) {
            let ra = AddrRange::new(Iova(a), al).unwrap();
            let rb = AddrRange::new(Iova(b), bl).unwrap();
            prop_assert_eq!(ra.overlaps(&rb), ra.intersection(&rb).is_some());
            prop_assert_eq!(ra.overlaps(&rb), rb.overlaps(&ra));
            if let Some(i) = ra.intersection(&rb) {
                prop_assert!(ra.contains_range(&i) && rb.contains_range(&i));
            }
        }
    }
}
