//! Importing an NCCL topology file: the XML that NCCL reads from `NCCL_TOPO_FILE` and writes to
//! `NCCL_TOPO_DUMP_FILE`.
//!
//! ```xml
//! <system version="1">
//!   <cpu numaid="0" arch="x86_64" vendor="GenuineIntel" familyid="6" modelid="85">
//!     <pci busid="0000:18:00.0" class="0x060400" link_speed="16.0 GT/s PCIe" link_width="16">
//!       <pci busid="0000:1b:00.0" class="0x030200" vendor="0x10de" device="0x20b0">
//!         <gpu dev="0" sm="80" rank="0" gdr="1"/>
//!       </pci>
//!       <pci busid="0000:1e:00.0" class="0x020700">
//!         <nic><net name="mlx5_0" dev="0" speed="200000" port="1" gdr="1"/></nic>
//!       </pci>
//!     </pci>
//!   </cpu>
//! </system>
//! ```
//!
//! Each `cpu` becomes a host bridge on NUMA node `numaid`. NCCL writes one `pci` element per PCIe
//! switch (named by its upstream port; it skips root ports and downstream ports), so a `pci`
//! whose class is a bridge becomes a [`NodeKind::Bridge`](super::NodeKind::Bridge), which counts as
//! one bridge on a path, as NCCL counts it. A `pci` holding `gpu` is a GPU, one holding `nic` a
//! NIC (named after its first `net`), any other takes its class from `class`. BARs are not in the
//! format. Elements the model does not use (`nvlink`, `c2c`, attributes such as `link_speed`)
//! are ignored; elements it cannot place are reported in [`NcclImport::notes`].

use super::allowlist;
use super::limits;
use super::{DeviceClass, HostBridgeP2p, NodeId, Topology, TopologyBuilder};
use crate::error::{Error, Result};
use crate::pci::PciAddr;
use roxmltree::{Document, Node, ParsingOptions};

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
    let mut r = Reader {
        doc: &doc,
        origin,
        builder: TopologyBuilder::new(),
        notes: Vec::new(),
    };
    let system = doc.root_element();
    if system.tag_name().name() != "system" {
        return Err(r.err(
            system,
            format!(
                "the root element is <{}>, not <system>",
                system.tag_name().name()
            ),
        ));
    }
    let mut cpu_p2p = false;
    for cpu in system.children().filter(Node::is_element) {
        match cpu.tag_name().name() {
            "cpu" => cpu_p2p |= r.cpu(cpu)?,
            other => r.note(cpu, format!("<{other}> below <system> is not modelled")),
        }
    }
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

struct Reader<'d, 'i> {
    doc: &'d Document<'i>,
    origin: &'d str,
    builder: TopologyBuilder,
    notes: Vec<String>,
}

impl<'d, 'i> Reader<'d, 'i> {
    fn line(&self, node: Node) -> u32 {
        self.doc.text_pos_at(node.range().start).row
    }

    fn err(&self, node: Node, message: String) -> Error {
        Error::TopologyFile {
            path: self.origin.to_owned(),
            message: format!("line {}: {message}", self.line(node)),
        }
    }

    fn note(&mut self, node: Node, message: String) {
        let line = self.line(node);
        self.notes
            .push(format!("{}:{line}: {message}", self.origin));
    }

    fn attr<'a>(&self, node: Node<'a, 'i>, name: &str) -> Result<&'a str> {
        node.attribute(name).ok_or_else(|| {
            self.err(
                node,
                format!("<{}> lacks the {name} attribute", node.tag_name().name()),
            )
        })
    }

    /// A number as NCCL writes it: decimal, or hex with `0x`.
    fn number(&self, node: Node, name: &str, text: &str) -> Result<u64> {
        let t = text.trim();
        let parsed = match t.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => t.parse(),
        };
        parsed.map_err(|_| self.err(node, format!("{name}={t:?} is not a number")))
    }

    /// An optional 32-bit number attribute (0 when absent).
    fn optional_u32(&self, node: Node, name: &str) -> Result<u32> {
        let Some(text) = node.attribute(name) else {
            return Ok(0);
        };
        let n = self.number(node, name, text)?;
        u32::try_from(n).map_err(|_| self.err(node, format!("{name}={n} is out of range")))
    }

    /// One `<cpu>`: a host bridge. Returns whether this CPU routes P2P between host bridges.
    fn cpu(&mut self, cpu: Node) -> Result<bool> {
        let numa = self.number(cpu, "numaid", self.attr(cpu, "numaid")?)?;
        let numa = u32::try_from(numa)
            .map_err(|_| self.err(cpu, format!("numaid={numa} is out of range")))?;
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
        let Some(first) = pcis.first() else {
            self.note(cpu, format!("<cpu numaid=\"{numa}\"> holds no PCI device"));
            return Ok(routes);
        };
        // NCCL does not name host bridges: one per CPU, numbered after its first device so that
        // (segment, bus) is unique.
        let first_addr = self.busid(*first)?;
        let name = format!("cpu{numa}");
        let hb = self
            .builder
            .host_bridge(&name, first_addr.segment, first_addr.bus, numa, numa, p2p)
            .map_err(|e| self.err(cpu, e.to_string()))?;
        for pci in pcis {
            self.pci(hb, pci, 1)?;
        }
        Ok(routes)
    }

    fn busid(&self, pci: Node) -> Result<PciAddr> {
        let text = self.attr(pci, "busid")?;
        text.parse()
            .map_err(|e: Error| self.err(pci, format!("busid: {e}")))
    }

    /// One `<pci>` at `depth` below its `<cpu>`, and (for a bridge) everything inside it.
    fn pci(&mut self, parent: NodeId, pci: Node, depth: u32) -> Result<()> {
        limits::check_depth(depth, self.origin, || Some(self.line(pci)))?;
        let addr = self.busid(pci)?;
        let class = self.number(pci, "class", self.attr(pci, "class")?)?;
        let class = u32::try_from(class)
            .ok()
            .filter(|c| *c <= 0xff_ffff)
            .ok_or_else(|| self.err(pci, format!("class={class:#x} is not a 24-bit class code")))?;
        if class >> 8 == 0x0604 {
            let id = self
                .builder
                .bridge(parent, addr)
                .map_err(|e| self.err(pci, e.to_string()))?;
            for child in pci.children().filter(Node::is_element) {
                match child.tag_name().name() {
                    "pci" => self.pci(id, child, depth + 1)?,
                    other => {
                        let other = other.to_owned();
                        self.note(
                            child,
                            format!("<{other}> inside bridge {addr} is not modelled"),
                        )
                    }
                }
            }
            return Ok(());
        }
        let mut kind = DeviceClass::from_pci_class(class);
        let mut name = None;
        for child in pci.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "gpu" => {
                    kind = DeviceClass::Gpu;
                    if let Some(dev) = child.attribute("dev") {
                        name = Some(format!("GPU{}", self.number(child, "dev", dev)?));
                    }
                }
                "nic" => {
                    kind = DeviceClass::Nic;
                    name = child
                        .children()
                        .find(|n| n.is_element() && n.tag_name().name() == "net")
                        .and_then(|n| n.attribute("name"))
                        .map(str::to_owned);
                }
                "pci" => {
                    return Err(self.err(
                        child,
                        format!(
                            "device {addr} is not a bridge (class {class:#08x}) but holds a <pci>"
                        ),
                    ))
                }
                other => {
                    let other = other.to_owned();
                    self.note(child, format!("<{other}> inside {addr} is not modelled"))
                }
            }
        }
        let added = match name {
            Some(n) => self
                .builder
                .named_endpoint(parent, addr, kind, Vec::new(), n),
            None => self.builder.endpoint(parent, addr, kind, Vec::new()),
        };
        added.map_err(|e| self.err(pci, e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
