//! PCI addresses in lspci form (`0000:3b:00.0`).

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// A PCI function address: segment (domain), bus, device, function.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddr {
    /// PCI segment (domain). 32 bits, as Linux and lspci have them: VMD and Hyper-V domains
    /// are numbered above 0xffff (`10000:00:04.0`).
    pub segment: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl PciAddr {
    /// Builds an address, checking the device (≤ 31) and function (≤ 7) fields.
    pub fn new(segment: u32, bus: u8, device: u8, function: u8) -> Result<Self> {
        if device > 31 {
            return Err(Error::InvalidPciAddr {
                input: format!("{segment:04x}:{bus:02x}:{device:02x}.{function}"),
                reason: "device number above 31",
            });
        }
        if function > 7 {
            return Err(Error::InvalidPciAddr {
                input: format!("{segment:04x}:{bus:02x}:{device:02x}.{function}"),
                reason: "function number above 7",
            });
        }
        Ok(Self {
            segment,
            bus,
            device,
            function,
        })
    }

    /// The `devfn` byte (device << 3 | function), as Linux keys its caches.
    pub fn devfn(self) -> u8 {
        self.device << 3 | self.function
    }
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

impl fmt::Debug for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PciAddr {
    type Err = Error;

    /// Parses `SSSS:BB:DD.F` or the short `BB:DD.F` (segment 0), hex digits in either case.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidPciAddr {
            input: s.to_owned(),
            reason,
        };
        let (head, func) = s
            .rsplit_once('.')
            .ok_or_else(|| bad("missing '.function'"))?;
        let parts: Vec<&str> = head.split(':').collect();
        let (seg, bus, dev) = match parts.as_slice() {
            [seg, bus, dev] => (*seg, *bus, *dev),
            [bus, dev] => ("0", *bus, *dev),
            _ => return Err(bad("expected segment:bus:device.function")),
        };
        let field = |text: &str, max_digits: usize, what| {
            if text.is_empty() || text.len() > max_digits {
                return Err(bad(what));
            }
            if !text.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad("fields must be hexadecimal digits"));
            }
            u32::from_str_radix(text, 16).map_err(|_| bad(what))
        };
        let segment = field(seg, 8, "segment must be 1 to 8 hex digits")?;
        let bus = field(bus, 2, "bus must be 1 or 2 hex digits")?;
        let device = field(dev, 2, "device must be 1 or 2 hex digits")?;
        let function = field(func, 1, "function must be one digit 0-7")?;
        if device > 31 {
            return Err(bad("device number above 31"));
        }
        if function > 7 {
            return Err(bad("function number above 7"));
        }
        Ok(Self {
            segment,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for PciAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for PciAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_lspci_form() {
        let a: PciAddr = "0000:3b:00.0".parse().unwrap();
        assert_eq!(a, PciAddr::new(0, 0x3b, 0, 0).unwrap());
        assert_eq!(a.to_string(), "0000:3b:00.0");
        let b: PciAddr = "3B:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:3b:1f.7");
        assert_eq!(b.devfn(), 0xff);
        let vmd: PciAddr = "10000:e1:00.0".parse().unwrap();
        assert_eq!(
            (vmd.segment, vmd.to_string()),
            (0x10000, "10000:e1:00.0".into())
        );
        assert!("100000000:00:00.0"
            .parse::<PciAddr>()
            .unwrap_err()
            .to_string()
            .contains("segment"));
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        for (input, needle) in [
            ("", "function"),
            ("0000:3b:00", "function"),
            ("0000:3b:20.0", "above 31"),
            ("0000:3b:00.8", "above 7"),
            ("0000:3g:00.0", "hexadecimal"),
            ("0000:3b:00.00", "one digit"),
            ("0:0:0:0.0", "expected"),
            ("0000:+3:00.0", "hexadecimal"),
            ("0000:123:00.0", "bus"),
        ] {
            let err = input.parse::<PciAddr>().unwrap_err();
            assert!(
                matches!(&err, Error::InvalidPciAddr { input: i, .. } if i == input),
                "{input}: {err}"
            );
            assert!(err.to_string().contains(needle), "{input}: {err}");
        }
        assert!(PciAddr::new(0, 0, 32, 0).is_err());
        assert!(PciAddr::new(0, 0, 0, 8).is_err());
    }

    proptest! {
        #[test]
        fn print_parse_round_trip(seg: u32, bus: u8, dev in 0u8..32, func in 0u8..8) {
            let a = PciAddr::new(seg, bus, dev, func).unwrap();
            prop_assert_eq!(a.to_string().parse::<PciAddr>().unwrap(), a);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,16}") {
            let _ = s.parse::<PciAddr>();
        }
    }
}
