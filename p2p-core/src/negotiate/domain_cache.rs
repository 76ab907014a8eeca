//! The importers' domains as a registry shard holds them. Every mapping keeps its importer's
//! domain until it is torn down; had it kept a clone of the platform's `Arc`, every thread
//! mapping through that domain (one NIC serving several GPUs, one thread each) would write the
//! domain's one reference count twice per mapping, a cache line bouncing between their cores.
//! Instead each shard wraps the domain once per device and topology generation
//! ([`DomainRef`]), and mappings clone the shard's wrapper: threads mapping different exporters
//! (different shards) write different counts.
//!
//! A mapping keeps the domain it was made in even after the topology changes (the platform may
//! then answer with another): its wrapper holds the platform's `Arc`.

use crate::own_lines::OwnLines;
use crate::pci::PciAddr;
use crate::traits::IommuDomain;
use std::sync::Arc;

/// A domain as a shard hands it to mappings: this shard's wrapper of the platform's `Arc`, on
/// lines of its own (see the `own_lines` module): the wrapper's count is written on every map
/// and drop, and a wrapper alone is a 32-byte block that would share a line with its
/// neighbours on the heap.
pub(crate) type DomainRef = Arc<OwnLines<Arc<dyn IommuDomain>>>;

/// One shard's domains, for the topology generation they were looked up in.
#[derive(Debug, Default)]
pub(crate) struct DomainCache {
    generation: u64,
    /// (device, its domain): as many as the devices this shard's exporters are mapped to.
    domains: Vec<(PciAddr, DomainRef)>,
}

impl DomainCache {
    /// `device`'s domain if it was looked up in topology `generation`.
    pub fn get(&self, device: PciAddr, generation: u64) -> Option<DomainRef> {
        if self.generation != generation {
            return None;
        }
        self.domains
            .iter()
            .find(|(d, _)| *d == device)
            .map(|(_, dom)| dom.clone())
    }

    /// Remembers `device`'s domain, looked up in topology `generation`; the domains of another
    /// generation are forgotten (mappings made in them keep theirs). Returns the one to use: a
    /// thread that looked it up first wins, so that the shard holds one wrapper per device.
    pub fn insert(
        &mut self,
        device: PciAddr,
        generation: u64,
        domain: Arc<dyn IommuDomain>,
    ) -> DomainRef {
        if self.generation != generation {
            self.domains.clear();
            self.generation = generation;
        }
        if let Some(known) = self.get(device, generation) {
            return known;
        }
        let wrapped: DomainRef = Arc::new(OwnLines(domain));
        self.domains.push((device, wrapped.clone()));
        wrapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDomain;

    fn dev(n: u8) -> PciAddr {
        PciAddr::new(0, n, 0, 0).unwrap()
    }

    #[test]
    fn one_wrapper_per_device_and_generation() {
        let mut c = DomainCache::default();
        let d: Arc<dyn IommuDomain> =
            Arc::new(TestDomain::new(crate::traits::DomainKind::Translated));
        assert!(c.get(dev(1), 1).is_none());
        let a = c.insert(dev(1), 1, d.clone());
        let b = c.insert(dev(1), 1, d.clone());
        assert!(
            Arc::ptr_eq(&a, &b),
            "a second lookup keeps the first wrapper"
        );
        assert!(Arc::ptr_eq(&c.get(dev(1), 1).unwrap(), &a));
        assert!(c.get(dev(2), 1).is_none());
        // A new topology forgets the old wrappers; mappings holding one keep it.
        assert!(c.get(dev(1), 2).is_none());
        let n = c.insert(dev(1), 2, d);
        assert!(!Arc::ptr_eq(&n, &a));
        assert!(c.get(dev(1), 1).is_none());
        assert_eq!(
            Arc::strong_count(&a),
            2,
            "the old wrapper lives in its holders only"
        );
    }
}
