//! The parsed model of a workspace that the rules run over.
//!
//! Everything here is plain data: [`crate::metadata`] fills it from `cargo metadata` and the
//! files on disk, the unit tests build it by hand. Paths are relative to the workspace root and
//! use `/` as separator.

/// The part of the tree a local crate lives in; the tree is the trust boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    /// `components/`: trusted logic cores, `no_std`, no unsafe.
    Components,
    /// `linux-proxy/`: untrusted std code.
    LinuxProxy,
    /// `system/`: seL4 PDs and the hosted TCB; the only place unsafe may live.
    System,
    /// `tools/`: operator CLI and checks.
    Tools,
    /// `qemu-tests/`: conformance tests.
    QemuTests,
    /// Anywhere else (the workspace root, a path outside the root).
    Other,
}

impl Area {
    /// The area of a workspace-relative path, by its first segment.
    pub fn of(rel_path: &str) -> Area {
        match rel_path.split('/').next().unwrap_or("") {
            "components" => Area::Components,
            "linux-proxy" => Area::LinuxProxy,
            "system" => Area::System,
            "tools" => Area::Tools,
            "qemu-tests" => Area::QemuTests,
            _ => Area::Other,
        }
    }
}

/// A dependency kind, as `cargo metadata` reports it in `resolve.nodes[].deps[].dep_kinds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DepKind {
    Normal,
    Build,
    Dev,
}

/// A source file: its workspace-relative path and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

impl SourceFile {
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        Self { path: path.into(), text: text.into() }
    }
}

/// A package in the dependency graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The package id (`cargo metadata`'s opaque id; any unique string in tests).
    pub id: String,
    pub name: String,
    /// For a package with a local path source: its directory relative to the workspace root
    /// (`components/wire`), or the absolute directory if it lies outside the root. `None` for
    /// registry and git packages.
    pub dir: Option<String>,
    /// A member of the workspace.
    pub member: bool,
    /// The manifest has `[lints] workspace = true` (only read for members).
    pub lints_workspace: bool,
    /// The library root (`src/lib.rs`) if the package has one and it could be read (only read
    /// for members under `components/`).
    pub lib_root: Option<SourceFile>,
}

impl Package {
    /// The area of a local package; `None` for registry and git packages.
    pub fn area(&self) -> Option<Area> {
        self.dir.as_deref().map(Area::of)
    }

    /// `dir (name)` for a local package, `name` otherwise.
    pub fn label(&self) -> String {
        match &self.dir {
            Some(dir) => format!("{dir} ({})", self.name),
            None => self.name.clone(),
        }
    }
}

/// A dependency edge of one kind; a dependency of several kinds is several edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub kind: DepKind,
}

impl Edge {
    pub fn new(from: impl Into<String>, to: impl Into<String>, kind: DepKind) -> Self {
        Self { from: from.into(), to: to.into(), kind }
    }
}

/// The whole workspace: packages, the resolved dependency graph, and every `.rs` file to scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub packages: Vec<Package>,
    pub edges: Vec<Edge>,
    /// Every `.rs` file under the workspace root outside `target/` directories.
    pub sources: Vec<SourceFile>,
}
