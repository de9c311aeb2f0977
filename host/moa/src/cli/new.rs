//! `moa new <template> <name>`: writes a ready-to-build component project (Cargo.toml, source,
//! spin.toml) from a template compiled into the binary.

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Template {
    /// HTTP component with spin-sdk 7 (wasi:http@0.3, async Rust).
    HttpRust,
    /// HTTP component with plain wit-bindgen on the WASIp2 proxy world (wasi:http@0.2).
    HttpWit,
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// Which template to start from.
    #[arg(value_enum)]
    pub template: Template,

    /// Name of the new component (kebab-case, e.g. `order-api`).
    pub name: String,

    /// Directory to create (default: ./<name>).
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
}

type Files = &'static [(&'static str, &'static str)];

const HTTP_RUST: Files = &[
    (
        "Cargo.toml",
        include_str!("../../templates/http-rust/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/http-rust/src/lib.rs"),
    ),
    (
        "spin.toml",
        include_str!("../../templates/http-rust/spin.toml"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/http-rust/.gitignore"),
    ),
];

const HTTP_WIT: Files = &[
    (
        "Cargo.toml",
        include_str!("../../templates/http-wit/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/http-wit/src/lib.rs"),
    ),
    (
        "spin.toml",
        include_str!("../../templates/http-wit/spin.toml"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/http-wit/.gitignore"),
    ),
    (
        "wit/world.wit",
        include_str!("../../../../wit/guest/wasi-http-proxy-0.2/world.wit"),
    ),
    (
        "wit/deps/cli.wit",
        include_str!("../../../../wit/guest/wasi-http-proxy-0.2/deps/cli.wit"),
    ),
    (
        "wit/deps/clocks.wit",
        include_str!("../../../../wit/guest/wasi-http-proxy-0.2/deps/clocks.wit"),
    ),
    (
        "wit/deps/filesystem.wit",
        include_str!("../../../../wit/guest/wasi-http-proxy-0.2/deps/filesystem.wit"),
    ),
    (
        "wit/deps/http.wit",
        include_str!("../../../../wit/guest/wasi-http-proxy-0.2/deps/http.wit"),
    ),
    (
        "wit/deps/io.wit",
        include_str!("../../../../wit/guest/wasi-http-proxy-0.2/deps/io.wit"),
    ),
    (
        "wit/deps/random.wit",
        include_str!("../../../../wit/guest/wasi-http-proxy-0.2/deps/random.wit"),
    ),
    (
        "wit/deps/sockets.wit",
        include_str!("../../../../wit/guest/wasi-http-proxy-0.2/deps/sockets.wit"),
    ),
];

pub fn run(args: &NewArgs) -> Result<()> {
    let name = &args.name;
    if !is_kebab_case(name) {
        bail!(
            "`{name}` is not a valid component name\n  help: use kebab-case: lowercase letters, digits and `-`, starting with a letter (e.g. `order-api`)"
        );
    }
    let dir = args.output.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already exists and is not empty\n  help: choose another name or pass `--output <empty dir>`",
            dir.display()
        );
    }
    let files = match args.template {
        Template::HttpRust => HTTP_RUST,
        Template::HttpWit => HTTP_WIT,
    };
    write_files(&dir, files, name)?;
    println!(
        "Created {} from the {:?} template.",
        dir.display(),
        args.template
    );
    println!("Next:");
    println!("  cd {}", dir.display());
    println!("  moa build && moa up");
    Ok(())
}

fn write_files(dir: &Path, files: Files, name: &str) -> Result<()> {
    let snake = name.replace('-', "_");
    for (relative, content) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = content
            .replace("{{project-name}}", name)
            .replace("{{project_name}}", &snake);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn is_kebab_case(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--")
}
