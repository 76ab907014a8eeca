//! `p2pctl rank`: the endpoints nearest to a device, as p2pdma would route DMA between them;
//! given several devices, the providers that serve all of them best (Linux's
//! `pci_p2pmem_find_many`: the summed distance, the worst route).

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
    /// The device whose peers are ranked (e.g. a GPU, to choose its NIC), in lspci form;
    /// several: rank the providers (other endpoints) for memory all of them use.
    #[arg(required = true, num_args = 1..)]
    devices: Vec<PciAddr>,
    /// Rank only peers of this class.
    #[arg(long, value_enum)]
    class: Option<ClassArg>,
    #[command(flatten)]
    input: Input,
}

/// Prints the ranking, nearest first; a peer without a route is listed last with the reason.
pub fn run(a: &RankArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let t = a.input.load()?;
    let class = a.class.map(DeviceClass::from);
    let mut ranked = match a.devices.as_slice() {
        [one] => {
            outln!(
                "Peers of {} ({}), nearest first (path class, then route, then p2pdma distance):",
                t.display_name(*one),
                one
            );
            t.rank_peers(*one, class)?
        }
        clients => {
            let providers: Vec<PciAddr> = t
                .endpoints()
                .filter(|(p, e)| !clients.contains(p) && class.is_none_or(|c| c == e.class))
                .map(|(p, _)| p)
                .collect();
            let names: Vec<String> = clients.iter().map(|&c| t.display_name(c)).collect();
            outln!(
                "Providers for {}, best first (worst path class and route over them, then the \
                 summed p2pdma distance):",
                names.join(", ")
            );
            t.rank_providers(&providers, clients)?
        }
    };
    // As topo shows them: the host bridge's own function and other non-DMA functions are no
    // one's peer.
    ranked.retain(|r| t.endpoint(r.device).is_ok_and(|e| e.is_dma_capable()));
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
