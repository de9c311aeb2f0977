//! The `moa` command line: `up` serves an app, `build` builds its components, `new` starts a
//! component from a template, `job` runs batch jobs, `registry` pushes and pulls apps.
//! Errors print as `Error: ...` with a hint, and exit non-zero.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cli;

/// mimalloc instead of glibc's allocator: the request path allocates and frees small objects on
/// every request from several threads, where glibc spent about 15% of the host's CPU (bench-http).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// moa runs WebAssembly components described by a Spin manifest (spin.toml).
///
/// Typical use: `moa new http-rust hello`, `moa build`, `moa up`.
#[derive(Parser)]
#[command(name = "moa", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the app's triggers (HTTP) from its spin.toml.
    Up(cli::up::UpArgs),
    /// Run every component's `build.command` from spin.toml.
    Build(cli::build::BuildArgs),
    /// Create a new component from a template (http-rust, http-wit).
    New(cli::new::NewArgs),
    /// Run batch jobs (`[[trigger.job]]`) and see their executions.
    Job(cli::job::JobArgs),
    /// Push apps to an OCI registry and pull them (`moa up --from REF` runs one).
    Registry(cli::registry::RegistryArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => cli::up::run(args),
        Command::Build(args) => cli::build::run(&args).map(|_| ()),
        Command::New(args) => cli::new::run(&args),
        Command::Job(args) => cli::job::run(args),
        Command::Registry(args) => cli::registry::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
