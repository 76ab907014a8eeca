//! The negotiator: plans (cached), establishes mappings, and runs the invalidation protocol.

use super::registry::{Entry, Registry, Resources, State};
use super::{
    decide, establish, Facts, Mapping, MappingEvent, Plan, Policy, Sequence, TeardownCause,
};
use crate::access::Access;
use crate::addr::{AddrRange, Offset};
use crate::error::{Error, Result};
use crate::topology::Topology;
use crate::traits::{
    DmaImporter, ExporterId, ImporterFlags, Invalidation, InvalidationKind, MemoryExporter,
    Platform,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
struct PlanCache {
    generation: u64,
    /// A plan is a pure function of the facts and the policy (and the topology, whose
    /// generation guards the whole map), so they are the key.
    plans: HashMap<(Facts, Policy), Plan>,
    hits: u64,
    misses: u64,
}

/// A mapping being invalidated, with the odd sequence value it got.
struct Target {
    id: u64,
    importer: Arc<dyn DmaImporter>,
    seq: Arc<Sequence>,
    odd: u64,
}

/// Cache counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Plans served from the cache.
    pub hits: u64,
    /// Plans computed.
    pub misses: u64,
    /// Plans held now.
    pub entries: usize,
}

/// What an invalidation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InvalidationReport {
    /// Mappings torn down.
    pub mappings: usize,
    /// IOVA bytes unmapped.
    pub bytes_unmapped: u64,
}

/// Plans, establishes and invalidates mappings on one [`Platform`].
///
/// Plans are cached per (facts, policy), where the facts are everything the decision reads of the
/// exporter (including where its memory is now), the importer and its domain; the cache is
/// dropped when the platform's topology generation changes.
#[derive(Debug)]
pub struct Negotiator {
    platform: Arc<dyn Platform>,
    cache: Mutex<PlanCache>,
    registry: Arc<Registry>,
}

impl Negotiator {
    /// A negotiator for a platform.
    pub fn new(platform: Arc<dyn Platform>) -> Self {
        Self {
            cache: Mutex::new(PlanCache::default()),
            registry: Arc::new(Registry::with_observer(platform.observer())),
            platform,
        }
    }

    /// The platform.
    pub fn platform(&self) -> &Arc<dyn Platform> {
        &self.platform
    }

    /// The registry of mappings.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        let c = self.cache.lock();
        CacheStats {
            hits: c.hits,
            misses: c.misses,
            entries: c.plans.len(),
        }
    }

    /// The plan for `importer` to reach `exporter`'s memory with `access`, from the cache when
    /// it holds one for the same facts on the current topology.
    pub fn negotiate(
        &self,
        exporter: &dyn MemoryExporter,
        importer: &dyn DmaImporter,
        access: Access,
        policy: &Policy,
    ) -> Result<Plan> {
        let topo = self.platform.topology();
        let key = (self.facts(exporter, importer, access)?, *policy);
        {
            let mut c = self.cache.lock();
            if c.generation != topo.generation() {
                c.plans.clear();
                c.generation = topo.generation();
            }
            if let Some(p) = c.plans.get(&key).cloned() {
                c.hits += 1;
                return Ok(p);
            }
        }
        let plan = self.plan(&topo, &key.0, policy)?;
        let mut c = self.cache.lock();
        c.misses += 1;
        if c.generation == topo.generation() {
            c.plans.insert(key, plan.clone());
        }
        Ok(plan)
    }

    /// The plan computed from scratch, bypassing the cache.
    pub fn negotiate_uncached(
        &self,
        exporter: &dyn MemoryExporter,
        importer: &dyn DmaImporter,
        access: Access,
        policy: &Policy,
    ) -> Result<Plan> {
        let facts = self.facts(exporter, importer, access)?;
        self.plan(&self.platform.topology(), &facts, policy)
    }

    fn facts(
        &self,
        exporter: &dyn MemoryExporter,
        importer: &dyn DmaImporter,
        access: Access,
    ) -> Result<Facts> {
        Ok(Facts {
            exporter: exporter.id(),
            info: exporter.info(),
            importer: importer.device(),
            caps: importer.caps(),
            domain: self.platform.domain(importer.device())?.kind(),
            access,
        })
    }

    fn plan(&self, topo: &Topology, facts: &Facts, policy: &Policy) -> Result<Plan> {
        let _span = tracing::debug_span!("negotiate", exporter = %facts.exporter, importer = %facts.importer).entered();
        let plan = decide(topo, facts, policy)?;
        tracing::debug!(strategy = %plan.strategy, "planned");
        Ok(plan)
    }

    /// Establishes `plan` for `range` of the exporter's memory. All or nothing.
    pub fn establish(
        &self,
        plan: &Plan,
        exporter: &Arc<dyn MemoryExporter>,
        importer: &Arc<dyn DmaImporter>,
        range: AddrRange<Offset>,
    ) -> Result<Mapping> {
        let _span = tracing::debug_span!("establish", exporter = %exporter.id(), importer = %importer.device(), %range).entered();
        if plan.exporter != exporter.id() || plan.importer != importer.device() {
            return Err(Error::PlanMismatch {
                plan: format!("{} -> {}", plan.exporter, plan.importer),
                given: format!("{} -> {}", exporter.id(), importer.device()),
            });
        }
        check_range(&**exporter, range)?;
        let resources = establish::build(&*self.platform, plan, exporter, &**importer, range)?;
        let seq = Arc::new(Sequence::default());
        let mut inner = self.registry.inner.lock();
        let id = inner.insert(Entry {
            exporter: exporter.clone(),
            importer: importer.clone(),
            range,
            access: plan.access,
            pinned: plan.pin,
            seq: seq.clone(),
            state: State::Live(Box::new(resources)),
        });
        let event = self.registry.live_event(&inner, id);
        drop(inner);
        self.registry.notify_established(event);
        Ok(Mapping {
            id,
            registry: self.registry.clone(),
            seq,
            range,
        })
    }

    /// [`negotiate`](Self::negotiate) then [`establish`](Self::establish).
    pub fn map(
        &self,
        exporter: &Arc<dyn MemoryExporter>,
        importer: &Arc<dyn DmaImporter>,
        range: AddrRange<Offset>,
        access: Access,
        policy: &Policy,
    ) -> Result<Mapping> {
        let plan = self.negotiate(&**exporter, &**importer, access, policy)?;
        self.establish(&plan, exporter, importer, range)
    }

    /// Runs the invalidation protocol before an exporter moves or revokes `range`: every
    /// overlapping mapping's importer is told and must stop, then its IOMMU mapping is unmapped
    /// and flushed and its grant released, then its sequence is bumped. When this returns `Ok`
    /// the memory may move.
    ///
    /// A range that a pinned mapping holds is refused with [`Error::Pinned`] before anything is
    /// touched. If an importer fails to stop, the mappings already invalidated stay so, the
    /// others stay live, and the error names the importer: the memory must not move.
    pub fn invalidate(
        &self,
        exporter: ExporterId,
        range: AddrRange<Offset>,
        kind: InvalidationKind,
    ) -> Result<InvalidationReport> {
        let _span = tracing::debug_span!("invalidate", %exporter, %range, ?kind).entered();
        // 1. Under the lock: refuse pinned ranges, mark the others as being invalidated.
        let targets: Vec<Target> = {
            let inner = self.registry.inner.lock();
            let ids = inner.overlapping(exporter, &range);
            if let Some(e) = ids.iter().map(|id| &inner.entries[id]).find(|e| e.pinned) {
                return Err(Error::Pinned {
                    exporter,
                    range: range.to_string(),
                    importer: e.importer.device(),
                });
            }
            ids.into_iter()
                .map(|id| {
                    let e = &inner.entries[&id];
                    Target {
                        id,
                        importer: e.importer.clone(),
                        seq: e.seq.clone(),
                        odd: e.seq.begin_invalidate(),
                    }
                })
                .collect()
        };
        // 2. Outside the lock: tell each importer, then tear its mapping down.
        let mut report = InvalidationReport::default();
        let mut failure = None;
        for Target {
            id,
            importer,
            seq,
            odd,
        } in targets
        {
            if failure.is_none() {
                let notice = Invalidation {
                    mapping: id,
                    exporter,
                    range,
                    kind,
                    seq: odd,
                };
                match importer.invalidate(&notice) {
                    Ok(()) => {
                        let taken = self.take_resources(id, kind);
                        if let Some((res, exp, event)) = taken {
                            self.registry
                                .notify_torn_down(event, TeardownCause::Invalidated(kind));
                            match res.teardown(&*exp) {
                                Ok(n) => report.bytes_unmapped += n,
                                Err(err) => {
                                    tracing::warn!(mapping = id, %err, "teardown during invalidation failed")
                                }
                            }
                            report.mappings += 1;
                        }
                    }
                    Err(err) => {
                        failure = Some(Error::InvalidateFailed {
                            device: importer.device(),
                            range: range.to_string(),
                            reason: err.to_string(),
                        })
                    }
                }
            }
            // 3. The sequence goes even again (and differs from every reader's).
            seq.end_invalidate();
        }
        tracing::debug!(
            mappings = report.mappings,
            bytes = report.bytes_unmapped,
            "invalidated"
        );
        failure.map_or(Ok(report), Err)
    }

    /// Takes a live entry's resources, leaving it invalidated.
    fn take_resources(
        &self,
        id: u64,
        kind: InvalidationKind,
    ) -> Option<(Resources, Arc<dyn MemoryExporter>, Option<MappingEvent>)> {
        let mut inner = self.registry.inner.lock();
        // Already invalidated, or a re-fault in flight (it sees the sequence move and retries).
        let event = self.registry.live_event(&inner, id);
        let e = inner.entries.get_mut(&id)?;
        if !matches!(e.state, State::Live(_)) {
            return None;
        }
        match std::mem::replace(&mut e.state, State::Invalidated(kind)) {
            State::Live(res) => Some((*res, e.exporter.clone(), event)),
            _ => None,
        }
    }

    /// Re-faults an invalidated mapping of an ODP importer: a fresh plan for where the memory is
    /// now, and new resources for the same range. Returns the plan. A live mapping is left as it
    /// is.
    pub fn refault(&self, mapping: &Mapping, policy: &Policy) -> Result<Plan> {
        loop {
            let seq = mapping.read_begin();
            let (exporter, importer, access) = {
                let mut inner = self.registry.inner.lock();
                let e = inner
                    .entries
                    .get_mut(&mapping.id)
                    .ok_or(Error::Invalidated(mapping.id))?;
                match e.state {
                    State::Live(_) => {
                        let (exp, imp, acc) = (e.exporter.clone(), e.importer.clone(), e.access);
                        drop(inner);
                        return self.negotiate(&*exp, &*imp, acc, policy);
                    }
                    State::Invalidated(InvalidationKind::Revoke) => {
                        return Err(Error::CannotRefault {
                            mapping: mapping.id,
                            reason: "the memory was revoked",
                        })
                    }
                    State::Refaulting => {
                        return Err(Error::CannotRefault {
                            mapping: mapping.id,
                            reason: "a re-fault is already running",
                        })
                    }
                    State::Invalidated(InvalidationKind::Move) => {}
                }
                if !e.importer.caps().flags.contains(ImporterFlags::ODP) {
                    return Err(Error::CannotRefault {
                        mapping: mapping.id,
                        reason: "the importer has no ODP",
                    });
                }
                e.state = State::Refaulting;
                (e.exporter.clone(), e.importer.clone(), e.access)
            };
            let built = self
                .negotiate(&*exporter, &*importer, access, policy)
                .and_then(|plan| {
                    establish::build(&*self.platform, &plan, &exporter, &*importer, mapping.range)
                        .map(|r| (plan, r))
                });
            let mut inner = self.registry.inner.lock();
            let Some(e) = inner.entries.get_mut(&mapping.id) else {
                drop(inner);
                if let Ok((_, res)) = built {
                    res.teardown(&*exporter)?;
                }
                return Err(Error::Invalidated(mapping.id));
            };
            match built {
                Err(err) => {
                    e.state = State::Invalidated(InvalidationKind::Move);
                    return Err(err);
                }
                Ok((plan, res)) if !mapping.read_retry(seq) => {
                    e.state = State::Live(Box::new(res));
                    let event = self.registry.live_event(&inner, mapping.id);
                    drop(inner);
                    self.registry.notify_established(event);
                    return Ok(plan);
                }
                Ok((_, res)) => {
                    // The memory moved again while we built: give it back and start over.
                    e.state = State::Invalidated(InvalidationKind::Move);
                    drop(inner);
                    res.teardown(&*exporter)?;
                }
            }
        }
    }
}

fn check_range(exporter: &dyn MemoryExporter, range: AddrRange<Offset>) -> Result<()> {
    if range.is_empty() {
        return Err(Error::EmptyRange {
            what: "exporter range",
        });
    }
    let whole = AddrRange::new(Offset(0), exporter.info().size)?;
    if !whole.contains_range(&range) {
        return Err(Error::OutOfBounds {
            kind: "offset",
            start: range.start().0,
            len: range.len(),
            limit_start: 0,
            limit_len: whole.len(),
        });
    }
    Ok(())
}
