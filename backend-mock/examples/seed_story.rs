//! The seed story on the simulated machine: `cargo run -p backend-mock --example seed_story [SEED]`.

fn main() -> std::process::ExitCode {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2016);
    println!("seed {seed}");
    match backend_mock::story::run(seed, &mut |line| println!("{line}")) {
        Ok(r) if r.findings == 0 => std::process::ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("{} sanitizer findings:\n{}", r.findings, r.log);
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("story failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
