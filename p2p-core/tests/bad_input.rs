//! Bad input to the sysfs and file readers ends in a typed error that names the file (and the
//! line where the input has lines), never in a panic or a stack overflow (issue 10, item 11).

mod fake_sysfs;

use fake_sysfs::{Dev, FakeSysfs};
use p2p_core::topology::limits::{MAX_CONFIG_BYTES, MAX_DEPTH, MAX_FILE_BYTES};
use p2p_core::topology::{file, nccl, sysfs};
use p2p_core::Error;

const NVIDIA: u16 = 0x10de;

/// A host bridge with one GPU whose `resource` file says `line`.
fn gpu_with_resource(name: &str, line: &str) -> (FakeSysfs, std::path::PathBuf) {
    let fs = FakeSysfs::new(name);
    let hb = fs.host_bridge(0, 0);
    let dev = fs.device(
        &hb,
        &Dev::endpoint("0000:00:02.0", NVIDIA, 0x20b0, 0x030200),
    );
    std::fs::write(dev.join("resource"), format!("{line}\n")).unwrap();
    (fs, dev)
}

#[test]
fn a_region_of_2_pow_64_bytes_is_an_error_naming_file_and_line() {
    // `end - start + 1` overflowed here: p2pctl topo --sysfs exited 101.
    for flags in ["0x0", "0x0000000000040200"] {
        let line = format!("0x0 0xffffffffffffffff {flags}");
        let (fs, dev) = gpu_with_resource("res-overflow", &line);
        match sysfs::scan(&fs.root) {
            // Not a memory region: nothing to size, nothing to refuse.
            Ok(scan) if flags == "0x0" => {
                assert!(scan.topology.endpoints().all(|(_, e)| e.bars.is_empty()))
            }
            Err(Error::Sysfs { path, message }) => {
                assert_eq!(path, dev.join("resource").display().to_string());
                assert!(
                    message.contains("line 1") && message.contains("2^64"),
                    "{message}"
                );
            }
            other => panic!("{line}: {other:?}"),
        }
    }
}

#[test]
fn a_bridge_chain_deeper_than_the_limit_is_refused_where_it_goes_too_deep() {
    let fs = FakeSysfs::new("deep");
    let mut dir = fs.host_bridge(0, 0);
    let levels = MAX_DEPTH as usize + 8;
    let mut too_deep = None;
    for i in 0..levels {
        let addr = format!("0000:{:02x}:00.0", i + 1);
        if i == MAX_DEPTH as usize {
            too_deep = Some(dir.clone());
        }
        dir = fs.device(&dir, &Dev::port(&addr, 0x1b21, 0x1080, 7));
    }
    let err = sysfs::scan(&fs.root).unwrap_err();
    assert_eq!(
        err,
        Error::InputLimit {
            path: too_deep.unwrap().display().to_string(),
            line: None,
            what: "nesting depth",
            limit: u64::from(MAX_DEPTH),
        }
    );
}

#[test]
fn a_directory_linking_to_itself_ends_in_an_error() {
    let fs = FakeSysfs::new("loop");
    let hb = fs.host_bridge(0, 0);
    let bridge = fs.device(&hb, &Dev::port("0000:00:01.0", 0x1b21, 0x1080, 7));
    std::os::unix::fs::symlink(".", bridge.join("0000:01:00.0")).unwrap();
    let err = sysfs::scan(&fs.root).unwrap_err();
    assert!(
        matches!(err, Error::Sysfs { .. } | Error::InputLimit { .. }),
        "{err:?}"
    );
}

#[test]
fn oversized_files_are_refused_unread() {
    let (fs, dev) = gpu_with_resource("big", "0x0 0x0 0x0");
    let config = dev.join("config");
    std::fs::File::create(&config)
        .unwrap()
        .set_len(MAX_CONFIG_BYTES + 1)
        .unwrap();
    let err = sysfs::scan(&fs.root).unwrap_err();
    assert!(
        matches!(&err, Error::InputLimit { path, .. } if *path == config.display().to_string()),
        "{err:?}"
    );
    std::fs::remove_file(&config).unwrap();
    // sysfs text attributes: a class file of a megabyte.
    std::fs::write(dev.join("class"), vec![b'0'; 1 << 20]).unwrap();
    let err = sysfs::scan(&fs.root).unwrap_err();
    assert!(matches!(err, Error::InputLimit { .. }), "{err:?}");

    // Topology files: a sparse file past the cap is refused before a byte is read.
    let big = fs.root.join("big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    for err in [
        file::from_path(&big).unwrap_err(),
        nccl::from_path(&big).unwrap_err(),
    ] {
        assert_eq!(
            err,
            Error::InputLimit {
                path: big.display().to_string(),
                line: None,
                what: "file size in bytes",
                limit: MAX_FILE_BYTES,
            }
        );
    }
}
