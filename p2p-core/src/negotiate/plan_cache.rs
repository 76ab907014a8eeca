//! The plan cache: plans keyed by everything a decision reads (the facts) and the policy, valid
//! for one topology generation, bounded in size. Its hot path does not take a lock shared between
//! threads: each thread keeps a few recent plans of each cache in a thread-local memo, in front of
//! the shared map. The key is hashed with a multiply-rotate hash (as rustc's FxHash), not SipHash:
//! the keys come from the process's own devices, not from an adversary.

use super::{Facts, Plan, Policy};
use crate::sync::{AtomicU64, Mutex, Ordering};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Plans the cache holds at most.
pub const PLAN_CACHE_CAPACITY: usize = 4096;

/// Plans a thread remembers per cache, most recent first.
const MEMO_ENTRIES: usize = 4;

/// What a plan is cached under.
pub(crate) type Key = (Facts, Policy);

/// rustc's FxHasher: one multiply and rotate per word.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Default)]
struct Shared {
    generation: u64,
    plans: HashMap<Key, Arc<Plan>, BuildHasherDefault<FxHasher>>,
    evictions: u64,
}

/// Counters of one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Plans served from the cache (the shared map or a thread's memo).
    pub hits: u64,
    /// Plans computed.
    pub misses: u64,
    /// Plans held now (at most [`PLAN_CACHE_CAPACITY`]).
    pub entries: usize,
    /// Times the cache was full and emptied.
    pub evictions: u64,
}

/// One remembered plan.
struct Memo {
    cache: u64,
    generation: u64,
    key: Key,
    plan: Arc<Plan>,
}

/// A thread's memo and its hit counters (one per cache it used; each counter is written by this
/// thread only, so counting costs no shared cache line).
#[derive(Default)]
struct ThreadMemo {
    recent: Vec<Memo>,
    counters: Vec<(u64, Arc<HitCounter>)>,
}

/// One thread's hit counter, on cache lines of its own: two threads' counters are separate
/// allocations that would otherwise sit side by side, and each thread writes its own on every
/// hit (128 bytes: adjacent-line prefetching pairs lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct HitCounter(AtomicU64);

thread_local! {
    // Const-initialised: an access checks no lazy-initialisation state.
    static MEMO: RefCell<ThreadMemo> = const {
        RefCell::new(ThreadMemo {
            recent: Vec::new(),
            counters: Vec::new(),
        })
    };
}

/// Threads' hit counters of one cache.
#[derive(Debug, Default)]
struct Counters {
    live: Vec<Arc<HitCounter>>,
    /// Hits counted by threads that have exited (their counters folded in and dropped).
    retired: u64,
}

impl Counters {
    /// Folds in and drops the counters of threads that have exited (the thread's memo held the
    /// other reference), so that a process that keeps making threads keeps few counters.
    fn retire_exited(&mut self) {
        let mut retired = 0;
        self.live.retain(|c| {
            let gone = Arc::strong_count(c) == 1;
            if gone {
                // Pairs with the exited thread's release of its reference: its last counts are
                // visible.
                std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
                retired += c.0.load(Ordering::Relaxed);
            }
            !gone
        });
        self.retired += retired;
    }

    fn sum(&self) -> u64 {
        self.retired
            + self
                .live
                .iter()
                .map(|c| c.0.load(Ordering::Relaxed))
                .sum::<u64>()
    }
}

static NEXT_CACHE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A negotiator's plan cache.
#[derive(Debug)]
pub(crate) struct PlanCache {
    id: u64,
    shared: Mutex<Shared>,
    misses: AtomicU64,
    /// The hit counter of every thread that has one for this cache and still runs, and the hits
    /// of those that exited (see [`register_counter`](Self::register_counter)).
    hit_counters: Mutex<Counters>,
}

impl Default for PlanCache {
    fn default() -> Self {
        Self {
            id: NEXT_CACHE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            shared: Mutex::default(),
            misses: AtomicU64::new(0),
            hit_counters: Mutex::default(),
        }
    }
}

impl PlanCache {
    /// The cached plan for `key` on topology `generation`, or `make()`'s, which is then cached.
    pub fn get_or_make(
        &self,
        generation: u64,
        key: Key,
        make: impl FnOnce(&Key) -> crate::Result<Plan>,
    ) -> crate::Result<Arc<Plan>> {
        if let Some(plan) = self.memo_lookup(generation, &key) {
            return Ok(plan);
        }
        let shared_hit = {
            let mut s = self.shared.lock();
            if s.generation != generation {
                s.plans.clear();
                s.generation = generation;
            }
            s.plans.get(&key).cloned()
        };
        let plan = match shared_hit {
            Some(plan) => {
                self.count_hit();
                plan
            }
            None => {
                let plan = Arc::new(make(&key)?);
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.insert_shared(generation, key.clone(), plan.clone());
                plan
            }
        };
        self.memo_store(generation, key, plan.clone());
        Ok(plan)
    }

    fn insert_shared(&self, generation: u64, key: Key, plan: Arc<Plan>) {
        let mut s = self.shared.lock();
        if s.generation != generation {
            return;
        }
        if s.plans.len() >= PLAN_CACHE_CAPACITY {
            // Keys name exporters, and a long-running process makes exporters without end:
            // start over rather than grow. Plans are cheap to recompute; a full cache means the
            // working set is larger than the cache anyway.
            s.plans.clear();
            s.evictions += 1;
        }
        s.plans.insert(key, plan);
    }

    /// The plan this thread remembers for `key`, counted as a hit: the lookup and the count in
    /// one visit to the thread-local memo.
    fn memo_lookup(&self, generation: u64, key: &Key) -> Option<Arc<Plan>> {
        let (plan, counted) = MEMO.with(|m| {
            let m = m.borrow();
            let plan = m
                .recent
                .iter()
                .find(|e| e.cache == self.id && e.generation == generation && &e.key == key)
                .map(|e| e.plan.clone())?;
            Some((plan, self.bump(&m)))
        })?;
        if !counted {
            self.register_counter();
        }
        Some(plan)
    }

    fn memo_store(&self, generation: u64, key: Key, plan: Arc<Plan>) {
        MEMO.with(|m| {
            let mut m = m.borrow_mut();
            m.recent.retain(|e| !(e.cache == self.id && e.key == key));
            m.recent.insert(
                0,
                Memo {
                    cache: self.id,
                    generation,
                    key,
                    plan,
                },
            );
            m.recent.truncate(MEMO_ENTRIES);
        });
    }

    /// Counts a hit in this thread's own counter for this cache.
    fn count_hit(&self) {
        if !MEMO.with(|m| self.bump(&m.borrow())) {
            self.register_counter();
        }
    }

    /// Adds one to this thread's counter for this cache in `memo`; false if it has none yet.
    fn bump(&self, memo: &ThreadMemo) -> bool {
        // Counted in place, without cloning the counter's `Arc` (a locked increment and
        // decrement per hit). Only this thread writes it: a load and a store.
        let mine = memo.counters.iter().find(|(c, _)| *c == self.id);
        mine.map(|(_, c)| {
            c.0.store(c.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed)
        })
        .is_some()
    }

    /// Registers this thread's counter for this cache, at its first hit (no borrow of the memo
    /// is held across the lock).
    fn register_counter(&self) {
        let c = Arc::new(HitCounter(AtomicU64::new(1)));
        {
            let mut counters = self.hit_counters.lock();
            counters.retire_exited();
            counters.live.push(c.clone());
        }
        MEMO.with(|m| {
            let counters = &mut m.borrow_mut().counters;
            // A counter only this thread still holds belongs to a cache that was dropped (a
            // live cache keeps every running thread's): forget it, so that a thread that goes
            // through many negotiators keeps few counters.
            counters.retain(|(_, c)| Arc::strong_count(c) > 1);
            counters.push((self.id, c));
        });
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let s = self.shared.lock();
        CacheStats {
            hits: self.hit_counters.lock().sum(),
            misses: self.misses.load(Ordering::Relaxed),
            entries: s.plans.len(),
            evictions: s.evictions,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn key() -> Key {
        use crate::traits::{DomainKind, ExporterId, ExporterInfo, ImporterCaps, Residency};
        let facts = Facts {
            exporter: ExporterId(7),
            info: ExporterInfo {
                residency: Residency::Host { numa: 0 },
                size: 4096,
                movable: false,
                pinnable: true,
                bus_window: crate::addr::AddrRange::new(crate::addr::BusAddr(0), 4096).unwrap(),
            },
            importer: "0000:05:00.0".parse().unwrap(),
            caps: ImporterCaps::default(),
            domain: DomainKind::Translated,
            access: crate::Access::READ,
        };
        (facts, Policy::default())
    }

    /// A via-IOMMU plan for `facts`.
    fn plan_for(facts: &Facts) -> Plan {
        Plan {
            exporter: facts.exporter,
            importer: facts.importer,
            access: facts.access,
            strategy: super::super::Strategy::ViaIommu,
            reasons: Vec::new(),
            pin: false,
            domain: facts.domain,
            residency: facts.info.residency,
            path: None,
        }
    }

    /// Threads that hit once each and exit, one after another: each registers a counter, and
    /// registering retires the exited ones', so the cache holds at most the newest two while
    /// every hit is still counted.
    #[test]
    fn registering_a_counter_retires_those_of_exited_threads() {
        let cache = PlanCache::default();
        let plan = plan_for(&key().0);
        // The first call makes the plan (a miss); every later one hits.
        cache.get_or_make(1, key(), |_| Ok(plan.clone())).unwrap();
        for _ in 0..20 {
            std::thread::scope(|s| {
                s.spawn(|| {
                    for _ in 0..3 {
                        cache.get_or_make(1, key(), |_| Ok(plan.clone())).unwrap();
                    }
                });
            });
            assert!(cache.hit_counters.lock().live.len() <= 2);
            // A thread lets its counter go in its thread-local destructor, which may run after
            // the scope saw it finish: wait (bounded) until only this thread's is held, so that
            // the next thread's registration finds the exited one's to retire.
            let deadline = Instant::now() + Duration::from_secs(10);
            let held = || {
                let counters = cache.hit_counters.lock();
                counters
                    .live
                    .iter()
                    .filter(|c| Arc::strong_count(c) > 1)
                    .count()
            };
            while held() > 1 {
                assert!(
                    Instant::now() < deadline,
                    "an exited thread's counter is held"
                );
                std::thread::yield_now();
            }
        }
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (60, 1), "{stats:?}");
    }

    /// One thread going through many negotiators' caches, each dropped after use: the thread
    /// keeps the counters of the live caches only, and the live cache still counts every hit.
    #[test]
    fn a_thread_forgets_the_counters_of_dropped_caches() {
        std::thread::scope(|s| {
            s.spawn(|| {
                let kept = PlanCache::default();
                kept.get_or_make(1, key(), |(f, _)| Ok(plan_for(f)))
                    .unwrap();
                kept.get_or_make(1, key(), |(f, _)| Ok(plan_for(f)))
                    .unwrap();
                for _ in 0..50 {
                    let cache = PlanCache::default();
                    cache
                        .get_or_make(1, key(), |(f, _)| Ok(plan_for(f)))
                        .unwrap();
                    cache
                        .get_or_make(1, key(), |(f, _)| Ok(plan_for(f)))
                        .unwrap();
                }
                let held = MEMO.with(|m| m.borrow().counters.len());
                assert!(held <= 2, "{held} counters held");
                kept.get_or_make(1, key(), |_| unreachable!("cached"))
                    .unwrap();
                assert_eq!(kept.stats().hits, 2, "every hit of the live cache counted");
            });
        });
    }

    /// Counters of exited threads (held by the cache alone) are folded into `retired` and
    /// dropped; a running thread's stays; the sum is unchanged.
    #[test]
    fn exited_threads_counters_are_folded_in() {
        let running = Arc::new(HitCounter(AtomicU64::new(5)));
        let held_by_thread = running.clone();
        let mut c = Counters {
            live: vec![
                Arc::new(HitCounter(AtomicU64::new(3))),
                running,
                Arc::new(HitCounter(AtomicU64::new(4))),
            ],
            retired: 1,
        };
        assert_eq!(c.sum(), 13);
        c.retire_exited();
        assert_eq!(c.live.len(), 1);
        assert!(Arc::ptr_eq(&c.live[0], &held_by_thread));
        assert_eq!(c.retired, 8);
        assert_eq!(c.sum(), 13);
    }
}
