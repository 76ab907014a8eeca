//! NVLink connections between GPUs, as NCCL topology files record them (`<nvlink target=…
//! count=… tclass=…>` inside a `<gpu>`). They sit beside the PCIe tree, not in it: p2pdma routes
//! over PCIe whatever NVLink exists, so paths and routes never look here. The matrix shows them
//! as `nvidia-smi topo -m` does, `NV#` with the number of links.

use crate::pci::PciAddr;
use std::collections::BTreeMap;

/// What the far end of a GPU's NVLinks is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NvLinkTarget {
    /// Another GPU, directly.
    Gpu(PciAddr),
    /// The NVSwitch fabric: every GPU on it reaches every other.
    NvSwitch,
}

/// The NVLinks of a machine: direct GPU pairs and GPUs attached to an NVSwitch fabric.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NvLinks {
    /// Links per unordered GPU pair (smaller address first).
    direct: BTreeMap<(PciAddr, PciAddr), u32>,
    /// Links from a GPU into the NVSwitch fabric.
    fabric: BTreeMap<PciAddr, u32>,
}

impl NvLinks {
    /// Records `count` links from `gpu` to `target`. NCCL lists a link from both of its ends,
    /// so the same pair seen twice keeps the larger count instead of adding them up.
    pub fn add(&mut self, gpu: PciAddr, target: NvLinkTarget, count: u32) {
        let slot = match target {
            NvLinkTarget::Gpu(other) => self
                .direct
                .entry((gpu.min(other), gpu.max(other)))
                .or_default(),
            NvLinkTarget::NvSwitch => self.fabric.entry(gpu).or_default(),
        };
        *slot = (*slot).max(count);
    }

    /// How many NVLinks join two GPUs: the direct links, or through the NVSwitch fabric as many
    /// as the less connected of the two has; 0 when none.
    pub fn between(&self, a: PciAddr, b: PciAddr) -> u32 {
        if a == b {
            return 0;
        }
        let direct = self.direct.get(&(a.min(b), a.max(b))).copied().unwrap_or(0);
        let fabric = match (self.fabric.get(&a), self.fabric.get(&b)) {
            (Some(&x), Some(&y)) => x.min(y),
            _ => 0,
        };
        direct.max(fabric)
    }

    /// Whether no link is recorded.
    pub fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.fabric.is_empty()
    }

    /// Every recorded link: (GPU, target, count), direct pairs first.
    pub fn iter(&self) -> impl Iterator<Item = (PciAddr, NvLinkTarget, u32)> + '_ {
        let direct = self
            .direct
            .iter()
            .map(|(&(a, b), &n)| (a, NvLinkTarget::Gpu(b), n));
        let fabric = self
            .fabric
            .iter()
            .map(|(&g, &n)| (g, NvLinkTarget::NvSwitch, n));
        direct.chain(fabric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::topology::test_util::a;

    #[test]
    fn direct_links_are_symmetric_and_fabric_links_join_every_pair() {
        let mut n = NvLinks::default();
        n.add(a("1b:00.0"), NvLinkTarget::Gpu(a("1c:00.0")), 12);
        n.add(a("1c:00.0"), NvLinkTarget::Gpu(a("1b:00.0")), 12);
        assert_eq!(n.between(a("1b:00.0"), a("1c:00.0")), 12);
        assert_eq!(n.between(a("1c:00.0"), a("1b:00.0")), 12);
        assert_eq!(n.between(a("1b:00.0"), a("1b:00.0")), 0);
        n.add(a("3d:00.0"), NvLinkTarget::NvSwitch, 18);
        n.add(a("3e:00.0"), NvLinkTarget::NvSwitch, 12);
        assert_eq!(n.between(a("3d:00.0"), a("3e:00.0")), 12);
        assert_eq!(n.between(a("3d:00.0"), a("1b:00.0")), 0);
        assert_eq!(n.iter().count(), 3);
    }
}
