//! `agent`: parses the command line and hands over to a command.

mod cli;
mod commands;
mod config_file;

use std::process::ExitCode;

fn init_logging(log: cli::LogArgs) {
    let level = if log.quiet {
        log::LevelFilter::Warn
    } else {
        match log.verbose {
            0 => log::LevelFilter::Info,
            1 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    };
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module("agent", level)
        .parse_env("AGENT_LOG")
        .format_target(false)
        .format_timestamp_millis()
        .init();
}

fn main() -> ExitCode {
    let cli = match config_file::parse(std::env::args_os().collect(), |name| {
        std::env::var(name).ok()
    }) {
        Ok(cli) => cli,
        Err(config_file::ParseError::Clap(err)) => err.exit(),
        Err(config_file::ParseError::File(err)) => {
            eprintln!("agent: {err}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(cli.log);
    agent::export::tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("agent: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
