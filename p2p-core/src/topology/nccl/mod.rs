//! Importing an NCCL topology file: the XML that NCCL reads from `NCCL_TOPO_FILE` and writes to
//! `NCCL_TOPO_DUMP_FILE`.
//!
//! ```xml
//! <system version="1">
//!   <cpu numaid="0" arch="x86_64" vendor="GenuineIntel" familyid="6" modelid="85">
//!     <pci busid="0000:18:00.0" class="0x060400" link_speed="16.0 GT/s PCIe" link_width="16">
//!       <pci busid="0000:1b:00.0" class="0x030200" vendor="0x10de" device="0x20b0">
//!         <gpu dev="0" sm="80" rank="0" gdr="1">
//!           <nvlink target="0000:1c:00.0" count="12" tclass="0x030200"/>
//!         </gpu>
//!       </pci>
//!       <pci busid="0000:1e:00.0" class="0x020700">
//!         <nic><net name="mlx5_0" dev="0" speed="200000" port="1" gdr="1"/></nic>
//!       </pci>
//!     </pci>
//!   </cpu>
//! </system>
//! ```
//!
//! NCCL's model, followed here (`ncclTopoAddCpu` / `ncclTopoAddPci` in NCCL's `topo.cc`):
//!
//! - Each `<cpu>` is its own host: a host bridge on NUMA node `numaid`. Devices under one
//!   `<cpu>` that share no switch are PHB apart, devices under two `<cpu>`s SYS.
//! - A `<pci>` holding `<gpu>` is a GPU, one holding `<nic>` a NIC (named after its first
//!   `<net>`). Any other `<pci>` whose class is a bridge, or which holds `<pci>` elements, is a
//!   PCIe switch (NCCL writes one per switch, named by its upstream port), a
//!   [`NodeKind::Bridge`](super::NodeKind::Bridge) that counts as one bridge on a path. The rest
//!   are endpoints of their `class` (an empty class is `other`).
//! - A device's busid identifies it. A switch's busid is a label: hypervisors of cloud VMs give
//!   synthetic switches ids such as `ffff:ff:01.0` that may repeat across hosts or name a device
//!   too; such a switch is kept without an address (said in a note).
//! - `<nvlink>` inside `<gpu>`: links to another GPU (`tclass` 0x03…) or into the NVSwitch fabric
//!   (`tclass` 0x068000) are recorded in [`Topology::nvlinks`]; routes stay PCIe.
//!
//! BARs are not in the format. Attributes the model does not use (`link_speed`, `link_width`,
//! often empty) are ignored; elements it cannot place are reported in [`NcclImport::notes`].
//! Bad input gives [`Error::TopologyFile`] or [`Error::InputLimit`] with the file and line.

mod device;

use super::allowlist;
use super::limits;
use super::{HostBridgeAt, HostBridgeP2p, Topology, TopologyBuilder};
use crate::error::{Error, Result};
use crate::pci::PciAddr;
use roxmltree::{Document, Node, ParsingOptions};
use std::collections::HashSet;

/// A topology read from an NCCL file, with what could not be placed.
#[derive(Debug, Clone)]
pub struct NcclImport {
    /// The tree.
    pub topology: Topology,
    /// Elements skipped and assumptions made, one sentence each.
    pub notes: Vec<String>,
}

/// Parses an NCCL topology file's text; `origin` names it in errors.
///
/// Text above [`MAX_FILE_BYTES`](limits::MAX_FILE_BYTES) or with more than
/// [`MAX_XML_NODES`](limits::MAX_XML_NODES) nodes is refused, and so is `<pci>` nesting deeper
/// than [`MAX_DEPTH`](limits::MAX_DEPTH), at the line where it goes too deep.
pub fn from_xml(text: &str, origin: &str) -> Result<NcclImport> {
    if text.len() as u64 > limits::MAX_FILE_BYTES {
        return Err(limits::exceeded(
            origin,
            None,
            "file size in bytes",
            limits::MAX_FILE_BYTES,
        ));
    }
    let options = ParsingOptions {
        nodes_limit: limits::MAX_XML_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text, options).map_err(|e| Error::TopologyFile {
        path: origin.to_owned(),
        message: format!("line {}, column {}: {e}", e.pos().row, e.pos().col),
    })?;
    let mut r = Reader::new(text, origin);
    let system = doc.root_element();
    if system.tag_name().name() != "system" {
        let root = system.tag_name().name();
        return Err(r.err(
            system,
            format!("the root element is <{root}>, not <system>"),
        ));
    }
    r.devices = device::device_busids(system);
    let mut cpu_p2p = false;
    for cpu in system.children().filter(Node::is_element) {
        match cpu.tag_name().name() {
            "cpu" => cpu_p2p |= r.cpu(cpu)?,
            other => r.note(cpu, format!("<{other}> below <system> is not modelled")),
        }
    }
    r.nvlinks()?;
    r.builder.cpu_routes_p2p(cpu_p2p);
    let topology = r.builder.build().map_err(|e| Error::TopologyFile {
        path: origin.to_owned(),
        message: e.to_string(),
    })?;
    Ok(NcclImport {
        topology,
        notes: r.notes,
    })
}

/// Reads an NCCL topology file (at most [`MAX_FILE_BYTES`](limits::MAX_FILE_BYTES)).
pub fn from_path(path: &std::path::Path) -> Result<NcclImport> {
    let origin = path.display().to_string();
    let text = limits::read_text_capped(path, limits::MAX_FILE_BYTES, |message| {
        Error::TopologyFile {
            path: origin.clone(),
            message,
        }
    })?;
    from_xml(&text, &origin)
}

/// An `<nvlink>` waiting for every GPU to be placed: (its GPU, the element's line, target
/// busid, tclass, count).
type PendingNvLink = (PciAddr, u32, String, String, String);

struct Reader<'o> {
    origin: &'o str,
    /// Byte offsets where lines start, so a line number costs a binary search, not a scan.
    line_starts: Vec<usize>,
    builder: TopologyBuilder,
    notes: Vec<String>,
    /// Busids of devices (not switches) anywhere in the file: a switch may not take them.
    devices: HashSet<PciAddr>,
    /// (segment, bus) given to host bridges so far.
    roots: HashSet<(u32, u8)>,
    host_names: HashSet<String>,
    nvlinks: Vec<PendingNvLink>,
}

impl<'o> Reader<'o> {
    fn new(text: &str, origin: &'o str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            origin,
            line_starts,
            builder: TopologyBuilder::new(),
            notes: Vec::new(),
            devices: HashSet::new(),
            roots: HashSet::new(),
            host_names: HashSet::new(),
            nvlinks: Vec::new(),
        }
    }

    fn line(&self, node: Node) -> u32 {
        let at = node.range().start;
        let line = self.line_starts.partition_point(|&s| s <= at);
        u32::try_from(line).unwrap_or(u32::MAX)
    }

    fn err(&self, node: Node, message: String) -> Error {
        self.err_at(self.line(node), message)
    }

    fn err_at(&self, line: u32, message: String) -> Error {
        Error::TopologyFile {
            path: self.origin.to_owned(),
            message: format!("line {line}: {message}"),
        }
    }

    fn note(&mut self, node: Node, message: String) {
        let line = self.line(node);
        self.note_at(line, message);
    }

    fn note_at(&mut self, line: u32, message: String) {
        self.notes
            .push(format!("{}:{line}: {message}", self.origin));
    }

    fn attr<'a>(&self, node: Node<'a, '_>, name: &str) -> Result<&'a str> {
        node.attribute(name).ok_or_else(|| {
            self.err(
                node,
                format!("<{}> lacks the {name} attribute", node.tag_name().name()),
            )
        })
    }

    /// A number as NCCL writes it: decimal, or hex with `0x`.
    fn number(&self, line: u32, name: &str, text: &str) -> Result<u64> {
        let t = text.trim();
        let parsed = match t.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => t.parse(),
        };
        parsed.map_err(|_| self.err_at(line, format!("{name}={t:?} is not a number")))
    }

    /// A 32-bit number attribute; 0 when absent or empty (NCCL reads both as 0).
    fn optional_u32(&self, node: Node, name: &str) -> Result<u32> {
        let text = node.attribute(name).unwrap_or("");
        if text.trim().is_empty() {
            return Ok(0);
        }
        let line = self.line(node);
        let n = self.number(line, name, text)?;
        u32::try_from(n).map_err(|_| self.err_at(line, format!("{name}={n} is out of range")))
    }

    /// One `<cpu>`: a host bridge. Returns whether this CPU routes P2P between host bridges.
    fn cpu(&mut self, cpu: Node) -> Result<bool> {
        self.attr(cpu, "numaid")?;
        let numa = self.optional_u32(cpu, "numaid")?;
        let vendor = cpu.attribute("vendor").unwrap_or("");
        let family = self.optional_u32(cpu, "familyid")?;
        let model = self.optional_u32(cpu, "modelid")?;
        let routes = allowlist::cpu_routes_p2p(vendor == "AuthenticAMD", family);
        let p2p = if vendor == "GenuineIntel" {
            allowlist::intel_model_host_bridge_p2p(family, model)
        } else {
            HostBridgeP2p::None
        };
        let pcis: Vec<Node> = cpu
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "pci")
            .collect();
        for other in cpu
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() != "pci")
        {
            let what = other.tag_name().name().to_owned();
            self.note(
                other,
                format!("<{what}> outside any <pci> has no PCI address: skipped"),
            );
        }
        if pcis.is_empty() {
            self.note(cpu, format!("<cpu numaid=\"{numa}\"> holds no PCI device"));
            return Ok(routes);
        }
        let name = self.host_name(numa);
        let (segment, bus) = self.root_bus(cpu);
        let hb = self
            .builder
            .host_bridge(
                &name,
                HostBridgeAt {
                    segment,
                    bus,
                    numa,
                    socket: numa,
                    ..HostBridgeAt::new(p2p)
                },
            )
            .map_err(|e| self.err(cpu, e.to_string()))?;
        for pci in pcis {
            self.pci(hb, pci, 1)?;
        }
        Ok(routes)
    }

    /// `cpu<numaid>`, made unique when several hosts of one file share a NUMA id.
    fn host_name(&mut self, numa: u32) -> String {
        let mut name = format!("cpu{numa}");
        let mut n = 1;
        while self.host_names.contains(&name) {
            name = format!("cpu{numa}.{n}");
            n += 1;
        }
        self.host_names.insert(name.clone());
        name
    }

    /// NCCL does not number host bridges. The model wants a (segment, root bus) per host
    /// bridge: the first one of a device below this `<cpu>` that no other host bridge has, else
    /// the first free one.
    fn root_bus(&mut self, cpu: Node) -> (u32, u8) {
        let below = cpu
            .descendants()
            .filter(|n| n.tag_name().name() == "pci")
            .filter_map(|n| n.attribute("busid")?.parse::<PciAddr>().ok())
            .map(|a| (a.segment, a.bus));
        let free = below
            .chain((0..=u32::MAX).flat_map(|s| (0..=u8::MAX).map(move |b| (s, b))))
            .find(|r| !self.roots.contains(r))
            .unwrap_or((u32::MAX, u8::MAX));
        self.roots.insert(free);
        free
    }
}

#[cfg(test)]
mod tests;
