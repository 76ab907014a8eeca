//! `p2pctl -v` / `RUST_LOG` show what the negotiator does; without them, nothing is logged.

use std::process::{Command, Output};

fn demo(verbose: &[&str], rust_log: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_p2pctl"));
    c.args(verbose).arg("demo").env_remove("RUST_LOG");
    if let Some(v) = rust_log {
        c.env("RUST_LOG", v);
    }
    c.output().expect("run p2pctl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn verbose_logs_invalidations_and_refusals_with_reasons() {
    let o = demo(&["-v"], None);
    assert!(o.status.success());
    let log = stderr(&o);
    assert!(log.contains("INFO") && log.contains("invalidated"), "{log}");
    assert!(
        log.contains("refused") && log.contains("no ODP"),
        "a refusal says why: {log}"
    );
    assert!(!log.contains("DEBUG"), "-v is INFO: {log}");
}

#[test]
fn very_verbose_and_rust_log_show_establish_and_refault() {
    for o in [demo(&["-vv"], None), demo(&[], Some("p2p_core=debug"))] {
        let log = stderr(&o);
        for what in [
            "established",
            "strategy=direct",
            "segments=",
            "re-faulted",
            "dropped",
        ] {
            assert!(log.contains(what), "{what} missing: {log}");
        }
    }
}

#[test]
fn quiet_by_default() {
    let o = demo(&[], None);
    assert!(o.status.success());
    assert_eq!(stderr(&o), "");
}
