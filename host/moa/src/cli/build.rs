//! `moa build`: runs each component's `build.command` (through `sh -c`, in its `workdir`) with
//! a `[i/n]` progress line per component, streaming the command's output.

use anyhow::{Context as _, Result, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The app's manifest, or a directory holding spin.toml.
    #[arg(short = 'f', long = "from", value_name = "MANIFEST")]
    pub from: Option<PathBuf>,

    /// Build only these components (repeatable); default: all that have a build command.
    #[arg(short = 'c', long = "component-id", value_name = "ID")]
    pub component: Vec<String>,
}

/// Builds the components; returns how many were built.
pub fn run(args: &BuildArgs) -> Result<usize> {
    let path = super::manifest_path(args.from.as_deref())?;
    let app = moa_manifest::load(
        &path,
        moa_manifest::HostKeys {
            component_keys: &moa::state::manifest_keys(),
            trigger_kinds: &moa::triggers::trigger_kinds(),
        },
    )?;
    for id in &args.component {
        if !app.manifest.components.contains_key(id) {
            let known = app
                .manifest
                .components
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            bail!(
                "no component `{id}` in {}\n  help: components are: {known}",
                path.display()
            );
        }
    }
    let to_build: Vec<_> = app
        .manifest
        .components
        .values()
        .filter(|c| args.component.is_empty() || args.component.contains(&c.id))
        .filter_map(|c| c.build.as_ref().map(|b| (c, b)))
        .collect();
    if to_build.is_empty() {
        println!(
            "No component in {} has a [component.<id>.build] command; nothing to build.",
            path.display()
        );
        return Ok(0);
    }
    let started = Instant::now();
    let total = to_build.len();
    for (index, (component, build)) in to_build.iter().enumerate() {
        let workdir = match &build.workdir {
            Some(dir) => app.base_dir.join(dir),
            None => app.base_dir.clone(),
        };
        for command in &build.commands {
            println!(
                "[{}/{total}] Building component `{}`: {command}",
                index + 1,
                component.id
            );
            let step = Instant::now();
            let status = Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&workdir)
                .status()
                .with_context(|| format!("cannot run `{command}` in {}", workdir.display()))?;
            if !status.success() {
                bail!(
                    "component `{}` failed to build: `{command}` exited with {}\n  help: fix the errors above, then run `moa build -c {}` again",
                    component.id,
                    status
                        .code()
                        .map_or("a signal".into(), |c| format!("code {c}")),
                    component.id
                );
            }
            println!(
                "[{}/{total}] Built `{}` in {:.1}s",
                index + 1,
                component.id,
                step.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "Finished building {total} component(s) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(total)
}
