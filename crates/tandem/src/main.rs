//! `tandem`: the coalition points exchange in one binary.

mod bench;
mod bench_exchange;
mod cli;
mod coalition;
mod demo;
mod keys;
mod partner_sim;
mod serve;
mod settings;

use clap::Parser;

fn main() -> std::process::ExitCode {
    cli::Cli::parse().run()
}
