//! Messages a person reads: exporters named by their device, findings and faults in words with
//! hex addresses.

mod common;

use backend_mock::{FindingKind, Machine};
use common::*;
use p2pdma::core::topology::presets;
use p2pdma::prelude::*;

#[test]
fn errors_name_the_device_not_an_id() {
    let m = Machine::new(presets::workstation().unwrap(), &collect(161)).unwrap();
    // A GPU whose BAR window holds one page: a second grant does not fit.
    let gpu = m.gpu(a(GPU), 8 * 4096, 1, MemoryKind::MOVABLE).unwrap();
    let held = gpu.export(range(0, 4096), false).unwrap();
    let full = gpu.export(range(4096, 4096), false).unwrap_err();
    let text = full.to_string();
    assert!(text.starts_with("GPU 0000:03:00.0: window full"), "{text}");
    assert!(!text.contains("exporter#"), "{text}");
    gpu.release(&held).unwrap();
    // An exporter made without a name still says which one.
    assert_eq!(ExporterId(12345).to_string(), "exporter#12345");
    assert!(m.finish().is_empty());
}

#[test]
fn findings_and_faults_print_as_words_with_hex_addresses() {
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(162)).unwrap();
    let p = pair(&m, 1, odp());
    let map = p.map(&m, 0, 0x1000, RW).unwrap();
    let seg = map.segments().unwrap()[0];
    drop(map);
    let fault = p.nic.dma_write(seg.addr, b"late").unwrap_err().to_string();
    assert!(fault.contains(&format!("{:#x}", seg.addr.0)), "{fault}");
    let findings = m.finish();
    assert_eq!(findings[0].kind, FindingKind::AfterUnmap);
    let text = findings[0].to_string();
    assert!(
        text.starts_with(&format!(
            "DMA after unmap: device {NIC} address {:#x} len 0x4",
            seg.addr.0
        )),
        "{text}"
    );
}

/// A mapping's Debug names the mapping, not the registry and machine behind it.
#[test]
fn a_mapping_debugs_short() {
    let m = Machine::new(presets::workstation().unwrap(), &collect(163)).unwrap();
    let p = pair(&m, 1, odp());
    let map = p.map(&m, 0, 0x1000, RW).unwrap();
    let text = format!("{map:?}");
    assert!(
        text.starts_with(&format!("Mapping {{ id: {}", map.id())) && text.len() < 200,
        "{text}"
    );
    drop(map);
    assert!(m.finish().is_empty());
}
