//! `silica`: the command-line interface (see docs/architecture.md, "CLI contract").

mod bench;
mod common;
mod compile;
mod compile_neuron;
mod doctor;
mod generate;
mod plan;
mod quantize;
mod serve;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc keeps freed op outputs for reuse instead of unmapping them (see Cargo.toml).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Perplexity of a model on a text file (non-overlapping windows).
    Perplexity(generate::PerplexityArgs),
    /// Tokenize text with a model's tokenizer.
    Tokenize(generate::TokenizeArgs),
    /// Benchmark a model (default: the embedded preset on CPU) and write a priced report.
    Bench(bench::BenchArgs),
    /// Render reports (silica, vLLM, llmperf JSON) side by side as markdown or HTML.
    Report(bench::ReportArgs),
    /// The cheapest instance × degree × batch that meets a latency target, by projection, with
    /// the published measurements of the same model beside it.
    Plan(plan::PlanArgs),
    /// Serve a model over an OpenAI-compatible HTTP API (default: the embedded preset).
    #[command(mut_args = serve::with_env)]
    Serve(serve::ServeArgs),
    /// Lower a model's programs to XLA HLO (and NEFFs for Neuron targets) with a manifest.
    Compile(compile::CompileArgs),
    /// Quantize a Hugging Face checkpoint's weights to int8 or fp8 and write it as a
    /// compressed-tensors checkpoint (silica, transformers and vLLM read it).
    Quantize(quantize::QuantizeArgs),
    /// Train or fine-tune a model (autograd + AdamW as one program); writes a Hugging Face folder.
    Train(train::TrainArgs),
    /// Say which backends can run here, and exactly why not (--json for a JSON object).
    Doctor(doctor::DoctorArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match from_environment(&e) {
            Some(msg) => {
                eprintln!("error: {msg}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    let result = match cli.command {
        Command::Generate(a) => generate::generate(a),
        Command::Logits(a) => generate::logits(a),
        Command::Perplexity(a) => generate::perplexity(a),
        Command::Tokenize(a) => generate::tokenize(a),
        Command::Bench(a) => bench::bench(a),
        Command::Report(a) => bench::report(a),
        Command::Plan(a) => plan::plan(a),
        Command::Serve(a) => serve::serve(a),
        Command::Compile(a) => compile::compile(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Train(a) => train::train(a),
        Command::Doctor(a) => doctor::doctor(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An invalid value that came from an environment variable (`SILICA_*`), with the variable
/// named: clap's own message names only the flag, which the user never typed.
fn from_environment(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) else {
        return None;
    };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let cmd = Cli::command();
    let var = cmd.get_subcommands().find_map(|sub| {
        sub.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|v| v.to_string_lossy().into_owned())
    })?;
    // Only when the bad value is the variable's: a bad value typed on the command line keeps
    // clap's message.
    if std::env::var(&var).ok().as_deref() != Some(value.as_str()) {
        return None;
    }
    let text = e.to_string();
    let why = text
        .lines()
        .filter(|l| !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join("\n");
    let why = why.trim().trim_start_matches("error: ");
    Some(format!(
        "environment variable {var}={value:?} (it sets {arg}): {why}"
    ))
}
