//! `[component.<id>.dependencies]`: dependency names (which imports they satisfy), sources (a local
//! `.wasm` or another app component) and configuration inheritance, checked as Spin checks them.

use crate::Position;
use std::fmt;
use std::path::PathBuf;

/// One entry of `[component.<id>.dependencies]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentDependency {
    /// The key: which of the component's imports the dependency satisfies.
    pub name: DependencyName,
    pub source: DependencySource,
    /// The dependency's export that satisfies the import; `None`: the export named like the import.
    pub export: Option<String>,
    pub inherit: InheritConfiguration,
    pub position: Position,
}

/// Where a dependency's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencySource {
    /// `{ path = "greeter.wasm" }`, relative to the manifest directory.
    Path(PathBuf),
    /// `{ component = "greeter" }`: the `source` of another `[component.<id>]` of the app.
    Component { id: String, source: PathBuf },
    /// `{ url = "https://...", digest = "sha256:<hex>" }`: downloaded, checked against the digest.
    Url { url: String, digest: String },
}

impl DependencySource {
    /// The `.wasm` file, relative to the manifest directory (none for a download).
    pub fn path(&self) -> Option<&PathBuf> {
        match self {
            DependencySource::Path(path) => Some(path),
            DependencySource::Component { source, .. } => Some(source),
            DependencySource::Url { .. } => None,
        }
    }
}

/// Which of the depending component's grants the dependency may use (`inherit_configuration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InheritConfiguration {
    /// `true`: all of them.
    All,
    /// The listed manifest keys (`["key_value_stores"]`); empty (`false`, the default) is none.
    Keys(Vec<String>),
}

impl InheritConfiguration {
    /// Whether the grant named by the manifest key `key` is inherited.
    pub fn inherits(&self, key: &str) -> bool {
        match self {
            InheritConfiguration::All => true,
            InheritConfiguration::Keys(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// A dependency key: a plain name (`greeter`) or a package name with an optional interface and an
/// optional exact version (`moa-test:greet/greeter@0.1.0`, `moa-test:greet`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum DependencyName {
    Plain(String),
    Package {
        /// `namespace:name`.
        package: String,
        interface: Option<String>,
        version: Option<semver::Version>,
    },
}

impl DependencyName {
    /// Parses a key as Spin does: with `:` or `/` it is a package name, else a kebab-case name.
    pub fn parse(key: &str) -> Result<Self, String> {
        if !key.contains(':') && !key.contains('/') {
            return if is_kebab(key) {
                Ok(DependencyName::Plain(key.to_string()))
            } else {
                Err(format!("`{key}` is not a kebab-case name"))
            };
        }
        let (name, version) = match key.split_once('@') {
            Some((name, version)) => {
                let version = semver::Version::parse(version)
                    .map_err(|err| format!("`{version}` is not a version: {err}"))?;
                (name, Some(version))
            }
            None => (key, None),
        };
        let (package, interface) = match name.split_once('/') {
            Some((package, interface)) => (package, Some(interface)),
            None => (name, None),
        };
        let Some((namespace, package_name)) = package.split_once(':') else {
            return Err(format!(
                "`{package}` has no namespace (`namespace:package`)"
            ));
        };
        if !is_kebab(namespace) || !is_kebab(package_name) {
            return Err(format!(
                "`{package}` is not a package name (`namespace:package`, kebab-case)"
            ));
        }
        if let Some(interface) = interface
            && !is_kebab(interface)
        {
            return Err(format!("`{interface}` is not a kebab-case interface name"));
        }
        Ok(DependencyName::Package {
            package: package.to_string(),
            interface: interface.map(str::to_string),
            version,
        })
    }

    /// Whether this key satisfies the import `import` (a component import name). Spin's rule: the
    /// package and, when given, the interface are equal, and a given version is equal exactly (no
    /// semver range); a plain key matches only the plain import of the same name.
    pub fn matches_import(&self, import: &str) -> bool {
        match self {
            DependencyName::Plain(name) => name == import,
            DependencyName::Package {
                package,
                interface,
                version,
            } => {
                let Ok(DependencyName::Package {
                    package: import_package,
                    interface: import_interface,
                    version: import_version,
                }) = DependencyName::parse(import)
                else {
                    return false;
                };
                *package == import_package
                    && interface
                        .as_ref()
                        .is_none_or(|i| Some(i) == import_interface.as_ref())
                    && version
                        .as_ref()
                        .is_none_or(|v| Some(v) == import_version.as_ref())
            }
        }
    }

    /// Whether the key names a whole package (no interface), which may not pick an `export`.
    pub fn is_package_level(&self) -> bool {
        matches!(
            self,
            DependencyName::Package {
                interface: None,
                ..
            }
        )
    }

    /// Whether two keys of one component may match the same import, which Spin refuses: the same
    /// plain name, or the same package where the interfaces do not differ and the versions are
    /// semver-compatible (caret rules; no version is compatible with every version).
    pub fn overlaps(&self, other: &DependencyName) -> bool {
        match (self, other) {
            (DependencyName::Plain(a), DependencyName::Plain(b)) => a == b,
            (
                DependencyName::Package {
                    package: pa,
                    interface: ia,
                    version: va,
                },
                DependencyName::Package {
                    package: pb,
                    interface: ib,
                    version: vb,
                },
            ) => {
                let interfaces_differ = matches!((ia, ib), (Some(a), Some(b)) if a != b);
                let versions_differ = match (va, vb) {
                    (Some(a), Some(b)) => compatibility_line(a) != compatibility_line(b),
                    _ => false,
                };
                pa == pb && !interfaces_differ && !versions_differ
            }
            _ => false,
        }
    }
}

impl fmt::Display for DependencyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DependencyName::Plain(name) => f.write_str(name),
            DependencyName::Package {
                package,
                interface,
                version,
            } => {
                f.write_str(package)?;
                if let Some(interface) = interface {
                    write!(f, "/{interface}")?;
                }
                if let Some(version) = version {
                    write!(f, "@{version}")?;
                }
                Ok(())
            }
        }
    }
}

/// The semver line a version belongs to: `1.x` is one line, `0.y` one, `0.0.z` exact.
fn compatibility_line(version: &semver::Version) -> (u64, u64, u64, bool) {
    let prerelease = !version.pre.is_empty();
    match (version.major, version.minor) {
        (0, 0) => (0, 0, version.patch, prerelease),
        (0, minor) => (0, minor, 0, prerelease),
        (major, _) => (major, 0, 0, prerelease),
    }
}

fn is_kebab(name: &str) -> bool {
    !name.is_empty()
        && name.split('-').all(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(c) if c.is_ascii_lowercase() => {
                    chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                }
                Some(c) if c.is_ascii_uppercase() => {
                    chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                }
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(key: &str) -> DependencyName {
        DependencyName::parse(key).expect(key)
    }

    #[test]
    fn parses_the_four_package_forms_and_plain_names() {
        assert_eq!(
            name("foo:bar/baz@0.1.0"),
            DependencyName::Package {
                package: "foo:bar".into(),
                interface: Some("baz".into()),
                version: Some(semver::Version::new(0, 1, 0)),
            }
        );
        assert!(name("foo:bar").is_package_level());
        assert!(name("foo:bar@1.0.0").is_package_level());
        assert!(!name("foo:bar/baz").is_package_level());
        assert_eq!(name("foo-bar"), DependencyName::Plain("foo-bar".into()));
        assert_eq!(name("foo:bar/baz@0.1.0").to_string(), "foo:bar/baz@0.1.0");
        for bad in [
            "foo/bar",
            "Foo_bar",
            "foo:bar@x",
            "foo:bar/",
            ":bar",
            "foo:bar/Baz_1",
        ] {
            assert!(
                DependencyName::parse(bad).is_err(),
                "{bad} should not parse"
            );
        }
    }

    #[test]
    fn matches_imports_with_exact_versions_only() {
        let import = "foo:bar/baz@0.1.0";
        assert!(name("foo:bar/baz@0.1.0").matches_import(import));
        assert!(name("foo:bar/baz").matches_import(import));
        assert!(name("foo:bar@0.1.0").matches_import(import));
        assert!(name("foo:bar").matches_import(import));
        assert!(!name("foo:bar/baz@0.1.1").matches_import(import));
        assert!(!name("foo:bar/qux").matches_import(import));
        assert!(!name("foo:other").matches_import(import));
        assert!(!name("foo:bar/baz@0.1.0").matches_import("foo:bar/baz"));
        assert!(name("foo:bar/baz").matches_import("foo:bar/baz"));
        assert!(name("foo-bar").matches_import("foo-bar"));
        assert!(!name("foo-bar").matches_import("foo:bar/foo-bar"));
        assert!(!name("foo:bar").matches_import("foo-bar"));
    }

    #[test]
    fn keys_overlap_as_spin_decides() {
        let overlap = |a: &str, b: &str| name(a).overlaps(&name(b));
        assert!(overlap("foo:bar@0.1.0", "foo:bar@0.1.1"));
        assert!(overlap("foo:bar", "foo:bar@0.1.0"));
        assert!(overlap("foo:bar/baz", "foo:bar"));
        assert!(overlap("foo:bar@1.0.0", "foo:bar@1.2.0"));
        assert!(overlap("foo-bar", "foo-bar"));
        assert!(!overlap("foo:bar@0.1.0", "foo:bar@0.2.0"));
        assert!(!overlap("foo:bar@0.0.1", "foo:bar@0.0.2"));
        assert!(!overlap("foo:bar@1.0.0", "foo:bar@2.0.0"));
        assert!(!overlap("foo:bar/a", "foo:bar/b"));
        assert!(!overlap("foo:bar", "foo:qux"));
        assert!(!overlap("foo-bar", "foo:bar"));
    }
}
