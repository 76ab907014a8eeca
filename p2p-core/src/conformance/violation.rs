//! [`Violation`]: what a failed conformance check reports.

use std::fmt;

/// A broken rule: which rule of the written contract, the calls that broke it, and what the
/// implementation did instead. Its `Display` is one line meant for a test failure message:
///
/// ```text
/// IommuDomain::unmap walks across leaves of any size (2 MiB then 4 KiB, 4 KiB then 2 MiB) and
/// returns the whole length: map 0xff800000+0x200000 -> 0x40000000 Access(READ | WRITE), then
/// map 0xffa00000+0x1000 -> 0x40200000 Access(READ | WRITE), then map 0xffa01000+0x1000 ->
/// 0x40201000 Access(READ | WRITE), then unmap(0xff800000, 0x202000): returned 0x200000,
/// expected 0x202000
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule, in the words of the trait's documentation.
    pub rule: &'static str,
    /// The calls made, in order, with their arguments.
    pub inputs: String,
    /// What happened, and what the contract wanted.
    pub got: String,
}

impl Violation {
    /// A violation of `rule` by the calls `inputs`, which did `got`.
    pub fn new(rule: &'static str, inputs: impl Into<String>, got: impl Into<String>) -> Self {
        Self {
            rule,
            inputs: inputs.into(),
            got: got.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.rule, self.inputs, self.got)
    }
}

impl std::error::Error for Violation {}

impl From<Violation> for String {
    fn from(v: Violation) -> String {
        v.to_string()
    }
}
