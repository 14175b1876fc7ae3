//! `lowband`: the gateway binary.
use clap::{Parser, Subcommand};

mod codec_cmd;

/// lowband: Matrix over links as slow as 100 bit/s.
#[derive(Debug, Parser)]
#[command(name = "lowband", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Translate Matrix JSON bodies to and from lowband's CBOR link form; measure corpora.
    #[command(subcommand)]
    Codec(codec_cmd::CodecCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Codec(cmd) => codec_cmd::run(cmd),
    }
}
