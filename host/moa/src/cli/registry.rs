//! `moa registry push|pull`: an app (spin.toml and every file it names) as an OCI artifact in a
//! registry, as `spin registry` does; `moa up --from REF` runs one (see [`pull_app`]).

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use moa_registry::{AppPackage, RegistryOptions};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct RegistryArgs {
    #[command(subcommand)]
    pub command: RegistryCommand,
}

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Package the app and push it: `moa registry push 127.0.0.1:5000/shop:1.0`.
    ///
    /// The artifact holds spin.toml, each component's wasm file and every file a component's
    /// `files` mount, all from under the manifest's directory. Layers the registry already has
    /// are not uploaded again. Prints the digest to pin deployments to (`REPOSITORY@sha256:...`).
    Push(PushArgs),
    /// Fetch an app into the local cache (digests checked) and print its manifest's path.
    Pull(PullArgs),
}

/// Registry access, shared by push, pull and `moa up --from`.
#[derive(Args, Debug, Clone, Default)]
pub struct AccessArgs {
    /// Plain HTTP to the registry (loopback registries always use it).
    #[arg(short = 'k', long, env = "MOA_REGISTRY_INSECURE")]
    pub insecure: bool,
    /// Where pulled apps are cached [default: $XDG_CACHE_HOME/moa/registry or ~/.cache/moa/registry].
    #[arg(long, value_name = "DIR", env = "MOA_REGISTRY_CACHE")]
    pub registry_cache: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Where to push: HOST[:PORT]/REPOSITORY[:TAG].
    pub reference: String,
    /// The app's manifest, or a directory holding spin.toml.
    #[arg(short = 'f', long = "from", value_name = "MANIFEST")]
    pub from: Option<PathBuf>,
    /// Run `moa build` first.
    #[arg(long)]
    pub build: bool,
    #[command(flatten)]
    pub access: AccessArgs,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// What to pull: HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST].
    pub reference: String,
    #[command(flatten)]
    pub access: AccessArgs,
}

/// Credentials come from the environment only: `MOA_REGISTRY_USERNAME` and
/// `MOA_REGISTRY_PASSWORD` (for ECR: `AWS` and `aws ecr get-login-password`).
fn options(access: &AccessArgs) -> RegistryOptions {
    RegistryOptions {
        insecure: access.insecure,
        username: std::env::var("MOA_REGISTRY_USERNAME").ok(),
        password: std::env::var("MOA_REGISTRY_PASSWORD").ok(),
    }
}

fn cache_dir(access: &AccessArgs) -> Result<PathBuf> {
    if let Some(dir) = &access.registry_cache {
        return Ok(dir.clone());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("no cache directory: set MOA_REGISTRY_CACHE (or HOME)")?;
    Ok(base.join("moa").join("registry"))
}

fn block_on<T>(work: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(work))
}

pub fn run(args: RegistryArgs) -> Result<()> {
    match args.command {
        RegistryCommand::Push(push) => run_push(push),
        RegistryCommand::Pull(pull) => {
            let manifest = pull_app(&pull.reference, &pull.access)?;
            println!("{}", manifest.display());
            Ok(())
        }
    }
}

fn run_push(args: PushArgs) -> Result<()> {
    moa_registry::parse_reference(&args.reference)?;
    let manifest_path = super::manifest_path(args.from.as_deref())?;
    if args.build {
        super::build::run(&super::build::BuildArgs {
            from: Some(manifest_path.clone()),
            component: Vec::new(),
        })?;
    }
    let app = moa_manifest::load(
        &manifest_path,
        moa_manifest::HostKeys {
            component_keys: &moa::state::manifest_keys(),
            trigger_kinds: &moa::triggers::trigger_kinds(),
        },
    )?;
    let (components, files) = moa::app::app_files(&app)?;
    let manifest = manifest_path
        .file_name()
        .map(PathBuf::from)
        .context("the manifest path has no file name")?;
    let package = AppPackage {
        name: app.manifest.name.clone(),
        version: app.manifest.version.clone(),
        base_dir: app.base_dir.clone(),
        manifest,
        components,
        files,
    };
    eprintln!(
        "Pushing {} ({} component(s), {} other file(s)) to {}",
        package.name,
        package.components.len(),
        package.files.len(),
        args.reference
    );
    let pushed = block_on(moa_registry::push(
        &package,
        &args.reference,
        &options(&args.access),
        |line| eprintln!("  {line}"),
    ))??;
    let repository = args
        .reference
        .rsplit_once(':')
        .filter(|(repo, tag)| !tag.contains('/') && repo.contains('/'))
        .map_or(args.reference.as_str(), |(repo, _)| repo);
    eprintln!(
        "Pushed {} file(s) in {} layer(s), {} uploaded ({} bytes in layers)",
        pushed.files, pushed.layers, pushed.uploaded, pushed.bytes
    );
    println!("{repository}@{}", pushed.digest);
    Ok(())
}

/// Pulls `reference` into the cache and returns the manifest to run.
pub fn pull_app(reference: &str, access: &AccessArgs) -> Result<PathBuf> {
    let cache = cache_dir(access)?;
    let started = std::time::Instant::now();
    let pulled = block_on(moa_registry::pull(
        reference,
        &cache,
        &options(access),
        |line| eprintln!("  {line}"),
    ))??;
    eprintln!(
        "Pulled {reference} ({}): {} file(s), {} bytes fetched{} in {:.2}s",
        pulled.digest,
        pulled.files,
        pulled.fetched,
        if pulled.cached {
            ", from the cache"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
    Ok(pulled.manifest)
}

/// Whether `from` (given to `moa up --from`) names a registry app rather than a local file: it
/// does not exist here and reads as HOST/REPOSITORY.
pub fn is_registry_reference(from: &Path) -> bool {
    !from.exists()
        && from
            .to_str()
            .is_some_and(|s| moa_registry::parse_reference(s).is_ok())
}
