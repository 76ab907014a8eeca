//! Seeded fault injection. Each injection point asks the injector before it acts; the injector
//! answers from the seed (a probability per point) or from a countdown (fail the n-th check:
//! p2p-core's [`FailNth`], the countdown `TestDomain` uses too), and logs what it injected.

use crate::events::{Event, EventLog};
use p2p_core::fault::FailNth;
use p2p_core::rand::SplitMix64;
use parking_lot::Mutex;

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultPoint {
    /// An exporter's BAR window is exhausted.
    BarWindow,
    /// The IOMMU cannot allocate a page-table frame while mapping.
    PageTableAlloc,
    /// An IOTLB flush times out.
    FlushTimeout,
    /// An importer reports that it could not stop using a range.
    ImporterInvalidate,
    /// The exporter revokes its memory right now.
    ExporterRevoke,
}

impl FaultPoint {
    /// Every point.
    pub const ALL: [FaultPoint; 5] = [
        FaultPoint::BarWindow,
        FaultPoint::PageTableAlloc,
        FaultPoint::FlushTimeout,
        FaultPoint::ImporterInvalidate,
        FaultPoint::ExporterRevoke,
    ];
}

impl std::fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultPoint::BarWindow => "BAR window full",
            FaultPoint::PageTableAlloc => "page-table frame allocation",
            FaultPoint::FlushTimeout => "IOTLB flush timeout",
            FaultPoint::ImporterInvalidate => "importer failed to stop",
            FaultPoint::ExporterRevoke => "exporter revoked",
        })
    }
}

#[derive(Debug)]
struct State {
    rng: SplitMix64,
    /// Probability per point, in parts per million.
    rates: Vec<(FaultPoint, u32)>,
    /// The countdown of `fail_nth`.
    countdown: FailNth,
    checks: u64,
}

/// The injector.
#[derive(Debug)]
pub struct FaultInjector(Mutex<State>);

impl FaultInjector {
    /// An injector that injects nothing until told to.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(State {
            rng: SplitMix64::new(seed ^ 0xfa17_fa17),
            rates: Vec::new(),
            countdown: FailNth::new(),
            checks: 0,
        }))
    }

    /// Fails `point` with probability `ppm` / 1 000 000 at each check (drawn from the seed).
    pub fn set_rate(&self, point: FaultPoint, ppm: u32) {
        let mut s = self.0.lock();
        s.rates.retain(|(p, _)| *p != point);
        if ppm > 0 {
            s.rates.push((point, ppm.min(1_000_000)));
        }
    }

    /// Fails the `n`-th check from now, whatever its point (`n` ≥ 1), then no more.
    pub fn fail_nth(&self, n: u64) {
        self.0.lock().countdown.arm(n);
    }

    /// Stops all injection.
    pub fn clear(&self) {
        let mut s = self.0.lock();
        s.rates.clear();
        s.countdown.disarm();
    }

    /// Checks made so far.
    pub fn checks(&self) -> u64 {
        self.0.lock().checks
    }

    /// Whether `point` fails now; logs the fault if so.
    pub fn should_fail(
        &self,
        point: FaultPoint,
        detail: impl FnOnce() -> String,
        log: &EventLog,
    ) -> bool {
        let fail = {
            let mut s = self.0.lock();
            s.checks += 1;
            let by_count = s.countdown.check();
            let rate = s.rates.iter().find(|(p, _)| *p == point).map(|(_, r)| *r);
            let by_rate = rate.is_some_and(|ppm| s.rng.below(1_000_000) < u64::from(ppm));
            by_count || by_rate
        };
        if fail {
            log.push(Event::Fault {
                point,
                detail: detail(),
            });
        }
        fail
    }
}
