//! `p2pctl`: look at a PCIe topology the way p2pdma sees it.
//!
//! - `p2pctl topo` prints the path-class matrix (as `nvidia-smi topo -m`) of the DMA-capable
//!   endpoints (`--all`: every function), `--json` the pairs report, `--dot` Graphviz, `--export` the topology file format. The topology comes from
//!   `--preset`, `--file` (p2pdma's JSON), `--nccl-xml` (an NCCL topology file) or `--sysfs [DIR]`;
//!   with none of them, from this machine's `/sys`.
//! - `p2pctl explain A B` prints the plan for device B doing DMA to memory of device A.
//! - `p2pctl rank DEVICE [--class nic]` lists the endpoints nearest to DEVICE.
//! - `p2pctl snapshot OUT` copies what `topo` reads of `/sys` to OUT, to share.
//! - `p2pctl demo` runs the seed story on the simulated machine.
//! - `p2pctl presets` lists the built-in machines.
#![forbid(unsafe_code)]

/// Writes to stdout; a closed pipe (`p2pctl topo | head`) ends the program quietly instead of
/// panicking as `print!` would.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::emit(&format!($($arg)*))
    };
}

/// [`out!`] with a newline.
macro_rules! outln {
    () => {
        $crate::emit("\n")
    };
    ($($arg:tt)*) => {
        $crate::emit(&format!("{}\n", format!($($arg)*)))
    };
}

mod explain;
mod rank;
mod snapshot;

fn emit(s: &str) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_all(s.as_bytes()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("p2pctl: error: writing output: {e}");
        std::process::exit(1);
    }
}

use clap::{Args, Parser, Subcommand};
use p2p_core::topology::{file, nccl, presets, render, sysfs, Topology};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "p2pctl",
    version,
    about = "Peer-to-peer DMA topology and planning tool"
)]
struct Cli {
    /// Log what the negotiator does to stderr: -v for INFO (refusals, invalidations, window
    /// full, pin refusals), -vv for DEBUG (every plan, establish, re-fault and drop). RUST_LOG
    /// (e.g. RUST_LOG=p2p_core=debug) takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Sends tracing events to stderr at the level `-v` asks for, or as `RUST_LOG` says. Without
/// either, no subscriber is installed and the library formats nothing.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var_os("RUST_LOG").is_some();
    if verbose == 0 && !from_env {
        return;
    }
    let filter = if from_env {
        EnvFilter::from_default_env()
    } else {
        EnvFilter::new(if verbose == 1 { "info" } else { "debug" })
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

#[derive(Subcommand)]
enum Command {
    /// Print the topology: path classes and routes for every pair of endpoints.
    Topo {
        #[command(flatten)]
        input: Input,
        /// Print the pairs report as JSON.
        #[arg(long, conflicts_with_all = ["dot", "export"])]
        json: bool,
        /// Print Graphviz DOT.
        #[arg(long, conflicts_with = "export")]
        dot: bool,
        /// Print the topology in p2pdma's JSON file format.
        #[arg(long)]
        export: bool,
        /// Show every PCI function, not only the DMA-capable endpoints (GPUs, NICs, NVMe,
        /// accelerators, other devices with a memory BAR that are not bridges).
        #[arg(long)]
        all: bool,
    },
    /// Explain the plan for IMPORTER doing DMA to memory of EXPORTER.
    Explain(explain::ExplainArgs),
    /// Rank the endpoints nearest to DEVICE: which NIC a GPU should use, which GPU an NVMe
    /// drive should feed.
    Rank(rank::RankArgs),
    /// Copy the part of this machine's /sys that `topo` reads to OUT, to share: `p2pctl topo
    /// --sysfs OUT` reads it back to the same topology.
    Snapshot(snapshot::SnapshotArgs),
    /// Run the seed story on the simulated machine: GPU memory mapped peer-to-peer by an ODP NIC,
    /// migrated to host RAM, re-faulted; a NIC without ODP refused.
    Demo {
        /// Seed of the simulated machine (same seed, same run).
        #[arg(long, default_value_t = 2016)]
        seed: u64,
        /// Print the machine's event log at the end.
        #[arg(long)]
        log: bool,
    },
    /// List the built-in topologies.
    Presets,
}

/// Where the topology comes from; with none given, this machine's `/sys`.
#[derive(Args, Clone)]
#[group(required = false, multiple = false)]
pub struct Input {
    /// A topology file in p2pdma's JSON format.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// A built-in topology (see `p2pctl presets`).
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// A Linux sysfs tree (default `/sys`: this machine).
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "/sys")]
    sysfs: Option<PathBuf>,
    /// An NCCL topology file (the XML of `NCCL_TOPO_FILE`).
    #[arg(long, value_name = "FILE")]
    nccl_xml: Option<PathBuf>,
}

impl Input {
    /// The topology, with what had to be assumed to build it printed on stderr.
    fn load(&self) -> p2p_core::Result<Topology> {
        let (topology, notes) = if let Some(path) = &self.file {
            (file::from_path(path)?, Vec::new())
        } else if let Some(name) = &self.preset {
            (presets::preset(name)?, Vec::new())
        } else if let Some(path) = &self.nccl_xml {
            let imp = nccl::from_path(path)?;
            (imp.topology, imp.notes)
        } else {
            let root = self.sysfs.clone().unwrap_or_else(|| PathBuf::from("/sys"));
            let scan = sysfs::scan(&root)?;
            (scan.topology, scan.notes)
        };
        for note in notes {
            eprintln!("p2pctl: note: {note}");
        }
        Ok(topology)
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Topo {
            input,
            json,
            dot,
            export,
            all,
        } => {
            let t = input.load()?;
            let shown = if all {
                render::Shown::All
            } else {
                render::Shown::DmaCapable
            };
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&render::pairs(&t, shown)?)?
                );
            } else if dot {
                out!("{}", render::dot(&t, shown));
            } else if export {
                outln!("{}", file::to_json(&t));
            } else {
                out!("{}", render::matrix(&t, shown)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain(args) => explain::run(&args),
        Command::Rank(args) => rank::run(&args),
        Command::Snapshot(args) => snapshot::run(&args),
        Command::Demo { seed, log } => {
            outln!("p2pdma demo on a simulated two-socket 8-GPU/8-NIC machine (seed {seed})");
            let report = backend_mock::story::run(seed, &mut |line| outln!("{line}"))?;
            if log {
                out!("{}", report.log);
            }
            if report.findings > 0 {
                return Err(format!("{} DMA sanitizer findings", report.findings).into());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Presets => {
            for (name, what) in presets::PRESETS {
                outln!("{name:<12} {what}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p2pctl: error: {e}");
            ExitCode::FAILURE
        }
    }
}
