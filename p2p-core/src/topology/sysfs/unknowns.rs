//! What a scan could not read, gathered and said once per kind instead of once per function:
//! read unprivileged, a real server's scan would otherwise open with a hundred near-identical
//! notes before anything a person came for.

use super::place::Place;
use crate::pci::PciAddr;

/// How many addresses a note lists before it counts the rest.
const LISTED: usize = 8;

/// Functions whose facts are partly unknown, in scan order.
#[derive(Debug, Default)]
pub(super) struct Unknowns {
    /// `config` shorter than the kernel's (unprivileged reads): ACS unknown.
    pub short_config: Vec<PciAddr>,
    /// No `config` file at all: ACS and port type unknown.
    pub no_config: Vec<PciAddr>,
    /// Bridges whose port type was inferred from the tree, with what they were taken as.
    pub inferred: Vec<(PciAddr, Place)>,
}

/// `a, b, c` or `a, b, … and 12 more`.
fn listed(addrs: &[PciAddr]) -> String {
    let shown: Vec<String> = addrs.iter().take(LISTED).map(PciAddr::to_string).collect();
    match addrs.len().saturating_sub(LISTED) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

impl Unknowns {
    /// One note per kind of unknown, none when everything was read.
    pub fn into_notes(self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.short_config.is_empty() {
            notes.push(format!(
                "config is readable only in part (reading all of it needs CAP_SYS_ADMIN) for {} \
                 functions: ACS unknown, and bridges' port types unknown: {}",
                self.short_config.len(),
                listed(&self.short_config)
            ));
        }
        if !self.no_config.is_empty() {
            notes.push(format!(
                "no config file for {} functions: ACS and port type unknown: {}",
                self.no_config.len(),
                listed(&self.no_config)
            ));
        }
        let kinds = [
            Place::RootPort,
            Place::SwitchUpstream,
            Place::SwitchDownstream,
        ];
        let parts: Vec<String> = kinds
            .iter()
            .filter_map(|&k| {
                let of: Vec<PciAddr> = self
                    .inferred
                    .iter()
                    .filter(|(_, p)| *p == k)
                    .map(|(a, _)| *a)
                    .collect();
                (!of.is_empty()).then(|| format!("{}s {}", k.name(), listed(&of)))
            })
            .collect();
        if !parts.is_empty() {
            notes.push(format!(
                "port types inferred from the tree (a bridge on a root bus is a root port, one \
                 whose bus holds only bridges a switch upstream port, the bridges below that its \
                 downstream ports): {}",
                parts.join("; ")
            ));
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::test_util::a;

    #[test]
    fn one_note_per_kind_with_long_lists_counted() {
        let many: Vec<PciAddr> = (0..20).map(|i| a(&format!("0000:{i:02x}:00.0"))).collect();
        let u = Unknowns {
            short_config: many.clone(),
            no_config: Vec::new(),
            inferred: vec![
                (many[0], Place::RootPort),
                (many[1], Place::SwitchUpstream),
                (many[2], Place::SwitchDownstream),
                (many[3], Place::SwitchDownstream),
            ],
        };
        let notes = u.into_notes();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("for 20 functions") && notes[0].ends_with("and 12 more"));
        assert!(
            notes[1].ends_with(
                "root ports 0000:00:00.0; switch upstream ports 0000:01:00.0; switch downstream \
                 ports 0000:02:00.0, 0000:03:00.0"
            ),
            "{}",
            notes[1]
        );
        assert!(Unknowns::default().into_notes().is_empty());
    }
}
