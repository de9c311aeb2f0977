//! Composes a component with its `[component.<id>.dependencies]` into one component, as Spin 3+
//! does at load: each dependency is instantiated once and its exports satisfy the imports its key
//! matches; every other import of the main component and of the dependencies stays an import of
//! the result, for the host to serve. A policy decides, per dependency import, whether the host
//! serves it, a renamed (denying) import serves it, or the composition is refused.

use moa_manifest::DependencyName;
use std::collections::{BTreeMap, HashMap};
use wac_graph::types::{ItemKind, Package, SubtypeChecker};
use wac_graph::{CompositionGraph, EncodeOptions, NodeId, PackageId};

/// One dependency: its manifest key, its component bytes and the export that satisfies the
/// import (`None`: the export named like the import).
pub struct Dependency<'a> {
    pub name: &'a DependencyName,
    pub bytes: Vec<u8>,
    pub export: Option<&'a str>,
}

/// What the composed component does with one import of a dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportPolicy {
    /// Left as an import of the composed component, shared with the main component: the host
    /// serves it with the main component's grants.
    Host,
    /// Satisfied by an import of this other name (which the host serves with a denying
    /// implementation), so the dependency does not share the main component's.
    Rename(String),
    /// Refused: the composition fails with this reason.
    Refuse(String),
}

/// Why a component and its dependencies could not be composed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("the component is not a WebAssembly component: {detail}")]
    MainNotAComponent { detail: String },
    #[error("dependency `{name}` is not a WebAssembly component: {detail}")]
    DependencyNotAComponent { name: String, detail: String },
    #[error(
        "dependency `{name}` does not match any import of the component (its imports: {imports})"
    )]
    UnmatchedDependencyName { name: String, imports: String },
    #[error("import `{import}` is satisfied by more than one dependency: {names}")]
    DependencyConflict { import: String, names: String },
    #[error(
        "dependency `{name}` does not export `{export}` to satisfy import `{import}` (it exports: {exports})"
    )]
    MissingExport {
        name: String,
        export: String,
        import: String,
        exports: String,
    },
    #[error(
        "dependency `{name}` exports `{export}`, which is not compatible with import `{import}`: {detail}"
    )]
    IncompatibleExport {
        name: String,
        export: String,
        import: String,
        detail: String,
    },
    #[error("dependency `{name}` imports `{import}`: {reason}")]
    RefusedImport {
        name: String,
        import: String,
        reason: String,
    },
    #[error("composition failed: {detail}")]
    Graph { detail: String },
}

/// The composed component and what each dependency left for the host to serve.
#[derive(Debug)]
pub struct Composed {
    pub bytes: Vec<u8>,
    /// Per dependency (in the given order), the imports it shares with the main component.
    pub host_imports: Vec<Vec<String>>,
}

fn graph_error(err: impl std::fmt::Display) -> ComposeError {
    ComposeError::Graph {
        detail: format!("{err:#}"),
    }
}

/// Composes `main` with `dependencies`; `policy(index, import)` decides what serves each import of
/// dependency `index` that is not one of the main component's satisfied imports.
pub fn compose(
    main: Vec<u8>,
    dependencies: Vec<Dependency<'_>>,
    policy: impl Fn(usize, &str) -> ImportPolicy,
) -> Result<Composed, ComposeError> {
    let mut graph = CompositionGraph::new();
    let package =
        Package::from_bytes("moa:main", None, main, graph.types_mut()).map_err(|err| {
            ComposeError::MainNotAComponent {
                detail: format!("{err:#}"),
            }
        })?;
    let main_package = graph.register_package(package).map_err(graph_error)?;
    let main_instance = graph.instantiate(main_package);
    let main_imports: Vec<(String, ItemKind)> = graph.types()[graph[main_package].ty()]
        .imports
        .iter()
        .map(|(name, kind)| (name.clone(), *kind))
        .collect();

    // Which dependency satisfies each import: exactly one, and each dependency at least one.
    let mut satisfied_by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, dependency) in dependencies.iter().enumerate() {
        let matched: Vec<&str> = main_imports
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|import| dependency.name.matches_import(import))
            .collect();
        if matched.is_empty() {
            return Err(ComposeError::UnmatchedDependencyName {
                name: dependency.name.to_string(),
                imports: main_imports
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        for import in matched {
            satisfied_by.entry(import).or_default().push(index);
        }
    }
    if let Some((import, indexes)) = satisfied_by.iter().find(|(_, d)| d.len() > 1) {
        return Err(ComposeError::DependencyConflict {
            import: import.to_string(),
            names: indexes
                .iter()
                .map(|i| format!("`{}`", dependencies[*i].name))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }

    let mut renamed_imports: HashMap<String, NodeId> = HashMap::new();
    let mut host_imports = Vec::new();
    let mut instances = Vec::new();
    let mut packages: Vec<PackageId> = Vec::new();
    for (index, dependency) in dependencies.into_iter().enumerate() {
        let name = dependency.name.to_string();
        // Unique graph names: two keys of one package may point at different files.
        let package = Package::from_bytes(
            &format!("moa:dependency{index}"),
            None,
            dependency.bytes,
            graph.types_mut(),
        )
        .map_err(|err| ComposeError::DependencyNotAComponent {
            name: name.clone(),
            detail: format!("{err:#}"),
        })?;
        let package = graph.register_package(package).map_err(graph_error)?;
        let instance = graph.instantiate(package);
        let imports: Vec<(String, ItemKind)> = graph.types()[graph[package].ty()]
            .imports
            .iter()
            .map(|(name, kind)| (name.clone(), *kind))
            .collect();
        let mut shared = Vec::new();
        for (import, kind) in imports {
            match policy(index, &import) {
                ImportPolicy::Host => shared.push(import),
                ImportPolicy::Refuse(reason) => {
                    return Err(ComposeError::RefusedImport {
                        name,
                        import,
                        reason,
                    });
                }
                ImportPolicy::Rename(renamed) => {
                    let node = match renamed_imports.get(&renamed) {
                        Some(node) => *node,
                        None => {
                            // The instance type under its own interface name: the encoder shares
                            // imports of one interface, which would hand back the original.
                            let kind = match kind {
                                ItemKind::Instance(interface) => {
                                    let mut renamed_interface = graph.types()[interface].clone();
                                    renamed_interface.id = Some(renamed.clone());
                                    ItemKind::Instance(
                                        graph.types_mut().add_interface(renamed_interface),
                                    )
                                }
                                other => other,
                            };
                            let node = graph.import(renamed.clone(), kind).map_err(graph_error)?;
                            renamed_imports.insert(renamed, node);
                            node
                        }
                    };
                    graph
                        .set_instantiation_argument(instance, &import, node)
                        .map_err(graph_error)?;
                }
            }
        }
        host_imports.push(shared);
        instances.push((name, dependency.export.map(str::to_string), instance));
        packages.push(package);
    }

    // Wire each satisfied import to the dependency's export, checking the types as Spin does.
    let mut cache = Default::default();
    for (import, indexes) in &satisfied_by {
        let index = indexes[0];
        let (name, export, instance) = &instances[index];
        let export = export.as_deref().unwrap_or(import);
        let exports = &graph.types()[graph[packages[index]].ty()].exports;
        let Some(export_kind) = exports.get(export).copied() else {
            return Err(ComposeError::MissingExport {
                name: name.clone(),
                export: export.to_string(),
                import: import.to_string(),
                exports: exports.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let import_kind = main_imports
            .iter()
            .find(|(name, _)| name == import)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| graph_error(format!("import `{import}` vanished")))?;
        SubtypeChecker::new(&mut cache)
            .is_subtype(export_kind, graph.types(), import_kind, graph.types())
            .map_err(|err| ComposeError::IncompatibleExport {
                name: name.clone(),
                export: export.to_string(),
                import: import.to_string(),
                detail: format!("{err:#}"),
            })?;
        let alias = graph
            .alias_instance_export(*instance, export)
            .map_err(graph_error)?;
        graph
            .set_instantiation_argument(main_instance, import, alias)
            .map_err(graph_error)?;
    }

    // The composed component exports what the main component exports, under the same names.
    let exports: Vec<String> = graph.types()[graph[main_package].ty()]
        .exports
        .keys()
        .cloned()
        .collect();
    for export in exports {
        let alias = graph
            .alias_instance_export(main_instance, &export)
            .map_err(graph_error)?;
        graph.export(alias, &export).map_err(graph_error)?;
    }
    let bytes = graph
        .encode(EncodeOptions::default())
        .map_err(graph_error)?;
    Ok(Composed {
        bytes,
        host_imports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_modules_and_garbage_are_not_components() {
        let name = DependencyName::parse("a:b/c").unwrap();
        let module = wat::parse_str("(module)").unwrap();
        let err = compose(module.clone(), Vec::new(), |_, _| ImportPolicy::Host).unwrap_err();
        assert!(
            matches!(err, ComposeError::MainNotAComponent { .. }),
            "{err}"
        );
        let component =
            wat::parse_str(r#"(component (import "a:b/c" (instance (export "f" (func)))))"#)
                .unwrap();
        let err = compose(
            component,
            vec![Dependency {
                name: &name,
                bytes: module,
                export: None,
            }],
            |_, _| ImportPolicy::Host,
        )
        .unwrap_err();
        assert!(
            matches!(err, ComposeError::DependencyNotAComponent { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_dependency_must_match_an_import() {
        let name = DependencyName::parse("a:b/c").unwrap();
        let main = wat::parse_str(r#"(component (import "a:b/d" (instance (export "f" (func)))))"#)
            .unwrap();
        let dependency = wat::parse_str("(component)").unwrap();
        let err = compose(
            main,
            vec![Dependency {
                name: &name,
                bytes: dependency,
                export: None,
            }],
            |_, _| ImportPolicy::Host,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(
                "`a:b/c` does not match any import of the component (its imports: a:b/d)"
            ),
            "{err}"
        );
    }

    #[test]
    fn exports_satisfy_imports_by_name_or_by_the_export_field() {
        let main = wat::parse_str(
            r#"(component
                (import "a:b/c" (instance $c (export "f" (func (result u32)))))
                (alias export $c "f" (func $f))
                (export "run" (func $f)))"#,
        )
        .unwrap();
        let provider = wat::parse_str(
            r#"(component
                (core module $m (func (export "f") (result i32) i32.const 7))
                (core instance $i (instantiate $m))
                (func $f (result u32) (canon lift (core func $i "f")))
                (instance $c (export "f" (func $f)))
                (export "a:b/c" (instance $c))
                (export "a:b/other" (instance $c)))"#,
        )
        .unwrap();
        let name = DependencyName::parse("a:b/c").unwrap();
        let composed = compose(
            main.clone(),
            vec![Dependency {
                name: &name,
                bytes: provider.clone(),
                export: None,
            }],
            |_, _| ImportPolicy::Host,
        )
        .unwrap();
        let text = wasmprinter_like_imports(&composed.bytes);
        assert!(!text.contains("a:b/c"), "the import is satisfied: {text}");
        let composed = compose(
            main.clone(),
            vec![Dependency {
                name: &name,
                bytes: provider.clone(),
                export: Some("a:b/other"),
            }],
            |_, _| ImportPolicy::Host,
        );
        assert!(composed.is_ok(), "{:?}", composed.err());
        let err = compose(
            main,
            vec![Dependency {
                name: &name,
                bytes: provider,
                export: Some("a:b/missing"),
            }],
            |_, _| ImportPolicy::Host,
        )
        .unwrap_err();
        assert!(matches!(err, ComposeError::MissingExport { .. }), "{err}");
    }

    /// The top-level import names of a component.
    fn wasmprinter_like_imports(bytes: &[u8]) -> String {
        let mut types = wac_graph::types::Types::default();
        let package = Package::from_bytes("t:t", None, bytes.to_vec(), &mut types).unwrap();
        types[package.ty()]
            .imports
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    }
}
