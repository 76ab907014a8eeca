//! `p2pctl rank`: the endpoints nearest to a device, as p2pdma would route DMA between them.

use crate::Input;
use clap::{Args, ValueEnum};
use p2p_core::topology::rank::Ranked;
use p2p_core::topology::{DeviceClass, Route};
use p2p_core::PciAddr;
use std::process::ExitCode;

/// The classes `--class` accepts.
#[derive(Clone, Copy, ValueEnum)]
enum ClassArg {
    Gpu,
    Nic,
    Nvme,
    Accelerator,
}

impl From<ClassArg> for DeviceClass {
    fn from(c: ClassArg) -> Self {
        match c {
            ClassArg::Gpu => DeviceClass::Gpu,
            ClassArg::Nic => DeviceClass::Nic,
            ClassArg::Nvme => DeviceClass::Nvme,
            ClassArg::Accelerator => DeviceClass::Accelerator,
        }
    }
}

/// Arguments of `p2pctl rank`.
#[derive(Args)]
pub struct RankArgs {
    /// The device whose peers are ranked (e.g. a GPU, to choose its NIC), in lspci form.
    device: PciAddr,
    /// Rank only peers of this class.
    #[arg(long, value_enum)]
    class: Option<ClassArg>,
    #[command(flatten)]
    input: Input,
}

/// Prints the ranking, nearest first; a peer without a route is listed last with the reason.
pub fn run(a: &RankArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let t = a.input.load()?;
    let ranked = t.rank_peers(a.device, a.class.map(DeviceClass::from))?;
    outln!(
        "Peers of {} ({}), nearest first (path class, then route, then p2pdma distance):",
        t.display_name(a.device),
        a.device
    );
    let names: Vec<String> = ranked.iter().map(|r| t.display_name(r.device)).collect();
    let w = names.iter().map(String::len).max().unwrap_or(0).max(4);
    outln!(
        "  {:>2}  {:<12}  {:<w$}  {:<11}  {:<4}  {:<11}  distance",
        "#",
        "device",
        "name",
        "class",
        "path",
        "route"
    );
    for (i, (r, name)) in ranked.iter().zip(&names).enumerate() {
        outln!("  {}", row(i + 1, r, name, w));
    }
    if ranked.is_empty() {
        outln!(
            "  (no other endpoint{})",
            if a.class.is_some() {
                " of that class"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn row(n: usize, r: &Ranked, name: &str, w: usize) -> String {
    let tail = match &r.route {
        Route::Unsupported(why) => format!("-         ({why})"),
        _ => r.distance.to_string(),
    };
    format!(
        "{n:>2}  {:<12}  {name:<w$}  {:<11}  {:<4}  {:<11}  {tail}",
        r.device.to_string(),
        r.class.name(),
        r.path.name(),
        r.route.name()
    )
}
