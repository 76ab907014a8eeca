//! ARM LPAE stage-2 descriptors, 4 KiB granule (Arm ARM D8.3; Linux `io-pgtable-arm.c`,
//! `ARM_64_LPAE_S2`).
//!
//! | bits | meaning |
//! |---|---|
//! | 1:0 | 0b11 table (levels 3–1) or page (level 0); 0b01 block (levels 2–1) |
//! | 5:2 | MemAttr: 0b1111 normal write-back, 0b0001 device nGnRE |
//! | 7:6 | S2AP: bit 6 read, bit 7 write |
//! | 9:8 | SH: 0b11 inner shareable |
//! | 10 | AF: access flag |
//! | 47:12 | output address |
//! | 54 | XN: execute never |
//!
//! (The levels here count from the leaves: Arm's level 3 is our level 0.)

use super::{addr_field, Format, Pte};
use p2p_core::access::Access;
use p2p_core::page::PageSizes;

/// Descriptor type: table or page.
pub const TYPE_TABLE: u64 = 0b11;
/// Descriptor type: page (at the last level).
pub const TYPE_PAGE: u64 = 0b11;
/// Descriptor type: block.
pub const TYPE_BLOCK: u64 = 0b01;
/// MemAttr normal, outer and inner write-back cacheable.
pub const MEMATTR_OIWB: u64 = 0xf << 2;
/// MemAttr device nGnRE.
pub const MEMATTR_DEV: u64 = 0x1 << 2;
/// S2AP read.
pub const HAP_READ: u64 = 1 << 6;
/// S2AP write.
pub const HAP_WRITE: u64 = 2 << 6;
/// Inner shareable.
pub const SH_IS: u64 = 3 << 8;
/// Access flag.
pub const AF: u64 = 1 << 10;
/// Execute never.
pub const XN: u64 = 1 << 54;

/// ARM LPAE stage-2 tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArmLpaeS2;

impl Format for ArmLpaeS2 {
    const NAME: &'static str = "arm lpae stage 2";
    const PAGE_SIZES: PageSizes = PageSizes::SIZE_4K
        .union(PageSizes::SIZE_2M)
        .union(PageSizes::SIZE_1G);
    const OAS: u32 = 48;

    fn table(table_phys: u64) -> u64 {
        table_phys | TYPE_TABLE
    }

    fn leaf(phys: u64, level: usize, access: Access, mmio: bool) -> u64 {
        let mut pte = phys | AF | XN | if level == 0 { TYPE_PAGE } else { TYPE_BLOCK };
        if mmio {
            pte |= MEMATTR_DEV;
        } else {
            pte |= MEMATTR_OIWB | SH_IS;
        }
        if access.contains(Access::READ) {
            pte |= HAP_READ;
        }
        if access.contains(Access::WRITE) {
            pte |= HAP_WRITE;
        }
        pte
    }

    fn decode(pte: u64, level: usize) -> Pte {
        let phys = addr_field(pte, Self::OAS);
        match (pte & 0b11, level) {
            (0b11, 0) | (0b01, 1..=2) => {
                let mut access = Access::empty();
                access.set(Access::READ, pte & HAP_READ != 0);
                access.set(Access::WRITE, pte & HAP_WRITE != 0);
                Pte::Leaf { phys, access }
            }
            (0b11, _) => Pte::Table(phys),
            _ => Pte::Invalid,
        }
    }
}
