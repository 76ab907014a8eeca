//! The one countdown every fault injector in the workspace uses: armed with `n`, the `n`-th
//! check from now fails and the countdown disarms, as the kernel's `fail_nth` and iommufd's
//! selftests do. backend-mock's `FaultInjector` (any injection point, logged, plus seeded
//! rates) and `TestDomain` (page stores) both count with it, so "fail the n-th" means the same
//! in both: a test can walk `n` from 1 until nothing fails and reach every step.

/// A countdown to one injected failure. Not synchronised: its owner keeps it under the lock
/// that orders the checks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FailNth {
    /// Checks left until the failing one (1 = the next check fails).
    left: Option<u64>,
}

impl FailNth {
    /// A countdown that fails nothing until armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails the `n`-th check from now (`n` ≥ 1; 0 is taken as 1), then no more.
    pub fn arm(&mut self, n: u64) {
        self.left = Some(n.max(1));
    }

    /// Fails nothing from now on.
    pub fn disarm(&mut self) {
        self.left = None;
    }

    /// Whether a failure is pending.
    pub fn is_armed(&self) -> bool {
        self.left.is_some()
    }

    /// One check: true if it is the one to fail (the countdown disarms then).
    pub fn check(&mut self) -> bool {
        self.check_many(1).is_some()
    }

    /// `k` checks at once (the page stores of one map, say): the index among them of the one
    /// that fails, if one does (the countdown disarms then), else the countdown moves on by `k`.
    pub fn check_many(&mut self, k: u64) -> Option<u64> {
        let left = self.left?;
        if left <= k {
            self.left = None;
            return Some(left - 1);
        }
        self.left = Some(left - k);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nth_check_fails_once() {
        let mut c = FailNth::new();
        assert!(!c.check());
        c.arm(3);
        assert_eq!(
            [c.check(), c.check(), c.check(), c.check()],
            [false, false, true, false]
        );
        assert!(!c.is_armed());
    }

    #[test]
    fn batched_checks_count_like_single_ones() {
        for n in 1..12 {
            for k in 1..5 {
                let (mut one, mut many) = (FailNth::new(), FailNth::new());
                one.arm(n);
                many.arm(n);
                let singles: Vec<bool> = (0..12).map(|_| one.check()).collect();
                let mut batched = vec![false; 12];
                for start in (0..12).step_by(k as usize) {
                    let len = k.min(12 - start as u64);
                    if let Some(i) = many.check_many(len) {
                        batched[start + i as usize] = true;
                    }
                }
                assert_eq!(singles, batched, "n {n}, k {k}");
            }
        }
    }
}
