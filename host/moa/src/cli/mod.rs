//! The subcommands of the `moa` binary, one file each, plus the manifest lookup they share.

pub mod build;
pub mod job;
pub mod new;
pub mod registry;
pub mod up;

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// Resolves `-f/--from`: a manifest file, or a directory holding `spin.toml`; default `./spin.toml`.
pub fn manifest_path(from: Option<&Path>) -> Result<PathBuf> {
    let path = match from {
        None => PathBuf::from("spin.toml"),
        Some(p) if p.is_dir() => p.join("spin.toml"),
        Some(p) => p.to_path_buf(),
    };
    if !path.exists() {
        bail!(
            "no manifest at {}\n  help: run moa in the app's directory, pass `-f path/to/spin.toml`, or create an app with `moa new http-rust <name>`",
            path.display()
        );
    }
    Ok(path)
}
