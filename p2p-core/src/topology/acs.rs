//! ACS (Access Control Services) control bits, at their PCIe specification positions in the ACS
//! Control register (PCIe r6.0 §7.7.8.3).

use bitflags::bitflags;

bitflags! {
    /// ACS Control register bits of a port.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct AcsFlags: u16 {
        /// Source Validation.
        const SV = 1 << 0;
        /// Translation Blocking.
        const TB = 1 << 1;
        /// P2P Request Redirect.
        const RR = 1 << 2;
        /// P2P Completion Redirect.
        const CR = 1 << 3;
        /// Upstream Forwarding.
        const UF = 1 << 4;
        /// P2P Egress Control.
        const EC = 1 << 5;
        /// Direct Translated P2P.
        const DT = 1 << 6;
    }
}

impl AcsFlags {
    /// The bits that make a port send peer requests up to the root complex instead of turning
    /// them around, as Linux's `pci_bridge_has_acs_redir()` tests: RR, CR or EC.
    pub const REDIRECT: AcsFlags = AcsFlags::RR.union(AcsFlags::CR).union(AcsFlags::EC);

    /// What `pci_std_enable_acs()` turns on when the IOMMU is active (SV, RR, CR, UF).
    pub const LINUX_ISOLATION: AcsFlags = AcsFlags::SV
        .union(AcsFlags::RR)
        .union(AcsFlags::CR)
        .union(AcsFlags::UF);

    /// Whether the port redirects peer-to-peer traffic upstream.
    pub fn redirects(self) -> bool {
        self.intersects(Self::REDIRECT)
    }

    /// Names of the set bits, in register order (`["RR", "CR"]`).
    pub fn names(self) -> Vec<&'static str> {
        self.iter_names().map(|(n, _)| n).collect()
    }

    /// Parses one bit name (`"RR"`), case-insensitively.
    pub fn from_name_ci(name: &str) -> Option<Self> {
        Self::from_name(&name.to_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_at_spec_positions() {
        assert_eq!(AcsFlags::SV.bits(), 0x01);
        assert_eq!(AcsFlags::TB.bits(), 0x02);
        assert_eq!(AcsFlags::RR.bits(), 0x04);
        assert_eq!(AcsFlags::CR.bits(), 0x08);
        assert_eq!(AcsFlags::UF.bits(), 0x10);
        assert_eq!(AcsFlags::EC.bits(), 0x20);
        assert_eq!(AcsFlags::DT.bits(), 0x40);
        assert_eq!(AcsFlags::LINUX_ISOLATION.bits(), 0x1d);
    }

    #[test]
    fn redirect_is_rr_cr_or_ec_only() {
        assert!(AcsFlags::RR.redirects());
        assert!(AcsFlags::CR.redirects());
        assert!(AcsFlags::EC.redirects());
        assert!(!(AcsFlags::SV | AcsFlags::UF | AcsFlags::TB | AcsFlags::DT).redirects());
        assert_eq!((AcsFlags::RR | AcsFlags::CR).names(), vec!["RR", "CR"]);
        assert_eq!(AcsFlags::from_name_ci("ec"), Some(AcsFlags::EC));
    }
}
