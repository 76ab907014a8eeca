//! Simulated physical memory for page tables: 4 KiB frames of 512 64-bit entries, addressed by
//! physical address, as an IOMMU's page-table walker sees them.

use p2p_core::{Error, Result};

/// Entries per table (4 KiB / 8 bytes).
pub const ENTRIES: usize = 512;

/// A frame of page-table memory.
pub type Table = [u64; ENTRIES];

/// The frames page tables live in, starting at physical `base`.
#[derive(Debug)]
pub struct Frames {
    base: u64,
    tables: Vec<Box<Table>>,
    /// Valid entries per frame (so empty tables are found without scanning).
    counts: Vec<u16>,
    free: Vec<u32>,
    live: usize,
    limit: Option<usize>,
}

impl Frames {
    /// Frames at physical addresses from `base` (4 KiB aligned) up.
    pub fn new(base: u64) -> Self {
        Self {
            base,
            tables: Vec::new(),
            counts: Vec::new(),
            free: Vec::new(),
            live: 0,
            limit: None,
        }
    }

    /// Allocates a zeroed frame for a table that maps `for_iova`; fails with
    /// [`Error::NoTableMemory`] when the frame limit (fault injection) is reached.
    pub fn alloc(&mut self, for_iova: u64) -> Result<u32> {
        if self.limit.is_some_and(|l| self.live >= l) {
            return Err(Error::NoTableMemory { iova: for_iova });
        }
        self.live += 1;
        Ok(match self.free.pop() {
            Some(i) => i,
            None => {
                self.tables.push(Box::new([0; ENTRIES]));
                self.counts.push(0);
                (self.tables.len() - 1) as u32
            }
        })
    }

    /// Gives a frame back (it must be empty).
    pub fn release(&mut self, frame: u32) {
        debug_assert_eq!(
            self.counts[frame as usize], 0,
            "releasing a page table that still maps something"
        );
        // Every entry was cleared one by one (the count is 0), so the frame is already zero.
        debug_assert!(self.tables[frame as usize].iter().all(|&e| e == 0));
        self.free.push(frame);
        self.live -= 1;
    }

    /// Frames in use.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Makes allocation fail once `limit` frames are in use (`None`: no limit).
    pub fn set_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// Physical address of a frame.
    pub fn phys(&self, frame: u32) -> u64 {
        self.base + (u64::from(frame) << 12)
    }

    /// The frame at a physical address.
    pub fn frame_at(&self, phys: u64) -> u32 {
        ((phys - self.base) >> 12) as u32
    }

    /// A frame's entries.
    pub fn table(&self, frame: u32) -> &Table {
        &self.tables[frame as usize]
    }

    /// A frame's entries, mutably.
    pub fn table_mut(&mut self, frame: u32) -> &mut Table {
        &mut self.tables[frame as usize]
    }

    /// Valid-entry count of a frame.
    pub fn count(&self, frame: u32) -> u16 {
        self.counts[frame as usize]
    }

    /// Adjusts the valid-entry count of a frame.
    pub fn add_count(&mut self, frame: u32, delta: i32) {
        let c = &mut self.counts[frame as usize];
        *c = (i32::from(*c) + delta) as u16;
    }

    /// Reads the 64-bit entry at a physical address, as a hardware walker does.
    pub fn read_phys(&self, phys: u64) -> u64 {
        let frame = self.frame_at(phys & !0xfff);
        self.tables[frame as usize][((phys & 0xfff) >> 3) as usize]
    }
}
