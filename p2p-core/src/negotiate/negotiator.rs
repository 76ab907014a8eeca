//! The negotiator: plans (cached), establishes mappings, and runs the invalidation protocol.

use super::domain_cache::DomainRef;
use super::importers::Lend;
use super::pair::Pair;
use super::plan_cache::{CacheStats, PlanCache};
use super::registry::{Entry, Key, Registry, Resources, State};
use super::{decide, establish, Facts, Mapping, Plan, Policy, ReasonList, Sequence, Strategy};
use crate::access::Access;
use crate::addr::{AddrRange, Offset};
use crate::error::{Error, Result};
use crate::pci::PciAddr;
use crate::topology::Topology;
use crate::traits::{
    DmaImporter, ExporterId, ImporterCaps, ImporterFlags, IntoDynExporter, IntoDynImporter,
    InvalidationKind, MemoryExporter, Platform,
};
use std::sync::Arc;

/// Plans, establishes and invalidates mappings on one [`Platform`].
///
/// Plans are cached per (facts, policy), where the facts are everything the decision reads of the
/// exporter (including where its memory is now), the importer and its domain; the cache is
/// dropped when the platform's topology generation changes.
#[derive(Debug)]
pub struct Negotiator {
    platform: Arc<dyn Platform>,
    cache: PlanCache,
    pub(super) registry: Arc<Registry>,
}

impl Negotiator {
    /// A negotiator for a platform.
    pub fn new(platform: Arc<dyn Platform>) -> Self {
        Self {
            cache: PlanCache::default(),
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
        self.cache.stats()
    }

    /// The plan for `importer` to reach `exporter`'s memory with `access`, from the cache when
    /// it holds one for the same facts on the current topology.
    ///
    /// Takes any exporter and importer by reference: a `&MyExporter`, an `&Arc<MyExporter>`,
    /// an `&Arc<dyn MemoryExporter>` or a `&dyn MemoryExporter`. A refused plan is `Ok` (see
    /// [the refusal shape](super#refusal)).
    pub fn negotiate<E, I>(
        &self,
        exporter: &E,
        importer: &I,
        access: Access,
        policy: &Policy,
    ) -> Result<Plan>
    where
        E: MemoryExporter + ?Sized,
        I: DmaImporter + ?Sized,
    {
        self.cached_plan(exporter, importer, access, policy)
            .map(|p| (*p).clone())
    }

    /// [`negotiate`](Self::negotiate) without copying the plan out of the cache.
    fn cached_plan<E, I>(
        &self,
        exporter: &E,
        importer: &I,
        access: Access,
        policy: &Policy,
    ) -> Result<Arc<Plan>>
    where
        E: MemoryExporter + ?Sized,
        I: DmaImporter + ?Sized,
    {
        let facts = self.facts(exporter, importer, access)?;
        self.plan_for_facts(facts, policy, self.platform.topology_generation())
    }

    /// The plan for `facts` under `policy`, from the cache when it holds one for topology
    /// `generation` (the current one, read by the caller).
    fn plan_for_facts(&self, facts: Facts, policy: &Policy, generation: u64) -> Result<Arc<Plan>> {
        // The topology itself only on a miss: a hit needs only its generation.
        self.cache
            .get_or_make(generation, (facts, *policy), |(facts, policy)| {
                self.plan(&self.platform.topology(), facts, policy)
            })
    }

    /// The plan computed from scratch, bypassing the cache.
    pub fn negotiate_uncached<E, I>(
        &self,
        exporter: &E,
        importer: &I,
        access: Access,
        policy: &Policy,
    ) -> Result<Plan>
    where
        E: MemoryExporter + ?Sized,
        I: DmaImporter + ?Sized,
    {
        let facts = self.facts(exporter, importer, access)?;
        self.plan(&self.platform.topology(), &facts, policy)
    }

    fn facts<E, I>(&self, exporter: &E, importer: &I, access: Access) -> Result<Facts>
    where
        E: MemoryExporter + ?Sized,
        I: DmaImporter + ?Sized,
    {
        let identities = (exporter.id(), importer.device());
        self.facts_known((exporter, importer), identities, access)
    }

    /// [`facts`](Self::facts) of devices whose id and address the caller already has.
    fn facts_known<E, I>(
        &self,
        (exporter, importer): (&E, &I),
        (id, device): (ExporterId, PciAddr),
        access: Access,
    ) -> Result<Facts>
    where
        E: MemoryExporter + ?Sized,
        I: DmaImporter + ?Sized,
    {
        Ok(Facts {
            exporter: id,
            info: exporter.info(),
            importer: device,
            caps: importer.caps(),
            domain: self.platform.domain_kind(device)?,
            access,
        })
    }

    /// The plan for `pair` now, in topology `generation`, with the importer's capabilities it was
    /// made from (what the set-up uses).
    fn plan_pair(
        &self,
        pair: Pair<'_>,
        access: Access,
        policy: &Policy,
        generation: u64,
    ) -> Result<(Arc<Plan>, ImporterCaps)> {
        let facts = self.facts_known(
            (pair.exporter, pair.importer),
            (pair.id, pair.device),
            access,
        )?;
        let caps = facts.caps;
        Ok((self.plan_for_facts(facts, policy, generation)?, caps))
    }

    fn plan(&self, topo: &Topology, facts: &Facts, policy: &Policy) -> Result<Plan> {
        let _span = tracing::debug_span!("negotiate", exporter = %facts.exporter, importer = %facts.importer).entered();
        let plan = decide(topo, facts, policy)?;
        // Plans are cached, so this runs once per distinct set of facts, not per map.
        if plan.is_refused() {
            tracing::info!(exporter = %facts.exporter, importer = %facts.importer, strategy = %plan.strategy, reasons = %ReasonList(&plan.reasons), "refused");
        } else {
            tracing::debug!(strategy = %plan.strategy, reasons = %ReasonList(&plan.reasons), "planned");
        }
        Ok(plan)
    }

    /// Establishes `plan` for `range` of the exporter's memory. All or nothing.
    ///
    /// The mapping is registered before anything is built, and published only if no
    /// invalidation of its range began or ended meanwhile (the protocol is written down in
    /// [`protocol`](super::protocol)). If the memory moved since `plan` was made, this fails with
    /// [`Error::StalePlan`]: negotiate again, or use [`map`](Self::map), which does. A refused
    /// plan fails with [`Error::Refused`] and touches nothing.
    ///
    /// Takes the devices shared (`&Arc<MyExporter>` or `&Arc<dyn MemoryExporter>`): the
    /// registry keeps them until the mapping is dropped, to tear it down. Each importer is kept
    /// by one reference however many mappings (in any negotiator) use it, so that threads
    /// mapping through one importer do not all write its reference count. That reference stays
    /// after the last mapping while you still hold the importer, and goes in the course of the
    /// registry's next drops once you do not, at
    /// [`Registry::let_go_of_unused_importers`](super::Registry::let_go_of_unused_importers),
    /// or with the negotiator: an importer whose `Drop` must run at once (a hot-unplugged
    /// device) is let go with that call, and an importer should reach its negotiator through a
    /// `Weak`, not own it.
    pub fn establish<E, I>(
        &self,
        plan: &Plan,
        exporter: &Arc<E>,
        importer: &Arc<I>,
        range: AddrRange<Offset>,
    ) -> Result<Mapping>
    where
        E: IntoDynExporter + ?Sized,
        I: IntoDynImporter + ?Sized,
    {
        let owned = exporter.clone().into_dyn();
        let share = || importer.clone().into_dyn();
        // On the devices themselves: an `Arc` of an exporter may be an exporter too.
        let (exporter, importer) = ((**exporter).as_dyn(), (**importer).as_dyn());
        let pair = Pair::new(exporter, importer);
        let _span =
            tracing::debug_span!("establish", exporter = %pair.id, importer = %pair.device, %range)
                .entered();
        if plan.exporter != pair.id || plan.importer != pair.device {
            return Err(Error::PlanMismatch {
                plan: format!("{} -> {}", plan.exporter, plan.importer),
                given: format!("{} -> {}", pair.id, pair.device),
            });
        }
        check_range(exporter, range)?;
        if let Strategy::Refused(why) = &plan.strategy {
            // Refused plans touch nothing: no registration, no grant, no IOVA.
            tracing::info!(exporter = %plan.exporter, importer = %plan.importer, reasons = %ReasonList(&plan.reasons), "establish of a refused plan");
            return Err(Error::Refused {
                exporter: plan.exporter,
                importer: plan.importer,
                refusal: why.clone(),
            });
        }
        let shared = Arc::new(plan.clone());
        self.register_and_publish((owned, &share), pair, range, plan.access, |_| {
            let now = exporter.info().residency;
            if now != plan.residency {
                return Err(Error::StalePlan {
                    exporter: plan.exporter,
                    planned: plan.residency.to_string(),
                    now: now.to_string(),
                });
            }
            Ok((shared.clone(), importer.caps()))
        })
    }

    /// [`negotiate`](Self::negotiate) then [`establish`](Self::establish); if the memory moves
    /// while the mapping is being set up, the plan is made again for its new place. A refused
    /// plan fails with [`Error::Refused`]. Takes the devices as [`establish`](Self::establish)
    /// does.
    pub fn map<E, I>(
        &self,
        exporter: &Arc<E>,
        importer: &Arc<I>,
        range: AddrRange<Offset>,
        access: Access,
        policy: &Policy,
    ) -> Result<Mapping>
    where
        E: IntoDynExporter + ?Sized,
        I: IntoDynImporter + ?Sized,
    {
        // The registry's references are the only ones taken (of the importer, only if its shard
        // holds none yet): the rest of the call borrows.
        let owned = exporter.clone().into_dyn();
        let share = || importer.clone().into_dyn();
        // On the devices themselves: an `Arc` of an exporter may be an exporter too.
        let pair = Pair::new((**exporter).as_dyn(), (**importer).as_dyn());
        // Before registering: a range out of bounds is refused at once, never waiting behind an
        // invalidation of the memory.
        check_range(pair.exporter, range)?;
        // The plan depends on where the memory is, so it is made after each attempt's
        // read_begin (the cache makes that cheap): a plan made before the registration could
        // describe a place the memory left meanwhile (loom_protocol's establish_vs_move).
        self.register_and_publish((owned, &share), pair, range, access, |generation| {
            self.plan_pair(pair, access, policy, generation)
        })
    }

    /// Registers a building entry for `range` (which takes the exporter the registry keeps, and
    /// holds the importer in the shard, taking a reference with `share` only if the shard holds
    /// none yet), then runs [`publish`](Self::publish) with a plan, and the importer's capabilities
    /// it was made for, from `plan_for(generation)` each time (the topology generation to plan
    /// in, read after the attempt's `read_begin`, which may have waited out an invalidation that
    /// changed the topology), on the same devices borrowed (`pair`). On failure the entry is
    /// gone.
    fn register_and_publish(
        &self,
        (exporter, share): (Arc<dyn MemoryExporter>, &dyn Fn() -> Arc<dyn DmaImporter>),
        pair: Pair<'_>,
        range: AddrRange<Offset>,
        access: Access,
        mut plan_for: impl FnMut(u64) -> Result<(Arc<Plan>, ImporterCaps)>,
    ) -> Result<Mapping> {
        let id = self.registry.next_id();
        let generation = self.platform.topology_generation();
        let shard = self.registry.shard(pair.id);
        let (key, seq, mut domain) = {
            let mut inner = shard.lock();
            let seq = inner.fresh_sequence();
            let lent = Lend {
                importer: pair.importer,
                share,
            };
            let importer = (inner.importers.hold(&lent), pair.device);
            let exporter = (exporter, pair.id);
            let entry = Entry::building(id, exporter, importer, range, access, seq.clone());
            let key = inner.insert(entry)?;
            (key, seq, inner.domains.get(pair.device, generation))
        };
        let published = self.publish(key, &seq, pair, |_| {
            let now = self.platform.topology_generation();
            let (plan, caps) = plan_for(now)?;
            // The shard's domain from the registration, if the topology has not changed since.
            let domain = domain.take().filter(|_| now == generation);
            self.build(plan, pair, caps, range, domain)
        });
        match published {
            Ok(_) => Ok(Mapping {
                key,
                exporter: pair.id,
                shard: shard.clone(),
                seq,
                range,
            }),
            Err(e) => {
                // Dropped after the lock is released: it may hold the last reference to a device.
                let removed = shard.lock().remove(key);
                drop(removed);
                Err(e)
            }
        }
    }

    /// One attempt's set-up: `plan`'s resources for `range`, for an importer with `caps`, in
    /// its domain (`domain`, if the caller has it already, or the shard's).
    fn build(
        &self,
        plan: Arc<Plan>,
        pair: Pair<'_>,
        caps: ImporterCaps,
        range: AddrRange<Offset>,
        domain: Option<DomainRef>,
    ) -> Result<(Arc<Plan>, Box<Resources>)> {
        let domain = match domain {
            Some(d) => d,
            None => self.domain_ref(pair.id, pair.device)?,
        };
        let res = establish::build(&*self.platform, &plan, pair, caps, range, domain)?;
        Ok((plan, res))
    }

    /// `device`'s domain as `exporter`'s registry shard wraps it (see the `domain_cache`
    /// module): from the shard, or from the platform the first time in a topology generation.
    /// The platform is asked outside the shard's lock.
    fn domain_ref(&self, exporter: ExporterId, device: PciAddr) -> Result<DomainRef> {
        let generation = self.platform.topology_generation();
        let shard = self.registry.shard_for(exporter);
        if let Some(d) = shard.lock().domains.get(device, generation) {
            return Ok(d);
        }
        let domain = self.platform.domain(device)?;
        Ok(shard.lock().domains.insert(device, generation, domain))
    }

    /// The reader side of the protocol for entry `key` (state [`State::Building`]): reads the
    /// sequence, builds, and under the registry lock publishes the resources only if the
    /// sequence did not move; otherwise gives them back and starts over, at most
    /// [`MAX_ATTEMPTS`] times. Returns the plan published. On error the entry is left building
    /// (the caller decides what it becomes) and nothing built is kept.
    fn publish(
        &self,
        key: Key,
        seq: &Sequence,
        pair: Pair<'_>,
        mut build: impl FnMut(u32) -> Result<(Arc<Plan>, Box<Resources>)>,
    ) -> Result<Arc<Plan>> {
        let id = key.id;
        let shard = self.registry.shard(pair.id);
        for attempt in 0..MAX_ATTEMPTS {
            let begin = seq.read_begin();
            let (plan, res) = build(attempt)?;
            let mut inner = shard.lock();
            let entry = inner.entries.get_mut(key);
            let still_there = entry.is_some();
            if let Some(e) = entry.filter(|_| !seq.read_retry(begin)) {
                // What the debug line says, read only if someone listens; it is written after
                // the lock is released.
                let listened = tracing::enabled!(tracing::Level::DEBUG)
                    .then(|| (e.device, e.range.len(), res.segments.len()));
                e.pinned = plan.pin;
                e.state = State::Live(res);
                self.registry.notify_established(&inner, key);
                drop(inner);
                if let Some((importer, bytes, segments)) = listened {
                    tracing::debug!(mapping = id, strategy = %plan.strategy, exporter = %pair.id, %importer, bytes, segments, pinned = plan.pin, "established");
                }
                return Ok(plan);
            }
            drop(inner);
            // The memory was invalidated while we built: what we built may point at its old
            // place. Give it back and read the new place.
            if let Err(err) = res.teardown(pair.exporter) {
                tracing::warn!(mapping = id, %err, "giving back a set-up that raced an invalidation failed");
            }
            if !still_there {
                return Err(Error::Invalidated(id));
            }
            tracing::debug!(
                mapping = id,
                attempt,
                "set-up raced an invalidation; retrying"
            );
        }
        Err(Error::Contended {
            exporter: pair.id,
            range: shard
                .lock()
                .entries
                .get(key)
                .map_or_else(String::new, |e| e.range.to_string()),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Re-faults an invalidated mapping of an ODP importer: a fresh plan for where the memory is
    /// now, and new resources for the same range, published under the same protocol as an
    /// establish. Returns the plan. A live mapping is left as it is.
    pub fn refault(&self, mapping: &Mapping, policy: &Policy) -> Result<Plan> {
        // Another negotiator's mapping: its key may name an entry here (ids and slots are per
        // registry), which must not be rebuilt with that mapping's range and sequence.
        if !Arc::ptr_eq(&mapping.shard, self.registry.shard(mapping.exporter)) {
            return Err(Error::CannotRefault {
                mapping: mapping.key.id,
                reason: "the mapping is another negotiator's",
            });
        }
        let (exporter, importer, access) = {
            let mut inner = self.registry.shard_for(mapping.exporter).lock();
            let importer = inner.importer_of(mapping.key);
            let (Some(e), Some(importer)) = (inner.entries.get_mut(mapping.key), importer) else {
                return Err(Error::Invalidated(mapping.key.id));
            };
            match e.state {
                State::Live(_) => {
                    let (exp, acc) = (e.exporter.clone(), e.access);
                    drop(inner);
                    return self.negotiate(&*exp, &*importer, acc, policy);
                }
                State::Invalidated(InvalidationKind::Revoke) => {
                    return Err(Error::CannotRefault {
                        mapping: mapping.key.id,
                        reason: "the memory was revoked",
                    })
                }
                State::Building => {
                    return Err(Error::CannotRefault {
                        mapping: mapping.key.id,
                        reason: "a re-fault is already running",
                    })
                }
                State::Invalidated(InvalidationKind::Move) => {}
            }
            if !importer.caps().flags.contains(ImporterFlags::ODP) {
                return Err(Error::CannotRefault {
                    mapping: mapping.key.id,
                    reason: "the importer has no ODP",
                });
            }
            e.state = State::Building;
            (e.exporter.clone(), importer, e.access)
        };
        let pair = Pair::new(&*exporter, &*importer);
        let published = self.publish(mapping.key, &mapping.seq, pair, |_| {
            let generation = self.platform.topology_generation();
            let (plan, caps) = self.plan_pair(pair, access, policy, generation)?;
            self.build(plan, pair, caps, mapping.range, None)
        });
        match &published {
            Ok(plan) => {
                tracing::debug!(mapping = mapping.key.id, strategy = %plan.strategy, "re-faulted")
            }
            Err(err) => {
                tracing::debug!(mapping = mapping.key.id, %err, "re-fault failed");
                if let Some(e) = self
                    .registry
                    .shard_for(mapping.exporter)
                    .lock()
                    .entries
                    .get_mut(mapping.key)
                {
                    e.state = State::Invalidated(InvalidationKind::Move);
                }
            }
        }
        published.map(|p| (*p).clone())
    }
}

/// How many times a set-up is built before it gives up because invalidations keep overlapping
/// it. Each retry means an invalidation of the same range began or ended during the build, so
/// this bounds only a pathological stream of them.
const MAX_ATTEMPTS: u32 = 64;

/// `range` non-empty and inside the exporter's memory. Not inlined: inlined into `map`, with its
/// errors, it made the set-up's frame larger and the map + drop measurably slower (a third
/// slower in one build, for the same instructions).
#[inline(never)]
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
