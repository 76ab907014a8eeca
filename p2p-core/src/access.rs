//! Access rights and DMA directions.

use bitflags::bitflags;

bitflags! {
    /// What a device may do to memory through a mapping.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Access: u8 {
        /// The device reads (DMA to the device).
        const READ = 1 << 0;
        /// The device writes (DMA from the device).
        const WRITE = 1 << 1;
        /// The device issues PCIe AtomicOps.
        const ATOMIC = 1 << 2;
    }
}

/// The direction of a DMA transfer, as the Linux DMA API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DmaDirection {
    /// Memory → device: the device only reads.
    ToDevice,
    /// Device → memory: the device only writes.
    FromDevice,
    /// Both.
    Bidirectional,
}

impl DmaDirection {
    /// The access a mapping needs for this direction.
    pub fn access(self) -> Access {
        match self {
            DmaDirection::ToDevice => Access::READ,
            DmaDirection::FromDevice => Access::WRITE,
            DmaDirection::Bidirectional => Access::READ | Access::WRITE,
        }
    }
}

impl From<DmaDirection> for Access {
    fn from(d: DmaDirection) -> Self {
        d.access()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_to_access() {
        assert_eq!(Access::from(DmaDirection::ToDevice), Access::READ);
        assert_eq!(DmaDirection::FromDevice.access(), Access::WRITE);
        assert!(DmaDirection::Bidirectional
            .access()
            .contains(Access::READ | Access::WRITE));
    }
}
