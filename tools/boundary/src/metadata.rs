//! Building a [`Model`] from `cargo metadata --format-version 1` and the files on disk.

use std::fmt;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::model::{Area, DepKind, Edge, Model, Package, SourceFile};

/// Why the model could not be built.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

#[derive(Debug, Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
    workspace_members: Vec<String>,
    resolve: Option<Resolve>,
    workspace_root: PathBuf,
    target_directory: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct MetaPackage {
    id: String,
    name: String,
    manifest_path: PathBuf,
    source: Option<String>,
    #[serde(default)]
    targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
struct Target {
    kind: Vec<String>,
    src_path: PathBuf,
}

#[derive(Debug, Deserialize)]
struct Resolve {
    nodes: Vec<Node>,
}

#[derive(Debug, Deserialize)]
struct Node {
    id: String,
    #[serde(default)]
    deps: Vec<NodeDep>,
}

#[derive(Debug, Deserialize)]
struct NodeDep {
    pkg: String,
    #[serde(default)]
    dep_kinds: Vec<DepKindInfo>,
}

#[derive(Debug, Deserialize)]
struct DepKindInfo {
    kind: Option<String>,
}

/// Lists the `.rs` files under a root, skipping some directories: [`collect_sources`], or a
/// fake in tests.
pub type SourceLister = dyn Fn(&Path, &[PathBuf]) -> Result<Vec<SourceFile>, Error>;

/// A model with where it came from.
#[derive(Debug)]
pub struct Workspace {
    pub root: PathBuf,
    pub model: Model,
}

/// Runs `cargo metadata` (the `CARGO` environment variable, else `cargo`) for `manifest_path`
/// (default: the current directory's workspace) and builds the model from it and the disk.
pub fn load(manifest_path: Option<&Path>) -> Result<Workspace, Error> {
    let json = cargo_metadata(manifest_path)?;
    from_metadata(&json, &|p: &Path| fs::read_to_string(p).ok(), &collect_sources)
}

/// The JSON text of `cargo metadata --format-version 1`.
pub fn cargo_metadata(manifest_path: Option<&Path>) -> Result<String, Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["metadata", "--format-version", "1"]);
    if let Some(path) = manifest_path {
        cmd.arg("--manifest-path").arg(path);
    }
    let out = cmd.output().map_err(|e| Error(format!("cannot run {}: {e}", Path::new(&cargo).display())))?;
    if !out.status.success() {
        return Err(Error(format!(
            "cargo metadata failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        )));
    }
    String::from_utf8(out.stdout).map_err(|_| Error("cargo metadata printed non-UTF-8".into()))
}

/// Builds the model from `cargo metadata` JSON. `read` reads a file (manifests, library roots);
/// `sources` lists every `.rs` file under the root (given the root and the directories to skip).
pub fn from_metadata(
    json: &str,
    read: &dyn Fn(&Path) -> Option<String>,
    sources: &SourceLister,
) -> Result<Workspace, Error> {
    let meta: Metadata = serde_json::from_str(json).map_err(|e| Error(format!("cannot parse cargo metadata: {e}")))?;
    let root = meta.workspace_root.clone();
    let resolve =
        meta.resolve.ok_or_else(|| Error("cargo metadata has no resolve graph (was --no-deps given?)".into()))?;

    let mut packages = Vec::with_capacity(meta.packages.len());
    for p in &meta.packages {
        let member = meta.workspace_members.contains(&p.id);
        let dir_path = p.manifest_path.parent().unwrap_or(Path::new(""));
        let dir = p.source.is_none().then(|| relative(&root, dir_path));
        let mut package =
            Package { id: p.id.clone(), name: p.name.clone(), dir, member, lints_workspace: false, lib_root: None };
        if member {
            package.lints_workspace = read(&p.manifest_path).is_some_and(|text| lints_workspace(&text));
            if package.area() == Some(Area::Components) {
                let lib_path = p
                    .targets
                    .iter()
                    .find(|t| t.kind.iter().any(|k| k == "lib" || k == "rlib" || k == "proc-macro"))
                    .map_or_else(|| dir_path.join("src/lib.rs"), |t| t.src_path.clone());
                package.lib_root = read(&lib_path).map(|text| SourceFile { path: relative(&root, &lib_path), text });
            }
        }
        packages.push(package);
    }

    let mut edges = Vec::new();
    for node in &resolve.nodes {
        for dep in &node.deps {
            for k in &dep.dep_kinds {
                let kind = match k.kind.as_deref() {
                    None | Some("normal") => DepKind::Normal,
                    Some("build") => DepKind::Build,
                    Some("dev") => DepKind::Dev,
                    Some(other) => return Err(Error(format!("unknown dependency kind {other:?}"))),
                };
                edges.push(Edge::new(node.id.clone(), dep.pkg.clone(), kind));
            }
        }
    }

    let mut skip = vec![root.join("target"), root.join(".git")];
    skip.extend(meta.target_directory);
    let sources = sources(&root, &skip)?;
    Ok(Workspace { model: Model { packages, edges, sources }, root })
}

/// Whether a manifest has `[lints] workspace = true`.
pub fn lints_workspace(manifest: &str) -> bool {
    let Ok(table) = manifest.parse::<toml::Table>() else {
        return false;
    };
    table.get("lints").and_then(|l| l.get("workspace")).and_then(toml::Value::as_bool).unwrap_or(false)
}

/// `path` relative to `root` with `/` separators, or `path` itself if it is not under `root`.
pub fn relative(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) => rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("/"),
        Err(_) => path.display().to_string(),
    }
}

/// Every `.rs` file under `root`, skipping the directories in `skip`, every directory named
/// `target` (build output, including `fuzz/target`) and `.git`. Symbolic links are not
/// followed. Paths in the result are relative to `root`.
pub fn collect_sources(root: &Path, skip: &[PathBuf]) -> Result<Vec<SourceFile>, Error> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| Error(format!("cannot list {}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error(format!("cannot list {}: {e}", dir.display())))?;
            let path = entry.path();
            let Ok(ty) = entry.file_type() else { continue };
            let name = entry.file_name();
            if ty.is_dir() {
                if name == "target" || name == ".git" || skip.iter().any(|s| s == &path) {
                    continue;
                }
                stack.push(path);
            } else if ty.is_file() && path.extension().is_some_and(|e| e == "rs") {
                // A file another agent is writing may vanish between listing and reading.
                let Ok(bytes) = fs::read(&path) else { continue };
                let text = String::from_utf8_lossy(&bytes).into_owned();
                out.push(SourceFile { path: relative(root, &path), text });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = r#"{
      "packages": [
        {"id": "path+file:///ws/components/wire#ppn-wire@0.1.0", "name": "ppn-wire",
         "manifest_path": "/ws/components/wire/Cargo.toml", "source": null,
         "targets": [{"kind": ["lib"], "src_path": "/ws/components/wire/src/lib.rs"}]},
        {"id": "path+file:///ws/linux-proxy/p#ppn-p@0.1.0", "name": "ppn-p",
         "manifest_path": "/ws/linux-proxy/p/Cargo.toml", "source": null, "targets": []},
        {"id": "registry+x#serde@1.0.0", "name": "serde",
         "manifest_path": "/reg/serde-1.0.0/Cargo.toml",
         "source": "registry+https://github.com/rust-lang/crates.io-index", "targets": []}
      ],
      "workspace_members": ["path+file:///ws/components/wire#ppn-wire@0.1.0",
                            "path+file:///ws/linux-proxy/p#ppn-p@0.1.0"],
      "resolve": {"nodes": [
        {"id": "path+file:///ws/linux-proxy/p#ppn-p@0.1.0", "deps": [
          {"name": "ppn_wire", "pkg": "path+file:///ws/components/wire#ppn-wire@0.1.0",
           "dep_kinds": [{"kind": null, "target": null}, {"kind": "dev", "target": null}]},
          {"name": "serde", "pkg": "registry+x#serde@1.0.0",
           "dep_kinds": [{"kind": "build", "target": "cfg(unix)"}]}]}
      ], "root": null},
      "workspace_root": "/ws",
      "target_directory": "/ws/target",
      "version": 1
    }"#;

    fn read(p: &Path) -> Option<String> {
        match p.to_str()? {
            "/ws/components/wire/Cargo.toml" => {
                Some("[package]\nname = \"ppn-wire\"\n[lints]\nworkspace = true\n".into())
            }
            "/ws/components/wire/src/lib.rs" => Some("#![no_std]\n".into()),
            "/ws/linux-proxy/p/Cargo.toml" => Some("[package]\nname = \"ppn-p\"\n".into()),
            _ => None,
        }
    }

    fn no_sources(_: &Path, skip: &[PathBuf]) -> Result<Vec<SourceFile>, Error> {
        assert!(skip.contains(&PathBuf::from("/ws/target")));
        Ok(vec![])
    }

    #[test]
    fn parses_packages_and_edges() {
        let ws = from_metadata(META, &read, &no_sources).unwrap();
        assert_eq!(ws.root, PathBuf::from("/ws"));
        let m = ws.model;
        let wire = &m.packages[0];
        assert_eq!(wire.dir.as_deref(), Some("components/wire"));
        assert!(wire.member && wire.lints_workspace);
        assert_eq!(wire.lib_root.as_ref().unwrap().path, "components/wire/src/lib.rs");
        let proxy = &m.packages[1];
        assert!(proxy.member && !proxy.lints_workspace && proxy.lib_root.is_none());
        let serde = &m.packages[2];
        assert!(!serde.member && serde.dir.is_none());
        let kinds: Vec<DepKind> = m.edges.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![DepKind::Normal, DepKind::Dev, DepKind::Build]);
    }

    #[test]
    fn lints_table_forms() {
        assert!(lints_workspace("[lints]\nworkspace = true\n"));
        assert!(lints_workspace("lints.workspace = true\n"));
        assert!(lints_workspace("lints = { workspace = true }\n[package]\nname = \"x\"\n"));
        assert!(!lints_workspace("[lints]\nworkspace = false\n"));
        assert!(!lints_workspace("[lints.rust]\nunsafe_code = \"allow\"\n"));
        assert!(!lints_workspace("not toml ["));
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/ws"), Path::new("/ws/a/b")), "a/b");
        assert_eq!(relative(Path::new("/ws"), Path::new("/other/a")), "/other/a");
    }

    #[test]
    fn missing_resolve_is_an_error() {
        let json = r#"{"packages": [], "workspace_members": [], "resolve": null, "workspace_root": "/ws"}"#;
        assert!(from_metadata(json, &read, &no_sources).is_err());
    }
}
