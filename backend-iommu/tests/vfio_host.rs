//! The VFIO path's errors on a machine without VFIO (the real path runs in QEMU:
//! scripts/vm-test.sh): each names the call, what it was applied to, and the errno.

use backend_iommu::vfio::{VfioContainer, VfioGroup};
use std::path::Path;

#[test]
fn errors_name_the_call_the_object_and_the_errno() {
    match VfioContainer::open() {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("/dev/vfio/vfio") && msg.contains("os error"),
                "{msg}"
            );
        }
        Ok(c) => {
            // A machine with VFIO: without a group there is no IOMMU to ask.
            let msg = c.info().unwrap_err().to_string();
            assert!(
                msg.contains("VFIO_IOMMU_GET_INFO") && msg.contains("no group"),
                "{msg}"
            );
            let msg = c
                .map_dma(0x1000, 0x1000, 0x1000, p2p_core::Access::READ)
                .unwrap_err()
                .to_string();
            assert!(msg.contains("VFIO_IOMMU_MAP_DMA"), "{msg}");
        }
    }
    let dev = "0000:00:1f.7".parse().unwrap();
    let msg = VfioGroup::id_of(Path::new("/nonexistent-sys"), dev)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("/nonexistent-sys/bus/pci/devices/0000:00:1f.7/iommu_group"),
        "{msg}"
    );
    let msg = VfioGroup::open(987_654).unwrap_err().to_string();
    assert!(
        msg.contains("/dev/vfio/987654") && msg.contains("os error"),
        "{msg}"
    );
}
