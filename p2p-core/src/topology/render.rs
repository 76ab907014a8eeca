//! Printing a topology: the `nvidia-smi topo -m` style matrix, the pairs JSON that `p2pctl topo
//! --json` prints, and Graphviz DOT.

use super::{Endpoint, HostBridgeP2p, NodeKind, PathClass, Topology};
use crate::error::Result;
use crate::pci::PciAddr;
use serde::Serialize;
use std::fmt::Write;

/// One endpoint in [`PairsReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DeviceEntry {
    /// PCI address in lspci form.
    pub id: PciAddr,
    /// `gpu`, `nic`, `nvme`, `accelerator` or `other`.
    pub class: String,
    /// NUMA node of its host bridge.
    pub numa: u32,
}

/// One unordered pair of endpoints in [`PairsReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PairEntry {
    /// The first device (in topology order).
    pub a: PciAddr,
    /// The second device.
    pub b: PciAddr,
    /// `LOC`, `PIX`, `PXB`, `PHB`, `NODE` or `SYS`.
    pub path: PathClass,
    /// `bus-addr`, `host-bridge` or `unsupported`.
    pub route: String,
    /// NVLinks joining the two (beside the PCIe path and route); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvlinks: Option<u32>,
}

/// What `p2pctl topo --json` prints: every endpoint, and one entry per unordered pair of distinct
/// endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PairsReport {
    /// The endpoints, in topology order.
    pub devices: Vec<DeviceEntry>,
    /// The pairs: `a` before `b` in topology order.
    pub pairs: Vec<PairEntry>,
}

/// Which endpoints a report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shown {
    /// Only those that take part in DMA ([`Endpoint::is_dma_capable`]): what a person wants to
    /// see on a server whose root complex holds dozens of system functions.
    #[default]
    DmaCapable,
    /// Every PCI function that is not a bridge or port.
    All,
}

impl Shown {
    fn includes(self, e: &Endpoint) -> bool {
        self == Shown::All || e.is_dma_capable()
    }
}

/// The endpoints a report shows, in topology order.
fn shown(t: &Topology, which: Shown) -> Vec<(PciAddr, &Endpoint)> {
    t.endpoints().filter(|(_, e)| which.includes(e)).collect()
}

/// Builds the pairs report.
pub fn pairs(t: &Topology, which: Shown) -> Result<PairsReport> {
    let eps: Vec<(PciAddr, String)> = shown(t, which)
        .into_iter()
        .map(|(a, e)| (a, e.class.name().to_owned()))
        .collect();
    let mut devices = Vec::with_capacity(eps.len());
    for (id, class) in &eps {
        devices.push(DeviceEntry {
            id: *id,
            class: class.clone(),
            numa: t.numa_of(*id)?,
        });
    }
    let mut pairs = Vec::new();
    for (i, (a, _)) in eps.iter().enumerate() {
        for (b, _) in &eps[i + 1..] {
            let p = t.path(*a, *b)?;
            pairs.push(PairEntry {
                a: *a,
                b: *b,
                path: p.class,
                route: p.route.name().to_owned(),
                nvlinks: Some(t.nvlinks().between(*a, *b)).filter(|&n| n > 0),
            });
        }
    }
    Ok(PairsReport { devices, pairs })
}

/// The matrix `nvidia-smi topo -m` prints, with a NUMA column, a route matrix and the legend.
pub fn matrix(t: &Topology, which: Shown) -> Result<String> {
    let eps: Vec<PciAddr> = shown(t, which).into_iter().map(|(a, _)| a).collect();
    let names: Vec<String> = eps.iter().map(|&a| t.display_name(a)).collect();
    let w = names.iter().map(String::len).max().unwrap_or(0).max(5) + 2;
    let mut out = String::new();
    let header = |out: &mut String, extra: &str| {
        let _ = write!(out, "{:w$}", "");
        for n in &names {
            let _ = write!(out, "{n:<w$}");
        }
        let _ = writeln!(out, "{extra}");
    };
    header(&mut out, "NUMA   PCI");
    for (i, &a) in eps.iter().enumerate() {
        let _ = write!(out, "{:<w$}", names[i]);
        for &b in &eps {
            let nv = t.nvlinks().between(a, b);
            let cell = if a == b {
                "X".to_owned()
            } else if nv > 0 {
                // As nvidia-smi: NVLink shown in place of the PCIe class; the route matrix
                // below stays PCIe.
                format!("NV{nv}")
            } else {
                t.path(a, b)?.class.name().to_owned()
            };
            let _ = write!(out, "{cell:<w$}");
        }
        let _ = writeln!(out, "{:<7}{a}", t.numa_of(a)?);
    }
    let _ = writeln!(out, "\nP2P route (as Linux p2pdma decides it):");
    header(&mut out, "");
    for (i, &a) in eps.iter().enumerate() {
        let _ = write!(out, "{:<w$}", names[i]);
        for &b in &eps {
            let cell = match t.path(a, b)?.route {
                _ if a == b => "X",
                super::Route::BusAddr => "BUS",
                super::Route::ThroughHostBridge => "HB",
                super::Route::Unsupported(_) => "NS",
            };
            let _ = write!(out, "{cell:<w$}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "\nLegend:\n");
    let _ = writeln!(out, "  X    = Self");
    for c in PathClass::ALL
        .into_iter()
        .rev()
        .filter(|&c| c != PathClass::Loc)
    {
        let _ = writeln!(out, "  {:<4} = {}", c.name(), c.legend());
    }
    if !t.nvlinks().is_empty() {
        let _ = writeln!(
            out,
            "  NV#  = Connection traversing a bonded set of # NVLinks (P2P DMA still routes over PCIe)"
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  BUS  = peer requests turn around in a switch: bus addresses, no IOMMU"
    );
    let _ = writeln!(
        out,
        "  HB   = peer requests go through the host bridge and the importer's IOMMU domain"
    );
    let _ = writeln!(
        out,
        "  NS   = not supported (the kernel's p2pdma returns -EREMOTEIO)"
    );
    Ok(out)
}

/// What a host bridge allows, as a person reads it.
fn p2p_words(p: HostBridgeP2p) -> &'static str {
    match p {
        HostBridgeP2p::None => "p2p: none",
        HostBridgeP2p::SameBridge => "p2p: same bridge",
        HostBridgeP2p::Any => "p2p: any bridge",
    }
}

/// Graphviz DOT: the tree, each CPU socket once with its host bridges grouped around it, the
/// SMP link between sockets, endpoints labelled with name, class and address, ports with their
/// ACS redirect bits. Endpoints as [`Shown`] says (with the bridges above them).
pub fn dot(t: &Topology, which: Shown) -> String {
    let mut out = String::from(
        "graph topology {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    let mut sockets: Vec<u32> = t.host_bridges().map(|(_, hb)| hb.socket).collect();
    sockets.sort_unstable();
    sockets.dedup();
    for s in &sockets {
        let _ = writeln!(
            out,
            "  subgraph cluster_socket{s} {{\n    style=dotted;\n    socket{s} [shape=ellipse, label=\"CPU socket {s}\"];"
        );
        for (id, hb) in t.host_bridges().filter(|(_, hb)| hb.socket == *s) {
            let _ = writeln!(
                out,
                "    n{} [label=\"{}\\nNUMA node {}\\n{}\", shape=house];\n    socket{s} -- n{};",
                id.0,
                hb.name,
                hb.numa,
                p2p_words(hb.p2p),
                id.0
            );
        }
        let _ = writeln!(out, "  }}");
    }
    for w in sockets.windows(2) {
        let _ = writeln!(
            out,
            "  socket{} -- socket{} [label=\"SMP link\", style=dashed];",
            w[0], w[1]
        );
    }
    for id in t.node_ids() {
        let n = t.node(id);
        let addr = n.addr.map(|a| a.to_string()).unwrap_or_default();
        let acs = if n.acs.redirects() {
            format!("\\nACS redirect: {}", n.acs.names().join(" "))
        } else {
            String::new()
        };
        let (label, style) = match &n.kind {
            NodeKind::HostBridge(_) => continue,
            NodeKind::Endpoint(e) if !which.includes(e) => continue,
            NodeKind::RootPort => (format!("root port\\n{addr}{acs}"), ""),
            NodeKind::SwitchUpstream => (format!("switch\\n{addr}{acs}"), ", style=rounded"),
            NodeKind::SwitchDownstream => {
                (format!("downstream port\\n{addr}{acs}"), ", style=rounded")
            }
            NodeKind::Bridge => (format!("bridge\\n{addr}{acs}"), ", style=dashed"),
            NodeKind::Endpoint(e) => (
                format!("{} ({})\\n{addr}{acs}", e.name, e.class),
                ", style=bold",
            ),
        };
        let _ = writeln!(out, "  n{} [label=\"{label}\"{style}];", id.0);
        if let Some(p) = n.parent {
            let _ = writeln!(out, "  n{} -- n{};", p.0, id.0);
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::presets;
    use super::*;

    #[test]
    fn pairs_cover_every_unordered_pair_once() {
        let t = presets::dgx().unwrap();
        let r = pairs(&t, Shown::All).unwrap();
        assert_eq!(r.devices.len(), 16);
        assert_eq!(r.pairs.len(), 16 * 15 / 2);
        let mut seen = std::collections::HashSet::new();
        for p in &r.pairs {
            assert_ne!(p.a, p.b);
            assert!(seen.insert((p.a.min(p.b), p.a.max(p.b))));
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["pairs"][0]["path"], "PIX");
        assert_eq!(json["pairs"][0]["route"], "bus-addr");
        assert_eq!(json["devices"][0]["class"], "gpu");
    }

    #[test]
    fn matrix_and_dot_name_every_device() {
        let t = presets::workstation().unwrap();
        let m = matrix(&t, Shown::All).unwrap();
        let d = dot(&t, Shown::All);
        for (a, e) in t.endpoints() {
            assert!(m.contains(&e.name) && m.contains(&a.to_string()));
            assert!(d.contains(&a.to_string()));
        }
        assert!(
            m.contains("Legend")
                && m.contains("PIX  = Connection traversing at most a single PCIe bridge")
        );
        assert!(d.starts_with("graph topology {") && d.trim_end().ends_with('}'));
    }

    #[test]
    fn only_dma_capable_endpoints_are_shown_unless_all_are_asked_for() {
        use crate::topology::{Bar, DeviceClass, HostBridgeAt, HostBridgeP2p, TopologyBuilder};
        let mut b = TopologyBuilder::new();
        let hb = b
            .host_bridge("pci0000:00", HostBridgeAt::new(HostBridgeP2p::None))
            .unwrap();
        let a = |s: &str| s.parse::<PciAddr>().unwrap();
        let bar = |cpu| vec![Bar::identity(0, cpu, 0x1000)];
        // The host bridge's own function (even with a BAR), an ISA bridge, a peripheral with
        // no BAR, a peripheral with a BAR, a GPU without BARs.
        for (addr, code, bars) in [
            ("00:00.0", 0x060000, bar(0x1000)),
            ("00:1f.0", 0x060100, Vec::new()),
            ("00:14.2", 0x050000, Vec::new()),
            ("00:08.0", 0x088000, bar(0x2000)),
            ("00:02.0", 0x030000, Vec::new()),
        ] {
            let class = DeviceClass::from_pci_class(code);
            let id = b.endpoint(hb, a(addr), class, bars).unwrap();
            b.set_pci_class(id, code).unwrap();
        }
        let t = b.build().unwrap();
        let ids = |which| -> Vec<String> {
            pairs(&t, which)
                .unwrap()
                .devices
                .iter()
                .map(|d| d.id.to_string())
                .collect()
        };
        assert_eq!(ids(Shown::DmaCapable), ["0000:00:08.0", "0000:00:02.0"]);
        assert_eq!(ids(Shown::All).len(), 5);
        let m = matrix(&t, Shown::DmaCapable).unwrap();
        assert!(
            !m.contains("0000:00:00.0") && m.contains("0000:00:08.0"),
            "{m}"
        );
        assert!(!dot(&t, Shown::DmaCapable).contains("0000:00:1f.0"));
        assert!(dot(&t, Shown::All).contains("0000:00:1f.0"));
    }

    #[test]
    fn dot_labels_read_as_words_and_name_each_socket_once() {
        let t = presets::dgx().unwrap();
        let d = dot(&t, Shown::All);
        for s in 0..2 {
            assert_eq!(d.matches(&format!("\"CPU socket {s}\"")).count(), 1, "{d}");
        }
        assert!(!d.contains("p2p="), "{d}");
        assert!(
            d.contains("p2p: any bridge") && d.contains("NUMA node 1"),
            "{d}"
        );
        let acs = dot(&presets::acs_switch().unwrap(), Shown::All);
        assert!(acs.contains("ACS redirect: "), "{acs}");
    }

    #[test]
    fn nvlinks_show_as_nv_count_beside_the_pcie_route() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/topologies/nccl-2socket.xml");
        let t = crate::topology::nccl::from_path(&path).unwrap().topology;
        let m = matrix(&t, Shown::All).unwrap();
        let row = m.lines().find(|l| l.starts_with("GPU0 ")).unwrap();
        assert_eq!(row.split_whitespace().nth(2), Some("NV12"), "{m}");
        assert!(m.contains("NV#  = "), "{m}");
        let r = pairs(&t, Shown::All).unwrap();
        let nv: Vec<&PairEntry> = r.pairs.iter().filter(|p| p.nvlinks.is_some()).collect();
        assert_eq!(nv.len(), 1);
        assert_eq!(
            (nv[0].path, nv[0].route.as_str(), nv[0].nvlinks),
            (PathClass::Pix, "bus-addr", Some(12))
        );
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["pairs"][1].get("nvlinks").is_none());
    }
}
