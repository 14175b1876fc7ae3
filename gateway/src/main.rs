//! `lowband`: the gateway binary.
use clap::{Parser, Subcommand};

/// lowband: Matrix over links as slow as 100 bit/s.
#[derive(Debug, Parser)]
#[command(name = "lowband", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {}
}
