//! What every domain check shares: IOVA windows taken from the domain's own allocator, the
//! physical span the configuration lends, and a record of the calls made so that a
//! [`Violation`] can say exactly what led to it.

use super::suite::DomainConfig;
use super::Violation;
use crate::access::Access;
use crate::addr::{Iova, PhysAddr};
use crate::error::{Error, Result};
use crate::traits::IommuDomain;

/// Read and write, the access most checks map with.
pub(crate) const RW: Access = Access::READ.union(Access::WRITE);

/// A domain under check, the rule being checked, and the calls made for it so far.
pub(crate) struct Scratch<'a> {
    pub(crate) d: &'a dyn IommuDomain,
    pub(crate) cfg: &'a DomainConfig,
    rule: &'static str,
    calls: Vec<String>,
    windows: Vec<(Iova, u64)>,
}

impl<'a> Scratch<'a> {
    /// Starts checking `d`.
    pub(crate) fn new(d: &'a dyn IommuDomain, cfg: &'a DomainConfig) -> Self {
        Self {
            d,
            cfg,
            rule: "",
            calls: Vec::new(),
            windows: Vec::new(),
        }
    }

    /// Starts checking `rule`: the record of calls starts afresh.
    pub(crate) fn rule(&mut self, rule: &'static str) {
        self.rule = rule;
        self.calls.clear();
    }

    /// Records a call.
    pub(crate) fn call(&mut self, what: String) {
        self.calls.push(what);
    }

    /// A violation of the current rule: the calls recorded, and `got`.
    pub(crate) fn fail(&self, got: impl Into<String>) -> Violation {
        let inputs = if self.calls.is_empty() {
            "no call".to_owned()
        } else {
            self.calls.join(", then ")
        };
        Violation::new(self.rule, inputs, got)
    }

    /// The smallest page size of the (translated) domain under check.
    pub(crate) fn min_page(&mut self) -> std::result::Result<u64, Violation> {
        self.rule("a translated domain has at least one page size");
        self.call("page_sizes()".into());
        self.d
            .page_sizes()
            .min_page()
            .ok_or_else(|| self.fail("it has none"))
    }

    /// The highest IOVA the checks ask for: 4 GiB, or the aperture's top if lower.
    pub(crate) fn limit(&self) -> u64 {
        self.d.aperture().last().map_or(0, |a| a.0).min(0xffff_ffff)
    }

    /// The physical address `off` bytes into the configured span.
    pub(crate) fn phys(&self, off: u64) -> PhysAddr {
        PhysAddr(self.cfg.phys.0 + off)
    }

    /// A fresh IOVA window of `len` bytes from the domain's allocator, freed by
    /// [`finish`](Self::finish).
    pub(crate) fn window(&mut self, len: u64) -> std::result::Result<Iova, Violation> {
        let limit = self.limit();
        self.call(format!("alloc_iova({len:#x}, {limit:#x})"));
        let iova = self
            .d
            .alloc_iova(len, limit)
            .map_err(|e| self.fail(format!("the allocation failed: {e}")))?;
        self.windows.push((iova, len));
        Ok(iova)
    }

    /// Maps, failing the rule if the domain refuses.
    pub(crate) fn map(
        &mut self,
        iova: u64,
        phys: PhysAddr,
        len: u64,
        access: Access,
    ) -> std::result::Result<(), Violation> {
        self.call(format!("map {iova:#x}+{len:#x} -> {phys} {access:?}"));
        self.d
            .map(Iova(iova), phys, len, access)
            .map_err(|e| self.fail(format!("the map failed: {e}")))
    }

    /// Unmaps, failing the rule unless exactly `want` bytes are unmapped.
    pub(crate) fn unmap(
        &mut self,
        iova: u64,
        len: u64,
        want: u64,
    ) -> std::result::Result<(), Violation> {
        self.call(format!("unmap({iova:#x}, {len:#x})"));
        match self.d.unmap(Iova(iova), len) {
            Ok(n) if n == want => Ok(()),
            Ok(n) => Err(self.fail(format!("returned {n:#x}, expected {want:#x}"))),
            Err(e) => Err(self.fail(format!("failed: {e}, expected it to return {want:#x}"))),
        }
    }

    /// Fails the rule unless `translate(iova)` answers nothing.
    pub(crate) fn expect_none(&self, iova: u64, when: &str) -> std::result::Result<(), Violation> {
        match self.d.translate(Iova(iova)) {
            None => Ok(()),
            Some(t) => Err(self.fail(format!(
                "translate({iova:#x}) {when} answered {} {:?}, expected nothing",
                t.phys, t.access
            ))),
        }
    }

    /// Fails the rule unless `translate(iova)` answers `phys` with `access`.
    pub(crate) fn expect_phys(
        &self,
        iova: u64,
        phys: PhysAddr,
        access: Access,
    ) -> std::result::Result<(), Violation> {
        match self.d.translate(Iova(iova)) {
            Some(t) if t.phys == phys && t.access == access => Ok(()),
            got => Err(self.fail(format!(
                "translate({iova:#x}) answered {got:?}, expected {phys} {access:?}"
            ))),
        }
    }

    /// Fails the rule unless `res` is an error `is_want` accepts (`want` names it).
    pub(crate) fn expect_err<T: std::fmt::Debug>(
        &self,
        res: Result<T>,
        is_want: fn(&Error) -> bool,
        want: &str,
    ) -> std::result::Result<(), Violation> {
        match res {
            Err(e) if is_want(&e) => Ok(()),
            Err(e) => Err(self.fail(format!("failed with `{e}`, expected {want}"))),
            Ok(v) => Err(self.fail(format!("succeeded ({v:?}), expected {want}"))),
        }
    }

    /// Gives the windows back: a flush (so a lazy domain may release them), then their frees.
    /// Best effort: a check has already passed or failed by now.
    pub(crate) fn finish(self) {
        let _ = self.d.flush();
        for (iova, len) in self.windows {
            let _ = self.d.free_iova(iova, len);
        }
    }
}
