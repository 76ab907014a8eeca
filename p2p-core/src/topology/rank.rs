//! Choosing among many devices: which importer is closest to an exporter (NCCL's per-GPU NIC
//! choice), and which provider serves a whole set of clients best (Linux's
//! `pci_p2pdma_distance_many()` and `pci_p2pmem_find_many()`).
//!
//! Nearer means, in order: a route exists (an unsupported pair ranks last, with its reason), a
//! smaller path class (`PIX` before `PHB`), a switch route before one through the host bridge,
//! a smaller p2pdma distance, and the PCI address to break ties, so a ranking is reproducible.
//! Linux picks at random among equally near providers; a reproducible order is the better
//! default for a tool, and the caller can still pick among equals.

use super::{DeviceClass, PathClass, Route, Topology};
use crate::error::{Error, Result};
use crate::pci::PciAddr;
use std::cmp::Ordering;

/// One candidate of a ranking, with what placed it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    /// The candidate.
    pub device: PciAddr,
    /// Its class.
    pub class: DeviceClass,
    /// The path class to the reference device (for a provider: the worst over its clients).
    pub path: PathClass,
    /// The route p2pdma would take (for a provider: the worst over its clients).
    pub route: Route,
    /// The p2pdma distance (for a provider: the sum over its clients, as
    /// `pci_p2pdma_distance_many()` returns it).
    pub distance: u32,
}

impl Ranked {
    /// Whether p2pdma has a route at all.
    pub fn is_supported(&self) -> bool {
        !matches!(self.route, Route::Unsupported(_))
    }
}

/// A route's rank: switch, then host bridge, then none.
fn route_rank(r: &Route) -> u8 {
    match r {
        Route::BusAddr => 0,
        Route::ThroughHostBridge => 1,
        Route::Unsupported(_) => 2,
    }
}

fn nearer(a: &Ranked, b: &Ranked) -> Ordering {
    (
        !a.is_supported(),
        a.path,
        route_rank(&a.route),
        a.distance,
        a.device,
    )
        .cmp(&(
            !b.is_supported(),
            b.path,
            route_rank(&b.route),
            b.distance,
            b.device,
        ))
}

impl Topology {
    /// Every endpoint other than `device` (of `class`, when given), nearest first: the
    /// importers (or exporters) to pair with `device`. The route is the one for DMA between
    /// them, with `device` as the provider of the memory.
    pub fn rank_peers(&self, device: PciAddr, class: Option<DeviceClass>) -> Result<Vec<Ranked>> {
        self.endpoint(device)?;
        let mut out = Vec::new();
        for (addr, e) in self.endpoints() {
            if addr == device || class.is_some_and(|c| c != e.class) {
                continue;
            }
            let p = self.path(device, addr)?;
            out.push(Ranked {
                device: addr,
                class: e.class,
                path: p.class,
                route: p.route,
                distance: p.distance,
            });
        }
        out.sort_by(nearer);
        Ok(out)
    }

    /// The `providers`, best first, for memory that every one of `clients` must reach
    /// (`pci_p2pmem_find_many()`): each with its summed distance and its worst path and route
    /// over the clients. A provider that some client cannot reach ranks last, with that route.
    pub fn rank_providers(
        &self,
        providers: &[PciAddr],
        clients: &[PciAddr],
    ) -> Result<Vec<Ranked>> {
        if clients.is_empty() {
            return Err(Error::InvalidTopology(
                "ranking providers needs at least one client".into(),
            ));
        }
        let mut out = Vec::with_capacity(providers.len());
        for &provider in providers {
            let class = self.endpoint(provider)?.class;
            let mut worst: Option<Ranked> = None;
            let mut distance = 0u32;
            for &client in clients {
                let p = self.path(provider, client)?;
                distance = distance.saturating_add(p.distance);
                let this = Ranked {
                    device: provider,
                    class,
                    path: p.class,
                    route: p.route,
                    distance: p.distance,
                };
                if worst
                    .as_ref()
                    .is_none_or(|w| nearer(&this, w) == Ordering::Greater)
                {
                    worst = Some(this);
                }
            }
            if let Some(w) = worst {
                out.push(Ranked { distance, ..w });
            }
        }
        out.sort_by(nearer);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::presets;
    use super::*;

    use crate::topology::test_util::a;

    #[test]
    fn peers_rank_by_route_then_class_then_distance() {
        let t = presets::dgx().unwrap();
        let (gpu, _) = t
            .endpoints()
            .find(|(_, e)| e.class == DeviceClass::Gpu)
            .unwrap();
        let nics = t.rank_peers(gpu, Some(DeviceClass::Nic)).unwrap();
        assert_eq!(
            nics.len(),
            t.endpoints()
                .filter(|(_, e)| e.class == DeviceClass::Nic)
                .count()
        );
        assert!(nics.iter().all(|r| r.class == DeviceClass::Nic));
        for w in nics.windows(2) {
            assert_ne!(nearer(&w[0], &w[1]), Ordering::Greater, "{w:?}");
        }
        // The nearest NIC is the one the path classes say is nearest.
        let best = t
            .endpoints()
            .filter(|(_, e)| e.class == DeviceClass::Nic)
            .map(|(n, _)| t.path(gpu, n).unwrap().class)
            .min()
            .unwrap();
        assert_eq!(nics[0].path, best);
        assert!(t.rank_peers(a("7f:1f.7"), None).is_err());
    }

    #[test]
    fn a_provider_that_one_client_cannot_reach_ranks_last() {
        // The workstation's second NVMe drive sits below a host bridge that forwards no P2P.
        let t = presets::workstation().unwrap();
        let clients = [a("03:00.0"), a("05:00.0")];
        let providers = [a("10:00.0"), a("06:00.0"), a("04:00.0")];
        let ranked = t.rank_providers(&providers, &clients).unwrap();
        let order: Vec<PciAddr> = ranked.iter().map(|r| r.device).collect();
        assert_eq!(order.last(), Some(&a("10:00.0")));
        assert!(!ranked[2].is_supported() && ranked[0].is_supported());
        for w in ranked.windows(2) {
            assert_ne!(nearer(&w[0], &w[1]), Ordering::Greater);
        }
        // The distance is the sum over the clients, as pci_p2pdma_distance_many() gives it.
        for r in &ranked {
            let sum: u32 = clients
                .iter()
                .map(|&c| t.path(r.device, c).unwrap().distance)
                .sum();
            assert_eq!(r.distance, sum);
        }
        assert!(t.rank_providers(&providers, &[]).is_err());
    }
}
