//! The project's JSON topology format.
//!
//! A file is a tree, exactly as the hardware is: host bridges hold root ports, root ports hold
//! switches or endpoints, a switch (named by its upstream port) holds downstream ports.
//!
//! ```json
//! {
//!   "cpu_routes_p2p": false,
//!   "host_bridges": [{
//!     "name": "pci0000:00", "segment": 0, "bus": 0, "numa": 0, "socket": 0, "p2p": "none",
//!     "children": [{
//!       "kind": "root-port", "addr": "0000:00:01.0",
//!       "children": [{
//!         "kind": "switch", "addr": "0000:01:00.0",
//!         "children": [
//!           { "kind": "downstream-port", "addr": "0000:02:00.0", "acs": ["RR", "CR"],
//!             "children": [{ "kind": "endpoint", "addr": "0000:03:00.0", "class": "gpu",
//!                            "bars": [{ "index": 1, "cpu": "0x6000000000",
//!                                       "bus": "0x6000000000", "size": "0x800000000" }] }] }
//!         ]
//!       }]
//!     }]
//!   }]
//! }
//! ```
//!
//! A `"kind": "bridge"` node is a bridge known only as a bridge (a conventional PCI bridge, or a
//! switch as NCCL names it); it may hold anything but a downstream port.
//!
//! A `bridge` may lack `addr` (an NCCL file labels synthetic switches with ids other nodes use).
//! An optional top-level `"nvlinks": [{"gpu": "0000:1b:00.0", "peer": "0000:1c:00.0",
//! "count": 12}]` lists NVLinks; without `peer` the link goes into the NVSwitch fabric.
//!
//! Fields: `p2p` is `none`, `same-bridge` or `any` (the host bridge's P2P allow-list entry);
//! `acs` lists ACS Control bits by name (`SV TB RR CR UF EC DT`); `class` is `gpu`, `nic`, `nvme`,
//! `accelerator` or `other`; `name` and `pci_class` (the 24-bit class code, `"0x060000"`: what
//! tells a host bridge's own function from a device) on an endpoint are optional; addresses and sizes are `"0x…"`
//! strings or plain numbers. Unknown fields are errors, so a typo never goes unnoticed.

use super::limits::{self, MAX_FILE_BYTES};
use super::nvlink::NvLinkTarget;
use super::{
    AcsFlags, Bar, DeviceClass, HostBridgeAt, HostBridgeP2p, NodeId, NodeKind, Topology,
    TopologyBuilder,
};
use crate::error::{Error, Result};
use crate::pci::PciAddr;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTopology {
    #[serde(default)]
    cpu_routes_p2p: bool,
    host_bridges: Vec<FileHostBridge>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nvlinks: Vec<FileNvLink>,
}

/// `peer` absent: the link goes into the NVSwitch fabric.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNvLink {
    gpu: PciAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<PciAddr>,
    count: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHostBridge {
    name: String,
    #[serde(default)]
    segment: u32,
    #[serde(default)]
    bus: u8,
    #[serde(default)]
    numa: u32,
    #[serde(default)]
    socket: u32,
    #[serde(default)]
    p2p: HostBridgeP2p,
    #[serde(default)]
    children: Vec<FileNode>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum FileNode {
    RootPort {
        addr: PciAddr,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        acs: Vec<String>,
        #[serde(default)]
        children: Vec<FileNode>,
    },
    Switch {
        addr: PciAddr,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        acs: Vec<String>,
        #[serde(default)]
        children: Vec<FileNode>,
    },
    DownstreamPort {
        addr: PciAddr,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        acs: Vec<String>,
        #[serde(default)]
        children: Vec<FileNode>,
    },
    Bridge {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<PciAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        acs: Vec<String>,
        #[serde(default)]
        children: Vec<FileNode>,
    },
    Endpoint {
        addr: PciAddr,
        class: DeviceClass,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        acs: Vec<String>,
        #[serde(default)]
        bars: Vec<Bar>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pci_class: Option<ClassCode>,
    },
}

/// A 24-bit PCI class code, written `"0x030200"`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
struct ClassCode(#[serde(with = "crate::hex")] u64);

/// Reads a topology from JSON text; `origin` names the file in errors.
///
/// Text above [`MAX_FILE_BYTES`] is refused unread; nesting deeper than serde_json's recursion
/// limit (128 levels of JSON, about 60 of tree) is a parse error, and the builder refuses a tree
/// deeper than [`limits::MAX_DEPTH`]. Every error names `origin`.
pub fn from_json(text: &str, origin: &str) -> Result<Topology> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(limits::exceeded(
            origin,
            None,
            "file size in bytes",
            MAX_FILE_BYTES,
        ));
    }
    let file: FileTopology = serde_json::from_str(text).map_err(|e| Error::TopologyFile {
        path: origin.to_owned(),
        message: e.to_string(),
    })?;
    build(&file).map_err(|e| Error::TopologyFile {
        path: origin.to_owned(),
        message: e.to_string(),
    })
}

fn build(file: &FileTopology) -> Result<Topology> {
    let mut b = TopologyBuilder::new();
    b.cpu_routes_p2p(file.cpu_routes_p2p);
    for hb in &file.host_bridges {
        let id = b.host_bridge(
            &hb.name,
            HostBridgeAt {
                segment: hb.segment,
                bus: hb.bus,
                numa: hb.numa,
                socket: hb.socket,
                p2p: hb.p2p,
            },
        )?;
        for child in &hb.children {
            add(&mut b, id, child)?;
        }
    }
    for l in &file.nvlinks {
        let target = l.peer.map_or(NvLinkTarget::NvSwitch, NvLinkTarget::Gpu);
        b.nvlink(l.gpu, target, l.count);
    }
    b.build()
}

/// Reads a topology file (at most [`MAX_FILE_BYTES`]).
pub fn from_path(path: &std::path::Path) -> Result<Topology> {
    let origin = path.display().to_string();
    let text = limits::read_text_capped(path, MAX_FILE_BYTES, |message| Error::TopologyFile {
        path: origin.clone(),
        message,
    })?;
    from_json(&text, &origin)
}

fn parse_acs(addr: Option<PciAddr>, names: &[String]) -> Result<AcsFlags> {
    names.iter().try_fold(AcsFlags::empty(), |acc, n| {
        AcsFlags::from_name_ci(n).map(|f| acc | f).ok_or_else(|| {
            let at = addr.map_or_else(|| "a bridge without address".to_owned(), |a| a.to_string());
            Error::InvalidTopology(format!(
                "{at}: unknown ACS bit {n:?} (known: SV TB RR CR UF EC DT)"
            ))
        })
    })
}

fn add(b: &mut TopologyBuilder, parent: NodeId, node: &FileNode) -> Result<()> {
    let (id, acs, children, addr) = match node {
        FileNode::RootPort {
            addr,
            acs,
            children,
        } => (
            b.root_port(parent, *addr)?,
            acs,
            children.as_slice(),
            Some(*addr),
        ),
        FileNode::Switch {
            addr,
            acs,
            children,
        } => (
            b.switch(parent, *addr)?,
            acs,
            children.as_slice(),
            Some(*addr),
        ),
        FileNode::DownstreamPort {
            addr,
            acs,
            children,
        } => (
            b.downstream_port(parent, *addr)?,
            acs,
            children.as_slice(),
            Some(*addr),
        ),
        FileNode::Bridge {
            addr: Some(addr),
            acs,
            children,
        } => (
            b.bridge(parent, *addr)?,
            acs,
            children.as_slice(),
            Some(*addr),
        ),
        FileNode::Bridge {
            addr: None,
            acs,
            children,
        } => (
            b.unaddressed_bridge(parent)?,
            acs,
            children.as_slice(),
            None,
        ),
        FileNode::Endpoint {
            addr,
            class,
            name,
            acs,
            bars,
            pci_class,
        } => {
            let id = match name {
                Some(n) => b.named_endpoint(parent, *addr, *class, bars.clone(), n.clone())?,
                None => b.endpoint(parent, *addr, *class, bars.clone())?,
            };
            if let Some(ClassCode(code)) = *pci_class {
                let code = u32::try_from(code)
                    .ok()
                    .filter(|c| *c <= 0xff_ffff)
                    .ok_or_else(|| {
                        Error::InvalidTopology(format!(
                            "{addr}: pci_class {code:#x} is not 24 bits"
                        ))
                    })?;
                b.set_pci_class(id, code)?;
            }
            (id, acs, &[][..], Some(*addr))
        }
    };
    b.set_acs(id, parse_acs(addr, acs)?)?;
    for c in children {
        add(b, id, c)?;
    }
    Ok(())
}

/// Writes a topology in the file format (pretty-printed); [`from_json`] reads it back to an equal
/// topology.
pub fn to_json(t: &Topology) -> String {
    let file = FileTopology {
        cpu_routes_p2p: t.cpu_routes_p2p(),
        host_bridges: t
            .host_bridges()
            .map(|(id, hb)| FileHostBridge {
                name: hb.name.clone(),
                segment: hb.segment,
                bus: hb.bus,
                numa: hb.numa,
                socket: hb.socket,
                p2p: hb.p2p,
                children: t.children(id).iter().map(|&c| file_node(t, c)).collect(),
            })
            .collect(),
        nvlinks: t
            .nvlinks()
            .iter()
            .map(|(gpu, target, count)| FileNvLink {
                gpu,
                peer: match target {
                    NvLinkTarget::Gpu(p) => Some(p),
                    NvLinkTarget::NvSwitch => None,
                },
                count,
            })
            .collect(),
    };
    // Serialising plain data with string keys cannot fail.
    serde_json::to_string_pretty(&file).unwrap_or_default()
}

fn file_node(t: &Topology, id: NodeId) -> FileNode {
    let n = t.node(id);
    let acs = n.acs.names().into_iter().map(str::to_owned).collect();
    let children = || t.children(id).iter().map(|&c| file_node(t, c)).collect();
    if n.kind == NodeKind::Bridge {
        return FileNode::Bridge {
            addr: n.addr,
            acs,
            children: children(),
        };
    }
    // The builder gives every node but host bridges and some bridges an address.
    let addr = n
        .addr
        .unwrap_or_else(|| unreachable!("only host bridges and bridges lack an address"));
    match &n.kind {
        NodeKind::RootPort => FileNode::RootPort {
            addr,
            acs,
            children: children(),
        },
        NodeKind::SwitchUpstream => FileNode::Switch {
            addr,
            acs,
            children: children(),
        },
        NodeKind::SwitchDownstream => FileNode::DownstreamPort {
            addr,
            acs,
            children: children(),
        },
        NodeKind::Endpoint(e) => FileNode::Endpoint {
            addr,
            class: e.class,
            name: Some(e.name.clone()),
            acs,
            bars: e.bars.clone(),
            pci_class: e.pci_class.map(|c| ClassCode(u64::from(c))),
        },
        NodeKind::HostBridge(_) | NodeKind::Bridge => {
            unreachable!("host bridges are written by to_json, bridges above")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::presets;
    use super::*;

    /// The tree as a set of (node, parent's address, ACS): the file writes depth first, so node
    /// ids differ from the builder's order, but the machine must be the same.
    fn canonical(t: &Topology) -> Vec<String> {
        let mut v: Vec<String> = t
            .node_ids()
            .map(|i| {
                let n = t.node(i);
                let parent = n.parent.map(|p| match &t.node(p).kind {
                    NodeKind::HostBridge(h) => h.name.clone(),
                    _ => format!("{:?}", t.node(p).addr),
                });
                format!(
                    "{:?} {:?} {:?} {:?} {}",
                    n.kind, n.addr, parent, n.acs, n.depth
                )
            })
            .collect();
        v.sort();
        v
    }

    fn same(a: &Topology, b: &Topology) {
        assert_eq!(canonical(a), canonical(b));
        assert_eq!(a.cpu_routes_p2p(), b.cpu_routes_p2p());
    }

    #[test]
    fn round_trips_presets_and_random_machines() {
        for (name, _) in presets::PRESETS {
            let t = presets::preset(name).unwrap();
            same(&t, &from_json(&to_json(&t), name).unwrap());
        }
        for seed in 0..40 {
            let t = presets::random(seed).unwrap();
            same(&t, &from_json(&to_json(&t), "random").unwrap());
        }
    }

    #[test]
    fn errors_name_the_file_and_place() {
        let err = from_json("{\"host_bridges\": [ {\"name\": 3} ]}", "t.json").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t.json") && msg.contains("line 1"), "{msg}");
        let err = from_json(r#"{"host_bridges":[{"name":"h","children":[{"kind":"root-port","addr":"0000:00:01.0","acs":["XX"]}]}]}"#, "t.json").unwrap_err();
        assert!(err.to_string().contains("\"XX\""), "{err}");
        let err = from_json(r#"{"host_bridges":[{"name":"h","colour":1}]}"#, "t.json").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = from_json(r#"{"host_bridges":[{"name":"h","children":[{"kind":"endpoint","addr":"0000:00:20.0","class":"gpu"}]}]}"#, "t.json").unwrap_err();
        assert!(err.to_string().contains("above 31"), "{err}");
        let err = from_json(r#"{"host_bridges":[{"name":"h","children":[{"kind":"endpoint","addr":"0000:00:02.0","class":"other","pci_class":"0x1000000"}]}]}"#, "t.json").unwrap_err();
        assert!(
            err.to_string().contains("24 bits") && err.to_string().contains("t.json"),
            "{err}"
        );
        let err = from_json(r#"{"host_bridges":[{"name":"h","children":[{"kind":"downstream-port","addr":"0000:00:01.0"}]}]}"#, "t.json").unwrap_err();
        assert!(err.to_string().contains("cannot hang below"), "{err}");
    }

    #[test]
    fn example_files_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/topologies");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "json") {
                let t = from_path(&p).unwrap();
                assert!(t.endpoints().count() > 0, "{}", p.display());
                n += 1;
            }
        }
        assert!(n >= 3, "expected example topologies in {}", dir.display());
    }
}
