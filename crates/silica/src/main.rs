//! `silica`: the command-line interface (see DESIGN.md "CLI contract").

mod bench;
mod common;
mod generate;
mod offline;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "silica",
    version,
    about = "LLM inference and training runtime for AWS Inferentia2/Trainium, with a CPU reference backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (streams text; --json for machine-readable output).
    Generate(generate::GenerateArgs),
    /// Write the logits of every position for given token ids to a safetensors file.
    Logits(generate::LogitsArgs),
    /// Tokenize text with a model's tokenizer.
    Tokenize(generate::TokenizeArgs),
    /// Benchmark a model (default: the embedded preset on CPU) and write a priced report.
    Bench(bench::BenchArgs),
    /// Render reports (silica, vLLM, llmperf JSON) side by side as markdown or HTML.
    Report(bench::ReportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::generate(a),
        Command::Logits(a) => generate::logits(a),
        Command::Tokenize(a) => generate::tokenize(a),
        Command::Bench(a) => bench::bench(a),
        Command::Report(a) => bench::report(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
