//! What a bridge is in the tree: its PCIe port type when `config` says, else what its place
//! in the tree makes it. Without the PCIe capability (an unprivileged reader gets 64 bytes of
//! `config`) a switch is inferred from its shape, as `nvidia-smi` does: a bridge whose secondary
//! bus holds only bridges is a switch's upstream port, and the bridges below an upstream port
//! are its downstream ports; a bridge on a root bus is a root port. The inferences are said in a
//! note; ACS stays unknown.

use super::attr;
use super::facts::Facts;
use super::{pci_children, PortType};
use crate::error::Result;
use crate::pci::PciAddr;
use std::path::Path;

/// What a node of the tree being built is, to decide what may hang below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    HostBridge,
    RootPort,
    SwitchUpstream,
    SwitchDownstream,
    Bridge,
}

impl Place {
    pub fn name(self) -> &'static str {
        match self {
            Place::HostBridge => "host bridge",
            Place::RootPort => "root port",
            Place::SwitchUpstream => "switch upstream port",
            Place::SwitchDownstream => "switch downstream port",
            Place::Bridge => "bridge",
        }
    }

    /// Whether a bridge of kind `self` may hang below `parent`.
    pub fn fits_below(self, parent: Place) -> bool {
        use Place::*;
        match self {
            RootPort => parent == HostBridge,
            SwitchUpstream => matches!(parent, RootPort | SwitchDownstream | Bridge),
            SwitchDownstream => parent == SwitchUpstream,
            Bridge => matches!(parent, HostBridge | RootPort | SwitchDownstream | Bridge),
            HostBridge => false,
        }
    }
}

/// How a bridge's place was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum How {
    /// From its PCIe port type, or as a plain bridge when it has none to read.
    Read,
    /// From the shape of the tree: its port type could not be read.
    Inferred,
    /// Its port type does not fit where it sits: the note says what it was taken as.
    Moved(String),
}

/// The place of bridge `addr` (facts `f`, directory `dir`) below a `parent`, and how it was
/// decided.
pub(super) fn bridge_place(
    addr: PciAddr,
    f: &Facts,
    parent: Place,
    dir: &Path,
) -> Result<(Place, How)> {
    let known = f.config.as_ref().is_some_and(|c| !c.is_short());
    let wanted = match f.port_type() {
        Some(PortType::RootPort) => Place::RootPort,
        Some(PortType::SwitchUpstream) => Place::SwitchUpstream,
        Some(PortType::SwitchDownstream) => Place::SwitchDownstream,
        _ if !known => return inferred(parent, dir),
        _ => Place::Bridge,
    };
    if wanted.fits_below(parent) {
        return Ok((wanted, How::Read));
    }
    let fallback = if Place::Bridge.fits_below(parent) {
        Place::Bridge
    } else {
        Place::SwitchDownstream
    };
    let note = format!(
        "{addr}: a {} cannot sit below a {}: taken as a {}",
        wanted.name(),
        parent.name(),
        fallback.name()
    );
    Ok((fallback, How::Moved(note)))
}

/// A bridge whose port type cannot be read, placed by the shape of the tree: on a root bus a
/// root port, below an upstream port a downstream port, holding only bridges an upstream port.
fn inferred(parent: Place, dir: &Path) -> Result<(Place, How)> {
    let place = match parent {
        Place::HostBridge => Place::RootPort,
        Place::SwitchUpstream => Place::SwitchDownstream,
        _ if only_bridges_below(dir)? => Place::SwitchUpstream,
        _ => return Ok((Place::Bridge, How::Read)),
    };
    Ok((place, How::Inferred))
}

/// Whether a bridge's directory holds functions, all of them bridges (by class).
fn only_bridges_below(dir: &Path) -> Result<bool> {
    let children = pci_children(dir)?;
    for (_, path) in &children {
        if attr::hex(&path.join("class"), 24)? >> 8 != 0x0604 {
            return Ok(false);
        }
    }
    Ok(!children.is_empty())
}
