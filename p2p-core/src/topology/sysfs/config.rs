//! Reading the parts of a device's PCI configuration space that sysfs does not parse for us: the
//! PCIe capability's port type, the ACS extended capability, and the BAR registers (which hold
//! bus addresses, where `resource` holds CPU addresses).
//!
//! Every reader takes the bytes the `config` file gave, which may be short: 64 bytes for a
//! process without `CAP_SYS_ADMIN`, 256 for a device whose extended space the kernel cannot reach.
//! Nothing here indexes past the end or loops forever on a malformed capability list.

use crate::topology::AcsFlags;

/// Offset of the first extended capability.
const EXT_CAP_START: usize = 0x100;
/// Capability id of the PCI Express capability.
const CAP_ID_EXP: u8 = 0x10;
/// Extended capability id of ACS.
const EXT_CAP_ID_ACS: u16 = 0x000d;

/// The PCIe device/port type (PCIe capability register bits 7:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortType {
    /// A PCIe endpoint (0) or legacy endpoint (1).
    Endpoint,
    /// A root port (4).
    RootPort,
    /// A switch upstream port (5).
    SwitchUpstream,
    /// A switch downstream port (6).
    SwitchDownstream,
    /// A PCIe-to-PCI/PCI-X bridge (7) or PCI-to-PCIe bridge (8).
    PciBridge,
    /// A root-complex integrated endpoint (9) or event collector (10).
    RootComplexIntegrated,
    /// A value the specification does not define.
    Reserved(u8),
}

impl PortType {
    fn from_bits(v: u8) -> Self {
        match v {
            0 | 1 => PortType::Endpoint,
            4 => PortType::RootPort,
            5 => PortType::SwitchUpstream,
            6 => PortType::SwitchDownstream,
            7 | 8 => PortType::PciBridge,
            9 | 10 => PortType::RootComplexIntegrated,
            other => PortType::Reserved(other),
        }
    }
}

/// What is known of a device's ACS capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcsState {
    /// The capability is there: its capability and control registers.
    Present {
        /// ACS Capability register: which controls the port implements.
        capability: u16,
        /// ACS Control register: which are on.
        control: AcsFlags,
    },
    /// The device has no ACS capability, or the kernel cannot reach extended configuration
    /// space (a 256-byte `config`), so it sees none either.
    Absent,
    /// The `config` file was shorter than the kernel's configuration space (reading it needs
    /// `CAP_SYS_ADMIN`): ACS is not known, and is not guessed.
    Unknown,
}

/// What one `config` file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
    /// The size the kernel gives the file (its idea of the configuration space size).
    full_len: usize,
}

impl ConfigSpace {
    /// The bytes read from `config`, and the file's size as `stat` reports it.
    pub fn new(bytes: Vec<u8>, full_len: usize) -> Self {
        Self { bytes, full_len }
    }

    /// Whether fewer bytes could be read than the kernel holds. Every PCI function has at least
    /// 256 bytes of configuration space, so a shorter read is short whatever the file's size.
    pub fn is_short(&self) -> bool {
        self.bytes.len() < self.full_len.max(256)
    }

    fn u8_at(&self, off: usize) -> Option<u8> {
        self.bytes.get(off).copied()
    }

    fn u16_at(&self, off: usize) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8_at(off)?, self.u8_at(off + 1)?]))
    }

    fn u32_at(&self, off: usize) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8_at(off)?,
            self.u8_at(off + 1)?,
            self.u8_at(off + 2)?,
            self.u8_at(off + 3)?,
        ]))
    }

    /// Header type (0 for a device, 1 for a bridge), when the header is readable.
    pub fn header_type(&self) -> Option<u8> {
        self.u8_at(0x0e).map(|h| h & 0x7f)
    }

    /// The offset of a standard capability, walking the list from 0x34 (at most 48 entries,
    /// as Linux's `PCI_FIND_CAP_TTL`).
    fn find_capability(&self, id: u8) -> Option<usize> {
        let status = self.u16_at(0x06)?;
        if status & 0x10 == 0 {
            return None;
        }
        let mut pos = usize::from(self.u8_at(0x34)? & 0xfc);
        for _ in 0..48 {
            if pos < 0x40 {
                return None;
            }
            let cap = self.u8_at(pos)?;
            if cap == 0xff {
                return None;
            }
            if cap == id {
                return Some(pos);
            }
            pos = usize::from(self.u8_at(pos + 1)? & 0xfc);
        }
        None
    }

    /// The PCIe port type, or `None` when the device has no PCIe capability or it cannot be read.
    pub fn port_type(&self) -> Option<PortType> {
        let pos = self.find_capability(CAP_ID_EXP)?;
        let flags = self.u16_at(pos + 2)?;
        Some(PortType::from_bits(((flags >> 4) & 0xf) as u8))
    }

    /// The offset of an extended capability (walk bounded as Linux's `pci_find_next_ext_capability`).
    fn find_ext_capability(&self, id: u16) -> Option<usize> {
        let mut pos = EXT_CAP_START;
        let ttl = (4096 - EXT_CAP_START) / 8;
        for _ in 0..ttl {
            let header = self.u32_at(pos)?;
            if header == 0 || header == 0xffff_ffff {
                return None;
            }
            if (header & 0xffff) as u16 == id {
                return Some(pos);
            }
            let next = (header >> 20) as usize & 0xffc;
            if next < EXT_CAP_START {
                return None;
            }
            pos = next;
        }
        None
    }

    /// The ACS capability as the kernel sees it.
    pub fn acs(&self) -> AcsState {
        if self.is_short() {
            return AcsState::Unknown;
        }
        if self.full_len <= EXT_CAP_START || self.port_type().is_none() {
            // Conventional PCI has no extended space; a 256-byte file means the kernel cannot
            // reach it (pci_cfg_space_size() said so), so pci_find_ext_capability() finds nothing.
            return AcsState::Absent;
        }
        match self.find_ext_capability(EXT_CAP_ID_ACS) {
            Some(pos) => match (self.u16_at(pos + 4), self.u16_at(pos + 6)) {
                (Some(capability), Some(control)) => AcsState::Present {
                    capability,
                    control: AcsFlags::from_bits_truncate(control),
                },
                _ => AcsState::Unknown,
            },
            None => AcsState::Absent,
        }
    }

    /// The bus address BAR `index` decodes, from its register (and the next one for a 64-bit
    /// BAR). `None` when the register is unreadable, an I/O BAR, unassigned (zero), or reads as
    /// all ones (a device in D3cold).
    pub fn bar_bus_address(&self, index: u8) -> Option<u64> {
        let max = match self.header_type()? {
            0 => 6,
            1 => 2,
            _ => 0,
        };
        if index >= max {
            return None;
        }
        let off = 0x10 + 4 * usize::from(index);
        let low = self.u32_at(off)?;
        if low == 0xffff_ffff || low & 1 != 0 {
            return None;
        }
        let addr = if (low >> 1) & 3 == 2 {
            (u64::from(self.u32_at(off + 4)?) << 32) | u64::from(low & !0xf)
        } else {
            u64::from(low & !0xf)
        };
        (addr != 0).then_some(addr)
    }
}

/// Builds configuration-space images as a device would present them: a test and tool aid, so
/// fake sysfs trees hold the same bytes real hardware does.
#[derive(Debug, Clone)]
pub struct ConfigImage {
    bytes: Vec<u8>,
}

impl ConfigImage {
    /// A 4096-byte PCIe configuration space: vendor, device, class, header type, the PCIe
    /// capability at 0x40 with `port_type` (its register value: 0 endpoint, 4 root port, 5
    /// upstream, 6 downstream), and when `acs` is given an ACS extended capability at 0x100.
    pub fn pcie(
        vendor: u16,
        device: u16,
        class: u32,
        port_type: u8,
        acs: Option<(u16, AcsFlags)>,
    ) -> Self {
        let mut b = vec![0u8; 4096];
        b[0..2].copy_from_slice(&vendor.to_le_bytes());
        b[2..4].copy_from_slice(&device.to_le_bytes());
        b[0x06] = 0x10; // status: capability list
        b[0x09..0x0c].copy_from_slice(&class.to_le_bytes()[..3]);
        b[0x0e] = if class >> 8 == 0x0604 { 1 } else { 0 };
        b[0x34] = 0x40;
        b[0x40] = CAP_ID_EXP;
        b[0x41] = 0; // end of the list
        b[0x42..0x44].copy_from_slice(&((u16::from(port_type) << 4) | 2).to_le_bytes());
        if let Some((cap, ctrl)) = acs {
            b[0x100..0x104].copy_from_slice(&(u32::from(EXT_CAP_ID_ACS) | (1 << 16)).to_le_bytes());
            b[0x104..0x106].copy_from_slice(&cap.to_le_bytes());
            b[0x106..0x108].copy_from_slice(&ctrl.bits().to_le_bytes());
        }
        Self { bytes: b }
    }

    /// Writes a memory BAR register (64-bit when `addr` needs it).
    pub fn with_bar(mut self, index: u8, addr: u64) -> Self {
        let off = 0x10 + 4 * usize::from(index);
        if addr > u64::from(u32::MAX) {
            let low = (addr as u32 & !0xf) | 0x4;
            self.bytes[off..off + 4].copy_from_slice(&low.to_le_bytes());
            self.bytes[off + 4..off + 8].copy_from_slice(&((addr >> 32) as u32).to_le_bytes());
        } else {
            self.bytes[off..off + 4].copy_from_slice(&(addr as u32 & !0xf).to_le_bytes());
        }
        self
    }

    /// The bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_port_type_acs_and_bars() {
        let img = ConfigImage::pcie(
            0x10b5,
            0x8747,
            0x060400,
            6,
            Some((0x5f, AcsFlags::RR | AcsFlags::SV)),
        );
        let c = ConfigSpace::new(img.into_bytes(), 4096);
        assert_eq!(c.header_type(), Some(1));
        assert_eq!(c.port_type(), Some(PortType::SwitchDownstream));
        assert_eq!(
            c.acs(),
            AcsState::Present {
                capability: 0x5f,
                control: AcsFlags::RR | AcsFlags::SV
            }
        );
        let img = ConfigImage::pcie(0x10de, 0x20b0, 0x030200, 0, None)
            .with_bar(0, 0xd000_0000)
            .with_bar(1, 0x38_0000_0000);
        let c = ConfigSpace::new(img.into_bytes(), 4096);
        assert_eq!(c.acs(), AcsState::Absent);
        assert_eq!(c.bar_bus_address(0), Some(0xd000_0000));
        assert_eq!(c.bar_bus_address(1), Some(0x38_0000_0000));
        assert_eq!(c.bar_bus_address(3), None);
        assert_eq!(c.bar_bus_address(6), None);
    }

    #[test]
    fn short_space_is_unknown_not_guessed() {
        let img = ConfigImage::pcie(0x10b5, 0x8747, 0x060400, 6, Some((0x5f, AcsFlags::RR)));
        let bytes = img.into_bytes();
        // What an unprivileged read of a 4096-byte file returns.
        let c = ConfigSpace::new(bytes[..64].to_vec(), 4096);
        assert!(c.is_short());
        assert_eq!(c.acs(), AcsState::Unknown);
        assert_eq!(c.port_type(), None);
        // A kernel that cannot reach extended space exposes 256 bytes: it sees no ACS.
        let c = ConfigSpace::new(bytes[..256].to_vec(), 256);
        assert_eq!(c.acs(), AcsState::Absent);
        assert_eq!(c.port_type(), Some(PortType::SwitchDownstream));
    }

    #[test]
    fn looping_capability_lists_end() {
        let mut b = ConfigImage::pcie(1, 2, 0x020000, 0, None).into_bytes();
        b[0x40] = 0x01; // not the PCIe capability
        b[0x41] = 0x40; // points at itself
        b[0x100..0x104].copy_from_slice(&(0x0001u32 | (0x100 << 20)).to_le_bytes());
        let c = ConfigSpace::new(b, 4096);
        assert_eq!(c.port_type(), None);
        assert_eq!(c.find_ext_capability(EXT_CAP_ID_ACS), None);
    }

    proptest! {
        /// Any bytes of any length: no panic, and a short read never claims to know ACS.
        #[test]
        fn never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..4200),
            full in 0usize..4200,
        ) {
            let c = ConfigSpace::new(bytes.clone(), full);
            let _ = (c.header_type(), c.port_type());
            for i in 0..8 {
                let _ = c.bar_bus_address(i);
            }
            let acs = c.acs();
            if bytes.len() < full.max(256) {
                prop_assert_eq!(acs, AcsState::Unknown);
            }
        }

        /// A real-shaped image (PCIe capability, ACS, BARs) with edits where the parsers
        /// look: the header, the capability pointers and the extended capability headers.
        #[test]
        fn never_panics_on_mutated_images(
            port in 0u8..16,
            acs in any::<u16>(),
            edits in proptest::collection::vec((0usize..0x110, any::<u8>()), 0..24),
            keep in 0usize..=4096,
        ) {
            let img = ConfigImage::pcie(0x10b5, 0x8747, 0x060400, port, Some((0x7f, AcsFlags::from_bits_truncate(acs))))
                .with_bar(0, 0xfe00_0000);
            let mut b = img.into_bytes();
            for (at, v) in edits {
                b[at] = v;
            }
            b.truncate(keep);
            let c = ConfigSpace::new(b, 4096);
            let _ = (c.header_type(), c.port_type(), c.bar_bus_address(0), c.bar_bus_address(1));
            if keep < 4096 {
                prop_assert_eq!(c.acs(), AcsState::Unknown);
            } else {
                let _ = c.acs();
            }
        }
    }
}
