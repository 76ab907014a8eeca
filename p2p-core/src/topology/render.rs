//! Printing a topology: the `nvidia-smi topo -m` style matrix, the pairs JSON that `p2pctl topo
//! --json` prints, and Graphviz DOT.

use super::{NodeKind, PathClass, Topology};
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

/// Builds the pairs report.
pub fn pairs(t: &Topology) -> Result<PairsReport> {
    let eps: Vec<(PciAddr, String)> = t
        .endpoints()
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
pub fn matrix(t: &Topology) -> Result<String> {
    let eps: Vec<PciAddr> = t.endpoints().map(|(a, _)| a).collect();
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

/// Graphviz DOT: the tree, host bridges grouped by socket, endpoints labelled with name, class
/// and address, ports with their ACS redirect bits.
pub fn dot(t: &Topology) -> String {
    let mut out = String::from(
        "graph topology {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    let mut sockets: Vec<u32> = t.host_bridges().map(|(_, hb)| hb.socket).collect();
    sockets.sort_unstable();
    sockets.dedup();
    for s in &sockets {
        let _ = writeln!(
            out,
            "  subgraph cluster_socket{s} {{\n    label=\"socket {s}\";"
        );
        for (id, hb) in t.host_bridges().filter(|(_, hb)| hb.socket == *s) {
            let _ = writeln!(
                out,
                "    n{} [label=\"{}\\nNUMA {} p2p={:?}\", shape=house];",
                id.0, hb.name, hb.numa, hb.p2p
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
    for s in &sockets {
        let _ = writeln!(
            out,
            "  socket{s} [shape=ellipse, label=\"CPU socket {s}\"];"
        );
        for (id, _) in t.host_bridges().filter(|(_, hb)| hb.socket == *s) {
            let _ = writeln!(out, "  socket{s} -- n{};", id.0);
        }
    }
    for id in t.node_ids() {
        let n = t.node(id);
        let addr = n.addr.map(|a| a.to_string()).unwrap_or_default();
        let acs = if n.acs.redirects() {
            format!("\\nACS {}", n.acs.names().join("|"))
        } else {
            String::new()
        };
        let (label, style) = match &n.kind {
            NodeKind::HostBridge(_) => continue,
            NodeKind::RootPort => (format!("root port\\n{addr}{acs}"), ""),
            NodeKind::SwitchUpstream => (format!("switch\\n{addr}{acs}"), ", style=rounded"),
            NodeKind::SwitchDownstream => (format!("down\\n{addr}{acs}"), ", style=rounded"),
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
        let r = pairs(&t).unwrap();
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
        let m = matrix(&t).unwrap();
        let d = dot(&t);
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
    fn nvlinks_show_as_nv_count_beside_the_pcie_route() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/topologies/nccl-2socket.xml");
        let t = crate::topology::nccl::from_path(&path).unwrap().topology;
        let m = matrix(&t).unwrap();
        let row = m.lines().find(|l| l.starts_with("GPU0 ")).unwrap();
        assert_eq!(row.split_whitespace().nth(2), Some("NV12"), "{m}");
        assert!(m.contains("NV#  = "), "{m}");
        let r = pairs(&t).unwrap();
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
