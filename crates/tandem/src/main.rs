//! `tandem`: the coalition points exchange in one binary.

mod bench;
mod bench_exchange;
mod bench_settlement;
mod cli;
mod coalition;
mod demo;
mod keys;
mod ops;
mod partner_sim;
mod reconcile_cli;
mod serve;
mod settings;
mod settlement_cli;

use clap::Parser;

/// mimalloc rather than the system allocator: the server builds and frees many short-lived
/// buffers on every batch (rows, requests, answers), and under that load glibc's allocator spent
/// more of the server's time consolidating and splitting its free lists than the server spent
/// on its own work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::Cli::parse().run()
}
