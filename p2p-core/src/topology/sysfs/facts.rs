//! What sysfs says about one PCI function, read before the function is placed in the tree.

use super::attr::{self, sysfs_err};
use super::{AcsState, ConfigSpace, PortType};
use crate::error::Result;
use std::path::Path;

/// One function's files, read before it is placed.
pub(super) struct Facts {
    pub vendor: u16,
    pub device: u16,
    pub class_code: u32,
    pub numa_node: Option<u32>,
    pub dma_mask_bits: Option<u32>,
    pub iommu_group: Option<u32>,
    pub config: Option<ConfigSpace>,
}

impl Facts {
    pub fn read(dir: &Path) -> Result<Self> {
        let vendor = attr::hex(&dir.join("vendor"), 16)? as u16;
        let device = attr::hex(&dir.join("device"), 16)? as u16;
        let class_code = attr::hex(&dir.join("class"), 24)? as u32;
        let numa_node =
            attr::optional_int(&dir.join("numa_node"))?.and_then(|n| u32::try_from(n).ok());
        let mask_path = dir.join("dma_mask_bits");
        let dma_mask_bits = attr::optional_int(&mask_path)?
            .map(|b| {
                u32::try_from(b)
                    .ok()
                    .filter(|b| (1..=64).contains(b))
                    .ok_or_else(|| sysfs_err(&mask_path, format!("{b} is not a mask width")))
            })
            .transpose()?;
        let group_path = dir.join("iommu_group");
        let iommu_group = match std::fs::read_link(&group_path) {
            Ok(target) => Some(
                target
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| {
                        sysfs_err(
                            &group_path,
                            format!("links to {}, not a group number", target.display()),
                        )
                    })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(sysfs_err(&group_path, format!("cannot read link: {e}"))),
        };
        let config =
            attr::config_bytes(&dir.join("config"))?.map(|(b, len)| ConfigSpace::new(b, len));
        Ok(Self {
            vendor,
            device,
            class_code,
            numa_node,
            dma_mask_bits,
            iommu_group,
            config,
        })
    }

    pub fn is_bridge(&self) -> bool {
        matches!(self.class_code >> 8, 0x0604 | 0x0609)
            || self.config.as_ref().and_then(ConfigSpace::header_type) == Some(1)
    }

    pub fn port_type(&self) -> Option<PortType> {
        self.config.as_ref().and_then(ConfigSpace::port_type)
    }

    pub fn acs(&self) -> AcsState {
        self.config
            .as_ref()
            .map_or(AcsState::Unknown, ConfigSpace::acs)
    }
}
