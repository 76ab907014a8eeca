//! Classifying the path between two endpoints, and the route Linux's p2pdma would choose for it
//! (`calc_map_type_and_dist()` in `drivers/pci/p2pdma.c`).

use super::{HostBridge, HostBridgeP2p, NodeId, NodeKind, Topology};
use crate::error::Result;
use crate::pci::PciAddr;
use std::collections::HashSet;
use std::fmt;

/// How far apart two devices are, in the words of `nvidia-smi topo -m`. Ordered from nearest to
/// farthest, so a policy can say "at most PXB".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "UPPERCASE"))]
pub enum PathClass {
    /// The same device.
    Loc,
    /// At most one PCIe bridge (switch) between them.
    Pix,
    /// Several PCIe bridges, no host bridge.
    Pxb,
    /// Through one PCIe host bridge (root complex).
    Phb,
    /// Between host bridges of one NUMA node.
    Node,
    /// Across the SMP interconnect between NUMA nodes (QPI/UPI, xGMI).
    Sys,
}

impl PathClass {
    /// All classes, nearest first.
    pub const ALL: [PathClass; 6] = [
        PathClass::Loc,
        PathClass::Pix,
        PathClass::Pxb,
        PathClass::Phb,
        PathClass::Node,
        PathClass::Sys,
    ];

    /// The short name (`"PIX"`).
    pub fn name(self) -> &'static str {
        match self {
            PathClass::Loc => "LOC",
            PathClass::Pix => "PIX",
            PathClass::Pxb => "PXB",
            PathClass::Phb => "PHB",
            PathClass::Node => "NODE",
            PathClass::Sys => "SYS",
        }
    }

    /// The legend line `nvidia-smi topo -m` prints for it.
    pub fn legend(self) -> &'static str {
        match self {
            PathClass::Loc => "Same device",
            PathClass::Pix => "Connection traversing at most a single PCIe bridge",
            PathClass::Pxb => {
                "Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)"
            }
            PathClass::Phb => {
                "Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)"
            }
            PathClass::Node => "Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node",
            PathClass::Sys => "Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)",
        }
    }

    /// Parses a short name, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for PathClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the kernel would refuse a peer-to-peer route (`PCI_P2PDMA_MAP_NOT_SUPPORTED`, -EREMOTEIO).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Unsupported {
    /// The traffic must reach the host bridge, which is not on the P2P allow-list.
    HostBridgeNotAllowed {
        /// The host bridge.
        bridge: String,
    },
    /// The devices sit below two host bridges and at least one allows P2P only below itself
    /// (or not at all).
    CrossHostBridge {
        /// The provider's host bridge.
        provider_bridge: String,
        /// The client's host bridge.
        client_bridge: String,
    },
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsupported::HostBridgeNotAllowed { bridge } => {
                write!(f, "host bridge {bridge} is not in the P2PDMA allow-list")
            }
            Unsupported::CrossHostBridge {
                provider_bridge,
                client_bridge,
            } => write!(
                f,
                "devices do not share an upstream bridge and host bridges {provider_bridge} and \
                 {client_bridge} do not both allow P2P across bridges"
            ),
        }
    }
}

/// The route a peer-to-peer request takes, as Linux's `enum pci_p2pdma_map_type`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// The request turns around in a switch: program CPU physical + bus offset, no IOMMU.
    BusAddr,
    /// The request goes up to a host bridge that routes P2P, through the client's IOMMU domain.
    ThroughHostBridge,
    /// No route.
    Unsupported(Unsupported),
}

impl Route {
    /// The name used in JSON output: `bus-addr`, `host-bridge` or `unsupported`.
    pub fn name(&self) -> &'static str {
        match self {
            Route::BusAddr => "bus-addr",
            Route::ThroughHostBridge => "host-bridge",
            Route::Unsupported(_) => "unsupported",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Unsupported(why) => write!(f, "unsupported ({why})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Everything [`Topology::path`] finds out about a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The `nvidia-smi` class.
    pub class: PathClass,
    /// The kernel's route.
    pub route: Route,
    /// The p2pdma distance: hops from each device to the nearest common upstream bridge, or the
    /// full depths when there is none (0 for the same device, 4 for two devices on one switch).
    pub distance: u32,
    /// Ports whose ACS bits redirect P2P on the way (why a same-switch pair is not `BusAddr`),
    /// provider side first.
    pub acs_redirect: Vec<PciAddr>,
}

impl Topology {
    /// Classifies the path between two endpoints and picks the route p2pdma would take for
    /// `provider` (the memory's device) and `client` (the device doing DMA).
    ///
    /// Symmetric in its class, distance and route; O(depth) in time.
    pub fn path(&self, provider: PciAddr, client: PciAddr) -> Result<PathInfo> {
        self.endpoint(provider)?;
        self.endpoint(client)?;
        let (p, c) = (self.lookup(provider)?, self.lookup(client)?);
        if p == c {
            return Ok(PathInfo {
                class: PathClass::Loc,
                route: Route::BusAddr,
                distance: 0,
                acs_redirect: Vec::new(),
            });
        }
        let ancestor = self.common_ancestor(p, c);
        // Linux walks pci_upstream_bridge(), which ends at the root port: a host bridge is
        // never a "common upstream bridge".
        let bridge = ancestor.filter(|&a| !matches!(self.node(a).kind, NodeKind::HostBridge(_)));
        let (dp, dc) = (self.node(p).depth, self.node(c).depth);

        let (distance, acs_redirect) = match bridge {
            Some(a) => {
                let da = self.node(a).depth;
                // Provider side including the common bridge, client side excluding it.
                let mut redirect: Vec<PciAddr> = self
                    .walk_up(p, Some(a), true)
                    .filter(|&n| self.node(n).acs.redirects())
                    .filter_map(|n| self.node(n).addr)
                    .collect();
                redirect.extend(
                    self.walk_up(c, Some(a), false)
                        .filter(|&n| self.node(n).acs.redirects())
                        .filter_map(|n| self.node(n).addr),
                );
                ((dp - da) + (dc - da), redirect)
            }
            // No common upstream bridge: full depths (host bridges excluded).
            None => (dp + dc, Vec::new()),
        };

        let route = if bridge.is_some() && acs_redirect.is_empty() {
            Route::BusAddr
        } else {
            self.host_bridge_route(p, c)
        };
        Ok(PathInfo {
            class: self.classify(p, c, ancestor),
            route,
            distance,
            acs_redirect,
        })
    }

    /// Whether a request from `client` to `provider` that reaches the host bridge is forwarded
    /// there: [`Route::ThroughHostBridge`] or [`Route::Unsupported`] with the reason.
    pub fn host_bridge_route_between(&self, provider: PciAddr, client: PciAddr) -> Result<Route> {
        Ok(self.host_bridge_route(self.lookup(provider)?, self.lookup(client)?))
    }

    /// Linux's `cpu_supports_p2pdma() || host_bridge_whitelist(p, c)`.
    fn host_bridge_route(&self, p: NodeId, c: NodeId) -> Route {
        if self.cpu_p2p {
            return Route::ThroughHostBridge;
        }
        let (pid, phb) = self.host_bridge_of(p);
        let (cid, chb) = self.host_bridge_of(c);
        let allowed = |hb: &HostBridge, same: bool| match hb.p2p {
            HostBridgeP2p::Any => true,
            HostBridgeP2p::SameBridge => same,
            HostBridgeP2p::None => false,
        };
        if pid == cid {
            if allowed(phb, true) {
                Route::ThroughHostBridge
            } else {
                Route::Unsupported(Unsupported::HostBridgeNotAllowed {
                    bridge: phb.name.clone(),
                })
            }
        } else if allowed(phb, false) && allowed(chb, false) {
            Route::ThroughHostBridge
        } else {
            // Report in a canonical order so the reason is the same whichever side asks.
            let (a, b) = if phb.name <= chb.name {
                (phb, chb)
            } else {
                (chb, phb)
            };
            Route::Unsupported(Unsupported::CrossHostBridge {
                provider_bridge: a.name.clone(),
                client_bridge: b.name.clone(),
            })
        }
    }

    fn classify(&self, p: NodeId, c: NodeId, ancestor: Option<NodeId>) -> PathClass {
        match ancestor {
            None => {
                let (_, phb) = self.host_bridge_of(p);
                let (_, chb) = self.host_bridge_of(c);
                if phb.numa == chb.numa {
                    PathClass::Node
                } else {
                    PathClass::Sys
                }
            }
            Some(a) if matches!(self.node(a).kind, NodeKind::HostBridge(_)) => PathClass::Phb,
            Some(a) => {
                // Count the bridges crossed: each switch once (its ports are one bridge), each
                // root port once.
                let mut bridges = HashSet::new();
                let crossed = self
                    .walk_up(p, Some(a), false)
                    .skip(1)
                    .chain(self.walk_up(c, Some(a), false).skip(1))
                    .chain(std::iter::once(a));
                for n in crossed {
                    bridges.insert(self.switch_of(n).unwrap_or(n));
                }
                if bridges.len() <= 1 {
                    PathClass::Pix
                } else {
                    PathClass::Pxb
                }
            }
        }
    }

    /// The nearest common ancestor (possibly a host bridge), or `None` for different trees.
    fn common_ancestor(&self, mut a: NodeId, mut b: NodeId) -> Option<NodeId> {
        while self.node(a).depth > self.node(b).depth {
            a = self.node(a).parent?;
        }
        while self.node(b).depth > self.node(a).depth {
            b = self.node(b).parent?;
        }
        while a != b {
            a = self.node(a).parent?;
            b = self.node(b).parent?;
        }
        Some(a)
    }

    /// Nodes from `from` upward, stopping at `stop` (yielded only if `inclusive`) or at the
    /// host bridge (never yielded).
    fn walk_up(
        &self,
        from: NodeId,
        stop: Option<NodeId>,
        inclusive: bool,
    ) -> impl Iterator<Item = NodeId> + '_ {
        let mut cur = Some(from);
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let n = cur?;
            if matches!(self.node(n).kind, NodeKind::HostBridge(_)) {
                return None;
            }
            if Some(n) == stop {
                done = true;
                return inclusive.then_some(n);
            }
            cur = self.node(n).parent;
            Some(n)
        })
    }
}

#[cfg(test)]
mod tests;
