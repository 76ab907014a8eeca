//! Every crate carries what a package needs: metadata, a README and both licence texts
//! (`cargo package -p <crate> --list` ships them).

use std::path::Path;

const CRATES: [&str; 6] = [
    ".",
    "p2p-core",
    "backend-iommu",
    "backend-passthrough",
    "backend-mock",
    "p2pctl",
];

#[test]
fn every_crate_has_metadata_readme_and_licences() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for krate in CRATES {
        let dir = root.join(krate);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let package = manifest
            .split("[package]")
            .nth(1)
            .and_then(|p| p.split("\n[").next())
            .unwrap_or_else(|| panic!("{krate}: no [package]"));
        for key in [
            "description =",
            "license",
            "repository",
            "readme = \"README.md\"",
            "keywords =",
            "categories =",
        ] {
            assert!(package.contains(key), "{krate}/Cargo.toml lacks {key}");
        }
        for file in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
            let text = std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("{krate}/{file}: {e}"));
            assert!(text.len() > 100, "{krate}/{file} is nearly empty");
        }
    }
    let changelog = std::fs::read_to_string(root.join("CHANGELOG.md")).unwrap();
    assert!(changelog.contains("## [Unreleased]"));
}
