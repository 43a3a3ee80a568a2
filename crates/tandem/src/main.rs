//! `tandem`: the coalition points exchange in one binary.

mod bench;
mod cli;
mod keys;
mod partner_sim;
mod serve;
mod settings;

use clap::Parser;

fn main() -> std::process::ExitCode {
    cli::Cli::parse().run()
}
