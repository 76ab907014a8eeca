//! Routing one DMA request as PCIe does: up from the importer through its switch ports (a
//! downstream port with ACS request redirect or egress control sends it up; otherwise the switch
//! claims it for a peer whose BAR window holds the address, with no IOMMU on the way), then at the
//! host bridge through the importer's IOMMU domain, then to RAM or, if the host bridge forwards
//! peer traffic, to a peer's BAR. A request nothing claims is an unsupported request.

use crate::platform::MockPlatform;
use crate::sanitizer::FindingKind;
use crate::wrap::Lookup;
use p2p_core::access::Access;
use p2p_core::topology::{AcsFlags, NodeId, NodeKind, Route};
use p2p_core::traits::{DomainKind, IommuDomain};
use p2p_core::PciAddr;
use std::fmt;

/// Where a request lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Host RAM at this physical address.
    Ram(u64),
    /// A peer's BAR at this CPU physical address.
    Bar {
        /// The peer.
        device: PciAddr,
        /// CPU physical address in its BAR.
        phys: u64,
    },
}

/// Which way it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Turned around in the switch with this upstream port; the IOMMU never saw it.
    Switch(PciAddr),
    /// Through the host bridge and the importer's IOMMU domain.
    HostBridge,
}

/// A routed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Where it lands.
    pub target: Target,
    /// How it got there.
    pub via: Via,
}

impl fmt::Display for Routed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target {
            Target::Ram(p) => write!(f, "ram {p:#x}")?,
            Target::Bar { device, phys } => write!(f, "bar of {device} at {phys:#x}")?,
        }
        match self.via {
            Via::Switch(up) => write!(f, " via switch {up}"),
            Via::HostBridge => write!(f, " via host bridge"),
        }
    }
}

/// Why a request went nowhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaFault {
    /// The device cannot emit the address.
    #[error("device {device}: address {addr:#x} is above its DMA mask {mask:#x}")]
    AboveMask {
        /// The device.
        device: PciAddr,
        /// The address.
        addr: u64,
        /// Its mask.
        mask: u64,
    },
    /// The IOMMU refused it (a DMA remapping fault).
    #[error("device {device}: IOMMU fault at {addr:#x}: {reason}")]
    IommuFault {
        /// The device.
        device: PciAddr,
        /// The address.
        addr: u64,
        /// Why.
        reason: &'static str,
    },
    /// Nothing claimed it (a master abort / unsupported request).
    #[error("device {device}: unsupported request at {addr:#x}: {reason}")]
    UnsupportedRequest {
        /// The device.
        device: PciAddr,
        /// The address.
        addr: u64,
        /// Why.
        reason: String,
    },
}

impl MockPlatform {
    /// Routes one request of `device` to `addr` (which must not cross a 4 KiB page).
    pub fn route(&self, device: PciAddr, addr: u64, write: bool) -> Result<Routed, DmaFault> {
        let topo = self.topology_ref();
        let unsupported = |reason: String| DmaFault::UnsupportedRequest {
            device,
            addr,
            reason,
        };
        let start = topo
            .lookup(device)
            .map_err(|e| unsupported(e.to_string()))?;
        // Up through the switches.
        let mut cur = start;
        while let Some(port) = topo.node(cur).parent {
            let node = topo.node(port);
            match node.kind {
                NodeKind::SwitchDownstream => {
                    let up = node.parent.unwrap_or_else(|| {
                        unreachable!("a downstream port hangs below its switch")
                    });
                    if !node.acs.intersects(AcsFlags::RR | AcsFlags::EC) {
                        for &sibling in topo.children(up).iter().filter(|&&s| s != port) {
                            if let Some((peer, phys)) = self.bar_below(sibling, addr) {
                                let via = Via::Switch(topo.node(up).addr.unwrap_or(device));
                                return Ok(Routed {
                                    target: Target::Bar { device: peer, phys },
                                    via,
                                });
                            }
                        }
                    }
                    cur = up;
                }
                // A bridge known only as a bridge forwards between its own secondary devices,
                // as a conventional PCI bus does, then upstream.
                NodeKind::Bridge => {
                    if !node.acs.intersects(AcsFlags::RR | AcsFlags::EC) {
                        for &sibling in topo.children(port).iter().filter(|&&s| s != cur) {
                            if let Some((peer, phys)) = self.bar_below(sibling, addr) {
                                return Ok(Routed {
                                    target: Target::Bar { device: peer, phys },
                                    via: Via::Switch(node.addr.unwrap_or(device)),
                                });
                            }
                        }
                    }
                    cur = port;
                }
                // A root port or the host bridge itself: the request enters the root complex.
                _ => break,
            }
        }
        // The host bridge: the importer's IOMMU domain.
        let domain = self.iommu(device).map_err(|e| unsupported(e.to_string()))?;
        let phys = match domain.kind() {
            DomainKind::Blocked => {
                return Err(DmaFault::IommuFault {
                    device,
                    addr,
                    reason: "the domain blocks all DMA",
                })
            }
            DomainKind::Identity => self.bus_to_phys(addr),
            DomainKind::Translated => {
                let need = if write { Access::WRITE } else { Access::READ };
                let t = match domain.inner().lookup(addr) {
                    Lookup::Fresh(t) => t,
                    Lookup::Stale(t) => {
                        let (mapping, created_by) =
                            self.sanitizer().mapping_at(device, addr).unzip();
                        let mut f = self.sanitizer().finding(
                            FindingKind::StaleIotlb,
                            device,
                            addr,
                            1,
                            None,
                        );
                        (f.mapping, f.created_by) = (mapping, created_by);
                        self.sanitizer().report(f);
                        t
                    }
                    Lookup::Fault => {
                        return Err(DmaFault::IommuFault {
                            device,
                            addr,
                            reason: "no translation (DMA remapping fault)",
                        })
                    }
                };
                if !t.access.contains(need) {
                    return Err(DmaFault::IommuFault {
                        device,
                        addr,
                        reason: "access not permitted by the mapping",
                    });
                }
                t.phys.0
            }
        };
        // Past the IOMMU: RAM, or a peer BAR if the host bridge forwards peer traffic.
        if self.host_ram().contains(p2p_core::PhysAddr(phys)) {
            return Ok(Routed {
                target: Target::Ram(phys),
                via: Via::HostBridge,
            });
        }
        match self.bar_at_phys(phys) {
            Some(peer) => match topo.host_bridge_route_between(peer, device) {
                Ok(Route::ThroughHostBridge) => Ok(Routed {
                    target: Target::Bar { device: peer, phys },
                    via: Via::HostBridge,
                }),
                Ok(route) => Err(unsupported(format!(
                    "host bridge does not forward to {peer}: {route}"
                ))),
                Err(e) => Err(unsupported(e.to_string())),
            },
            None => Err(unsupported(format!(
                "nothing decodes physical address {phys:#x}"
            ))),
        }
    }

    /// The endpoint BAR below `node` whose bus range holds `bus`: (device, CPU physical).
    fn bar_below(&self, node: NodeId, bus: u64) -> Option<(PciAddr, u64)> {
        let topo = self.topology_ref();
        let n = topo.node(node);
        if let (NodeKind::Endpoint(e), Some(a)) = (&n.kind, n.addr) {
            return e
                .bars
                .iter()
                .find(|b| bus >= b.bus.0 && bus - b.bus.0 < b.size)
                .map(|b| (a, b.cpu.0 + (bus - b.bus.0)));
        }
        topo.children(node)
            .iter()
            .find_map(|&c| self.bar_below(c, bus))
    }

    /// A bus address as the CPU physical address it decodes to (identity outside BARs).
    fn bus_to_phys(&self, bus: u64) -> u64 {
        self.topology_ref()
            .endpoints()
            .flat_map(|(_, e)| e.bars.iter())
            .find(|b| bus >= b.bus.0 && bus - b.bus.0 < b.size)
            .map_or(bus, |b| b.cpu.0 + (bus - b.bus.0))
    }

    /// The device whose BAR holds CPU physical `phys`.
    fn bar_at_phys(&self, phys: u64) -> Option<PciAddr> {
        self.topology_ref()
            .endpoints()
            .find(|(_, e)| {
                e.bars
                    .iter()
                    .any(|b| phys >= b.cpu.0 && phys - b.cpu.0 < b.size)
            })
            .map(|(a, _)| a)
    }
}
