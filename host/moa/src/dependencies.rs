//! Component dependencies at load: reads each dependency's `.wasm`, decides from its inheritance
//! which of its imports share the depending component's grants, and composes them (moa-compose).
//! A dependency that does not inherit `environment` sees an empty one; one that imports another
//! grant's interface without inheriting it is refused at load.

use anyhow::{Context, Result};
use moa_compose::{Dependency, ImportPolicy};
use moa_manifest::{Component, DependencySource, InheritConfiguration};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Where an app's manifest is, the directory its paths are relative to, and where downloaded
/// dependencies are kept (by digest; none: downloaded on every load).
#[derive(Debug, Clone)]
pub struct AppPaths {
    pub manifest: PathBuf,
    pub base_dir: PathBuf,
    pub downloads: Option<PathBuf>,
}

/// Largest dependency moa downloads.
const MAX_DOWNLOAD_BYTES: usize = 256 << 20;

/// The bytes of a `{ url, digest }` dependency: from the download cache when it holds that
/// digest, else downloaded, checked against the digest and kept.
fn download(url: &str, digest: &str, downloads: Option<&std::path::Path>) -> Result<Vec<u8>> {
    let expected = digest.strip_prefix("sha256:").unwrap_or(digest);
    let cached = downloads.map(|dir| dir.join(format!("sha256-{expected}.wasm")));
    if let Some(bytes) = cached.as_ref().and_then(|path| std::fs::read(path).ok())
        && hex::encode(Sha256::digest(&bytes)) == expected
    {
        return Ok(bytes);
    }
    let runtime = tokio::runtime::Handle::try_current()
        .context("downloading a dependency needs the async runtime")?;
    let bytes = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120))
            .build()?;
        let response = client.get(url).send().await?.error_for_status()?;
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOWNLOAD_BYTES as u64)
        {
            anyhow::bail!("it is larger than {} MiB", MAX_DOWNLOAD_BYTES >> 20);
        }
        let bytes = response.bytes().await?;
        if bytes.len() > MAX_DOWNLOAD_BYTES {
            anyhow::bail!("it is larger than {} MiB", MAX_DOWNLOAD_BYTES >> 20);
        }
        Ok(bytes.to_vec())
    });
    let bytes = bytes.with_context(|| format!("cannot download {url}"))?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != expected {
        anyhow::bail!(
            "{url} has digest sha256:{actual}, not the manifest's {digest}\n  help: check the URL; if the file changed on purpose, update `digest`"
        );
    }
    if let Some(path) = cached {
        let written = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| {
                let partial = path.with_extension(format!("partial-{}", std::process::id()));
                std::fs::write(&partial, &bytes)?;
                std::fs::rename(&partial, &path)
            });
        if let Err(err) = written {
            tracing::warn!(path = %path.display(), error = %err, "could not keep the downloaded dependency");
        }
    }
    Ok(bytes)
}
use wasmtime::component::{Linker, Val, types};

/// The grants a dependency can inherit, by manifest key, with the interfaces each covers: a
/// package (`spin:redis`) or an interface (`wasi:cli/environment`), without versions. A
/// dependency importing one of them without inheriting the grant does not get the depender's.
const GRANT_INTERFACES: &[(&str, &[&str])] = &[
    (
        "allowed_outbound_hosts",
        &[
            "wasi:http/outgoing-handler",
            "wasi:http/client",
            "wasi:http/handler",
            "wasi:sockets",
            "spin:redis",
            "fermyon:spin/redis",
            "spin:mqtt",
            "fermyon:spin/mqtt",
            "spin:postgres",
            "fermyon:spin/postgres",
            "spin:mysql",
            "fermyon:spin/mysql",
        ],
    ),
    ("environment", &["wasi:cli/environment"]),
    ("files", &["wasi:filesystem/preopens"]),
    (
        "variables",
        &[
            "spin:variables",
            "fermyon:spin/variables",
            "fermyon:spin/config",
            "wasi:config",
        ],
    ),
    (
        "key_value_stores",
        &["spin:key-value", "fermyon:spin/key-value", "wasi:keyvalue"],
    ),
    ("sqlite_databases", &["spin:sqlite", "fermyon:spin/sqlite"]),
    ("ai_models", &["fermyon:spin/llm", "spin:llm"]),
    ("allowed_publish_topics", &["moa:messaging"]),
    ("document_stores", &["moa:documents"]),
    ("document_indexes", &["moa:documents"]),
    ("vector_indexes", &["moa:vectors"]),
];

/// The prefix of the import that stands in for `wasi:cli/environment` in a dependency that does
/// not inherit `environment`; [`link`] serves it with an empty environment, as Spin does.
const DENIED_ENVIRONMENT: &str = "moa:deny/environment";

/// Bumped when composition changes, so compile-cache entries of older compositions are not used.
const COMPOSER_VERSION: &str = "moa-compose 1";

/// The manifest keys whose grant covers `import` (a component import name).
fn grants_covering(import: &str) -> Vec<&'static str> {
    let name = import.split('@').next().unwrap_or(import);
    let package = name.split('/').next().unwrap_or(name);
    GRANT_INTERFACES
        .iter()
        .filter(|(_, interfaces)| {
            interfaces
                .iter()
                .any(|i| *i == name || (!i.contains('/') && *i == package))
        })
        .map(|(key, _)| *key)
        .collect()
}

/// What serves `import` of a dependency with inheritance `inherit`.
fn import_policy(inherit: &InheritConfiguration, import: &str) -> ImportPolicy {
    let grants = grants_covering(import);
    if grants.is_empty() || grants.iter().any(|key| inherit.inherits(key)) {
        return ImportPolicy::Host;
    }
    if grants == ["environment"] {
        let version = import.split_once('@').map(|(_, v)| v).unwrap_or("");
        let line = if version.starts_with("0.2.") {
            Some("0.2.0")
        } else if version.starts_with("0.3.") {
            Some("0.3.0")
        } else {
            None
        };
        if let Some(line) = line {
            return ImportPolicy::Rename(format!("{DENIED_ENVIRONMENT}@{line}"));
        }
    }
    let keys: Vec<String> = grants.iter().map(|k| format!("\"{k}\"")).collect();
    ImportPolicy::Refuse(format!(
        "that needs the {} grant, which this dependency does not inherit\n  help: add `inherit_configuration = [{}]` to the dependency (it then uses the depending component's grant), or remove the import from the dependency",
        grants
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(" or "),
        keys[0]
    ))
}

/// The component `component` with its dependencies composed in, as bytes, and the compile-cache
/// key of the result: a digest of the composer version, the component's bytes and, per
/// dependency, its name, export, inheritance and bytes.
pub struct Composition {
    pub cache_key: String,
    main: Vec<u8>,
    dependencies: Vec<(moa_manifest::ComponentDependency, Vec<u8>)>,
    component: String,
}

impl Composition {
    /// Reads the component's and its dependencies' files; `None` when it has no dependencies.
    pub fn read(app: &AppPaths, component: &Component) -> Result<Option<Composition>> {
        if component.dependencies.is_empty() {
            return Ok(None);
        }
        let source = app.base_dir.join(&component.source.value);
        let main = std::fs::read(&source).with_context(|| {
            format!(
                "cannot read component {}: build it first (`moa build`) or fix `source` in spin.toml",
                source.display()
            )
        })?;
        let mut hasher = Sha256::new();
        hasher.update(COMPOSER_VERSION);
        hasher.update(Sha256::digest(&main));
        let mut dependencies = Vec::new();
        for dependency in &component.dependencies {
            let bytes = match (&dependency.source, dependency.source.path()) {
                (DependencySource::Url { url, digest }, _) => {
                    download(url, digest, app.downloads.as_deref()).with_context(|| {
                        format!(
                            "{}:{}: component `{}`: dependency `{}`",
                            app.manifest.display(),
                            dependency.position,
                            component.id,
                            dependency.name
                        )
                    })?
                }
                (_, path) => {
                    let path: PathBuf = app.base_dir.join(path.cloned().unwrap_or_default());
                    std::fs::read(&path).with_context(|| {
                        format!(
                            "{}:{}: component `{}`: cannot read dependency `{}` at {}\n  help: build it first (`moa build`) or fix its `path`",
                            app.manifest.display(),
                            dependency.position,
                            component.id,
                            dependency.name,
                            path.display()
                        )
                    })?
                }
            };
            hasher.update(format!(
                "\0{}\0{:?}\0{:?}\0",
                dependency.name, dependency.export, dependency.inherit
            ));
            hasher.update(Sha256::digest(&bytes));
            dependencies.push((dependency.clone(), bytes));
        }
        Ok(Some(Composition {
            cache_key: hex::encode(hasher.finalize()),
            main,
            dependencies,
            component: component.id.clone(),
        }))
    }

    /// Composes the component with its dependencies (on a compile-cache miss).
    pub fn compose(self) -> Result<Vec<u8>> {
        // The manifest entries stay borrowed while their bytes move into the composition.
        let (entries, bytes): (Vec<_>, Vec<_>) = self.dependencies.into_iter().unzip();
        let dependencies = entries
            .iter()
            .zip(bytes)
            .map(|(entry, bytes)| Dependency {
                name: &entry.name,
                bytes,
                export: entry.export.as_deref(),
            })
            .collect();
        let composed = moa_compose::compose(self.main, dependencies, |index, import| {
            import_policy(&entries[index].inherit, import)
        })
        .with_context(|| {
            format!(
                "component `{}` cannot be composed with its dependencies",
                self.component
            )
        })?;
        Ok(composed.bytes)
    }
}

/// Links what stands in for the interfaces a dependency does not inherit: an empty
/// `wasi:cli/environment` (0.2 and 0.3), as Spin's deny adapter gives.
pub fn link<T: 'static>(linker: &mut Linker<T>) -> Result<()> {
    for line in ["0.2.0", "0.3.0"] {
        let mut instance = linker.instance(&format!("{DENIED_ENVIRONMENT}@{line}"))?;
        for function in [
            "get-environment",
            "get-arguments",
            "initial-cwd",
            "get-initial-cwd",
        ] {
            instance.func_new(function, |_store, ty, _params, results| {
                for (slot, ty) in results.iter_mut().zip(ty.results()) {
                    *slot = empty_value(&ty)?;
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// The empty value of a list or option result.
fn empty_value(ty: &types::Type) -> wasmtime::Result<Val> {
    match ty {
        types::Type::List(_) => Ok(Val::List(Vec::new())),
        types::Type::Option(_) => Ok(Val::Option(None)),
        other => Err(wasmtime::format_err!("no empty value for {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_interface_belongs_to_a_grant() {
        for import in crate::state::imports() {
            // Core imports, and pure computation every component gets (shared like WASI).
            if import.starts_with("WASI ")
                || import.starts_with("wasi:http ")
                || import.starts_with("moa:crypto/")
            {
                continue;
            }
            let import = import.split(' ').next().unwrap_or(import);
            assert!(
                !grants_covering(import).is_empty(),
                "{import} is served by a capability but no grant covers it: a dependency would share it without inheriting"
            );
        }
    }

    #[test]
    fn imports_are_shared_renamed_or_refused_by_inheritance() {
        let none = InheritConfiguration::Keys(Vec::new());
        let kv = InheritConfiguration::Keys(vec!["key_value_stores".into()]);
        assert_eq!(
            import_policy(&none, "wasi:io/streams@0.2.6"),
            ImportPolicy::Host
        );
        assert_eq!(
            import_policy(&none, "wasi:cli/environment@0.2.6"),
            ImportPolicy::Rename("moa:deny/environment@0.2.0".into())
        );
        assert_eq!(
            import_policy(&InheritConfiguration::All, "wasi:cli/environment@0.2.6"),
            ImportPolicy::Host
        );
        assert!(matches!(
            import_policy(&none, "spin:key-value/key-value@3.0.0"),
            ImportPolicy::Refuse(why) if why.contains("`key_value_stores`")
        ));
        assert_eq!(
            import_policy(&kv, "spin:key-value/key-value@3.0.0"),
            ImportPolicy::Host
        );
        assert!(matches!(
            import_policy(&kv, "wasi:http/outgoing-handler@0.2.6"),
            ImportPolicy::Refuse(why) if why.contains("allowed_outbound_hosts")
        ));
        assert!(matches!(
            import_policy(&none, "wasi:filesystem/preopens@0.2.6"),
            ImportPolicy::Refuse(_)
        ));
        assert_eq!(
            import_policy(&none, "wasi:filesystem/types@0.2.6"),
            ImportPolicy::Host
        );
    }
}
