//! Which host bridges and CPUs route peer-to-peer traffic, as Linux decides it in
//! `drivers/pci/p2pdma.c` (`host_bridge_whitelist[]` and `cpu_supports_p2pdma()`).
//!
//! Linux keys the host-bridge list on the vendor and device id of the host bridge's own PCI
//! function (the device at 00.0 of the root bus, or the first root port there).

use super::HostBridgeP2p;

const INTEL: u16 = 0x8086;

/// `host_bridge_whitelist[]` of Linux 6.x: (vendor, device, what it allows).
pub const HOST_BRIDGES: &[(u16, u16, HostBridgeP2p)] = &[
    // Intel Xeon E5/E7 v1–v3: only between devices below the same host bridge.
    (INTEL, 0x3c00, HostBridgeP2p::SameBridge),
    (INTEL, 0x3c01, HostBridgeP2p::SameBridge),
    (INTEL, 0x2f00, HostBridgeP2p::SameBridge),
    (INTEL, 0x2f01, HostBridgeP2p::SameBridge),
    // Intel Skylake-E.
    (INTEL, 0x2030, HostBridgeP2p::Any),
    (INTEL, 0x2031, HostBridgeP2p::Any),
    (INTEL, 0x2032, HostBridgeP2p::Any),
    (INTEL, 0x2033, HostBridgeP2p::Any),
    (INTEL, 0x2020, HostBridgeP2p::Any),
    // Intel Ice Lake.
    (INTEL, 0x09a2, HostBridgeP2p::Any),
];

/// What a host bridge whose PCI function has these ids allows.
pub fn host_bridge_p2p(vendor: u16, device: u16) -> HostBridgeP2p {
    HOST_BRIDGES
        .iter()
        .find(|&&(v, d, _)| v == vendor && d == device)
        .map_or(HostBridgeP2p::None, |&(_, _, p)| p)
}

/// `cpu_supports_p2pdma()`: an AMD x86 CPU of family 0x17 (Zen) or later routes P2P between any
/// host bridges.
pub fn cpu_routes_p2p(x86_vendor_is_amd: bool, family: u32) -> bool {
    x86_vendor_is_amd && family >= 0x17
}

/// What the host bridges of an Intel Xeon of this CPU model allow, for inputs that name the CPU
/// but not its host bridge (NCCL topology files carry `familyid`/`modelid` only). Models map to
/// the host-bridge ids above: Sandy Bridge-EP (45, 0x3c00) and Haswell-EP (63, 0x2f00) allow P2P
/// below one bridge; Skylake-SP/Cascade Lake (85, 0x2020/0x2030) and Ice Lake-SP/D (106, 108,
/// 0x09a2) across bridges. Anything else is not on the list.
pub fn intel_model_host_bridge_p2p(family: u32, model: u32) -> HostBridgeP2p {
    match (family, model) {
        (6, 45 | 63) => HostBridgeP2p::SameBridge,
        (6, 85 | 106 | 108) => HostBridgeP2p::Any,
        _ => HostBridgeP2p::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_kernels_entries() {
        assert_eq!(host_bridge_p2p(INTEL, 0x2f00), HostBridgeP2p::SameBridge);
        assert_eq!(host_bridge_p2p(INTEL, 0x09a2), HostBridgeP2p::Any);
        assert_eq!(host_bridge_p2p(INTEL, 0x1237), HostBridgeP2p::None);
        assert_eq!(host_bridge_p2p(0x1022, 0x2030), HostBridgeP2p::None);
        assert!(cpu_routes_p2p(true, 0x19) && cpu_routes_p2p(true, 0x17));
        assert!(!cpu_routes_p2p(true, 0x16) && !cpu_routes_p2p(false, 0x19));
    }
}
