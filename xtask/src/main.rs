//! Project automation: `cargo xtask <command>`. It orchestrates cargo, go and
//! the system's package manager; it does not replace them.

mod bench;
mod ci;
mod demo;
mod go_cache;
mod image;
mod install;
mod jaeger;
mod offsets;
mod setup;
mod uprobe_floor;
mod util;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): LLVM 22,
    /// bpf-linker, the pinned nightly with rust-src, test tools; checks Go
    /// and fills the Go module cache with the toolchains and modules the
    /// tests build with.
    Setup,
    /// What CI runs: setup, rustfmt, clippy, then every test (as root).
    Ci,
    /// Every test (as root: the tests load BPF programs into the kernel),
    /// after setup, with `GOPROXY=off` and without stopping at the first
    /// failing test binary.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build, start the bundled Go HTTP server, attach the agent, send a few
    /// requests and show their spans on the console.
    Demo,
    /// Regenerate the struct offset tables from DWARF of real builds: per Go
    /// release (agent/src/binary/offsets_table.json) and per grpc module
    /// version (agent/src/binary/module_offsets_table.json). Needs the Go
    /// module proxy.
    Offsets {
        /// Only check that the table has the newest Go release the module
        /// proxy serves (asks the proxy: not for GOPROXY=off runs).
        #[arg(long)]
        check: bool,
        /// Which tables to regenerate.
        #[arg(long, value_enum, default_value = "all")]
        tables: offsets::Tables,
    },
    /// Benchmarks; results go to BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// Build the release agent and install it as a host service: the
    /// binary in PREFIX/bin, the systemd unit, the commented
    /// /etc/agent/agent.toml (kept if present). Not root: builds, then
    /// prints the command to run as root.
    Install(install::InstallArgs),
    /// The container image without a registry: a static (musl) release
    /// binary and the CA bundle laid out as a root filesystem in
    /// target/image/rootfs, and with podman the OCI image
    /// localhost/agent:latest, saved as target/image/agent-oci.tar.
    Image,
    /// An OTLP/HTTP sink that accepts and discards every export, for
    /// benchmark scripts: prints its address, serves until killed.
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Ci => ci::run(),
        Command::Test { args } => ci::test(&args),
        Command::Demo => demo::run(),
        Command::Offsets { check: true, .. } => offsets::check(),
        Command::Offsets { tables, .. } => offsets::run(tables),
        Command::Bench { which } => bench::run(which),
        Command::Sink { listen } => bench::serve_sink_forever(listen),
        Command::Install(args) => install::run(&args),
        Command::Image => image::run(),
    }
}
