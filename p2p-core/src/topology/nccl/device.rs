//! The `<pci>` elements of an NCCL file: switches, GPUs, NICs, other devices, and the NVLinks of
//! GPUs, placed under their `<cpu>`'s host bridge.

use super::{limits, Reader};
use crate::error::Result;
use crate::pci::PciAddr;
use crate::topology::nvlink::NvLinkTarget;
use crate::topology::{DeviceClass, NodeId};
use roxmltree::Node;
use std::collections::HashSet;

/// NVSwitch class as NCCL writes it in `tclass` (`PCI_NVSWITCH_CLASS`).
const NVSWITCH_CLASS: u32 = 0x068000;

/// The child elements of a node named `name`.
fn subs<'a, 'i>(node: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// Whether a `<pci>` is a switch in NCCL's reading (`kvDictPciClass`): not a GPU or NIC, and
/// either of a bridge class or holding other `<pci>` elements while its class is not one NCCL
/// takes for a device (GPU 0x03…, NIC 0x02…, NVSwitch or CPU 0x0680…), as NCCL falls back to
/// a PCI switch for any other class.
fn is_switch(pci: Node) -> bool {
    let device = subs(pci, "gpu").next().is_some() || subs(pci, "nic").next().is_some();
    let class = pci
        .attribute("class")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let bridge_class = class.starts_with("0x0604");
    let device_class = ["0x02", "0x03", "0x0680"]
        .iter()
        .any(|p| class.starts_with(p));
    !device && (bridge_class || (!device_class && subs(pci, "pci").next().is_some()))
}

/// The busids of every device (not switch) in the file.
pub(super) fn device_busids(system: Node) -> HashSet<PciAddr> {
    system
        .descendants()
        .filter(|n| n.tag_name().name() == "pci" && !is_switch(*n))
        .filter_map(|n| n.attribute("busid")?.parse().ok())
        .collect()
}

impl Reader<'_> {
    /// One `<pci>` at `depth` below its `<cpu>`, and (for a switch) everything inside it.
    pub(super) fn pci(&mut self, parent: NodeId, pci: Node, depth: u32) -> Result<()> {
        limits::check_depth(depth, self.origin, || Some(self.line(pci)))?;
        let busid = self.attr(pci, "busid")?;
        if is_switch(pci) {
            return self.switch(parent, pci, busid, depth);
        }
        let addr: PciAddr = busid
            .parse()
            .map_err(|e: crate::Error| self.err(pci, format!("busid: {e}")))?;
        let class = self.class(pci)?;
        let mut kind = DeviceClass::from_pci_class(class);
        let mut name = None;
        for child in pci.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "gpu" => {
                    kind = DeviceClass::Gpu;
                    let dev = child.attribute("dev").unwrap_or("");
                    if !dev.trim().is_empty() {
                        name = Some(format!("GPU{}", self.optional_u32(child, "dev")?));
                    }
                    self.gpu_links(addr, child);
                }
                "nic" => {
                    kind = DeviceClass::Nic;
                    name = subs(child, "net")
                        .find_map(|n| n.attribute("name"))
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned);
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
        let id = added.map_err(|e| self.err(pci, e.to_string()))?;
        if class != 0 {
            let set = self.builder.set_pci_class(id, class).map(|_| ());
            set.map_err(|e| self.err(pci, e.to_string()))?;
        }
        Ok(())
    }

    /// The 24-bit class code; an empty `class` (NCCL falls back to its default) reads as 0.
    fn class(&self, pci: Node) -> Result<u32> {
        let text = self.attr(pci, "class")?;
        if text.trim().is_empty() {
            return Ok(0);
        }
        let line = self.line(pci);
        let class = self.number(line, "class", text)?;
        u32::try_from(class)
            .ok()
            .filter(|c| *c <= 0xff_ffff)
            .ok_or_else(|| {
                self.err_at(line, format!("class={class:#x} is not a 24-bit class code"))
            })
    }

    /// A switch: addressed by its busid when that is a free PCI address, else kept as a label.
    fn switch(&mut self, parent: NodeId, pci: Node, busid: &str, depth: u32) -> Result<()> {
        let addr = busid
            .parse::<PciAddr>()
            .ok()
            .filter(|a| !self.devices.contains(a) && !self.builder.contains(*a));
        let id = match addr {
            Some(a) => self.builder.bridge(parent, a),
            None => {
                self.note(
                    pci,
                    format!(
                        "switch busid {busid:?} is not a PCI address of its own (a label, as \
                         cloud VMs write them): the switch is kept without one"
                    ),
                );
                self.builder.unaddressed_bridge(parent)
            }
        }
        .map_err(|e| self.err(pci, e.to_string()))?;
        for child in pci.children().filter(Node::is_element) {
            match child.tag_name().name() {
                "pci" => self.pci(id, child, depth + 1)?,
                other => {
                    let other = other.to_owned();
                    self.note(
                        child,
                        format!("<{other}> inside switch {busid} is not modelled"),
                    )
                }
            }
        }
        Ok(())
    }

    /// Keeps a GPU's `<nvlink>`s until every GPU is placed; says what else it holds (`<c2c>`,
    /// the CPU-GPU link of Grace Hopper) is not modelled.
    fn gpu_links(&mut self, gpu: PciAddr, node: Node) {
        for link in node.children().filter(Node::is_element) {
            let line = self.line(link);
            if link.tag_name().name() != "nvlink" {
                let what = link.tag_name().name().to_owned();
                self.note_at(line, format!("<{what}> of GPU {gpu} is not modelled"));
                continue;
            }
            let get = |name| link.attribute(name).unwrap_or("").trim().to_owned();
            self.nvlinks
                .push((gpu, line, get("target"), get("tclass"), get("count")));
        }
    }

    /// Records the NVLinks whose ends are both in the topology; says why about the others.
    pub(super) fn nvlinks(&mut self) -> Result<()> {
        for (gpu, line, target, tclass, count) in std::mem::take(&mut self.nvlinks) {
            let count = if count.is_empty() {
                0
            } else {
                self.number(line, "count", &count)?
            };
            let count = u32::try_from(count)
                .map_err(|_| self.err_at(line, format!("count={count} is out of range")))?;
            if count == 0 {
                self.note_at(line, "an <nvlink> without links: skipped".into());
                continue;
            }
            let class = if tclass.is_empty() {
                None
            } else {
                Some(self.number(line, "tclass", &tclass)?)
            };
            let peer = target.parse::<PciAddr>().ok();
            let to = match (class, peer) {
                (Some(c), _) if c == u64::from(NVSWITCH_CLASS) => Some(NvLinkTarget::NvSwitch),
                (Some(c), Some(p)) if c >> 16 == 0x03 => Some(NvLinkTarget::Gpu(p)),
                (None, Some(p)) => Some(NvLinkTarget::Gpu(p)),
                _ => None,
            };
            match to {
                Some(NvLinkTarget::Gpu(p)) if !self.devices.contains(&p) => self.note_at(
                    line,
                    format!("NVLink from {gpu} to {target}, which the file does not hold: skipped"),
                ),
                Some(t) => {
                    self.builder.nvlink(gpu, t, count);
                }
                None => self.note_at(
                    line,
                    format!(
                        "NVLink from {gpu} to {target:?} (tclass {tclass:?}) is neither to a GPU \
                         nor to an NVSwitch: not modelled"
                    ),
                ),
            }
        }
        Ok(())
    }
}
