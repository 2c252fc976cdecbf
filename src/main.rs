//! The `llmedge` binary: parse the command line and hand over to the library.

use clap::Parser;
use tracing_subscriber::EnvFilter;

// jemalloc: fewer, cheaper allocations on the many small per-request buffers, and memory handed
// back after bursts of streams (glibc's arenas kept it); Pingora's own examples use it
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // Pingora logs through the `log` crate; tracing-subscriber's log bridge collects it too
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Pingora's debug logs print whole upstream request headers, including the pool's key
    let filter = ["pingora_proxy=info", "pingora_core=info"]
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, EnvFilter::add_directive);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = llmedge::cli::Cli::parse();
    let code = llmedge::run::main(cli, || std::process::exit(0));
    std::process::exit(code);
}
