//! The boundary rules, as one pure function over a [`Model`].
//!
//! - **R1**: a workspace crate under `linux-proxy/` reaches no local crate under `components/`
//!   other than those in [`PROXY_MAY_USE`] (`ppn-wire`), through normal or build dependencies,
//!   transitively. **R1-dev**: the same through a dev-dependency of the proxy crate (dev-deps
//!   of dependencies are never built, so only the first hop may be a dev edge).
//! - **R2**: a workspace crate under `components/` reaches, through normal or build
//!   dependencies, no local crate outside `components/` (registry and git crates are allowed).
//! - **R3**: every workspace crate under `components/`, `linux-proxy/` and `tools/` has
//!   `[lints] workspace = true`; every one under `components/` has a library root holding
//!   `#![no_std]` and `#![forbid(unsafe_code)]`.
//! - **R4**: no `.rs` file outside `system/` uses the `unsafe` keyword.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use crate::model::{Area, DepKind, Model, Package};
use crate::scan;

/// The only trusted crates that untrusted proxy code may depend on.
pub const PROXY_MAY_USE: &[&str] = &["ppn-wire"];

/// Accepted spellings (whitespace removed) of the `no_std` attribute in a trusted core.
pub const NO_STD_FORMS: &[&str] = &["#![no_std]", "#![cfg_attr(not(test),no_std)]"];

/// Accepted spellings (whitespace removed) of the unsafe ban in a trusted core.
pub const FORBID_UNSAFE_FORMS: &[&str] = &["#![forbid(unsafe_code)]"];

/// Which rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    R1,
    R1Dev,
    R2,
    R3,
    R4,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::R1 => "R1",
            Rule::R1Dev => "R1-dev",
            Rule::R2 => "R2",
            Rule::R3 => "R3",
            Rule::R4 => "R4",
        })
    }
}

/// One broken rule: where (a dependency path, a manifest, a file and line) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    /// A dependency path (`linux-proxy/foo (ppn-foo) -> ppn-bar -> ppn-ledger`), a manifest
    /// path, or `file:line`.
    pub location: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.rule, self.location, self.message)
    }
}

/// What was checked, for the one-line summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Workspace members, by area.
    pub members: BTreeMap<String, usize>,
    pub source_files: usize,
}

impl Counts {
    pub fn of(model: &Model) -> Self {
        let mut members = BTreeMap::new();
        for p in model.packages.iter().filter(|p| p.member) {
            let area = p.dir.as_deref().and_then(|d| d.split('/').next()).unwrap_or("?");
            *members.entry(area.to_string()).or_insert(0) += 1;
        }
        Self { members, source_files: model.sources.len() }
    }

    pub fn total_members(&self) -> usize {
        self.members.values().sum()
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let areas: Vec<String> = self.members.iter().map(|(a, n)| format!("{n} {a}")).collect();
        write!(
            f,
            "{} workspace crates ({}), {} .rs files scanned",
            self.total_members(),
            areas.join(", "),
            self.source_files
        )
    }
}

/// Runs every rule over `model`; returns the violations, sorted by rule then location.
pub fn check(model: &Model) -> Vec<Violation> {
    let graph = Graph::new(model);
    let mut out = Vec::new();
    check_r1(model, &graph, &mut out);
    check_r2(model, &graph, &mut out);
    check_r3(model, &mut out);
    check_r4(model, &mut out);
    out.sort_by(|a, b| (a.rule, &a.location).cmp(&(b.rule, &b.location)));
    out
}

/// Adjacency lists by package id, with the kinds of each dependency merged.
struct Graph<'m> {
    packages: HashMap<&'m str, &'m Package>,
    deps: HashMap<&'m str, Vec<(&'m str, Kinds)>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Kinds {
    normal: bool,
    build: bool,
    dev: bool,
}

impl Kinds {
    fn builds(self) -> bool {
        self.normal || self.build
    }

    /// The arrow for a normal/build step.
    fn arrow(self) -> &'static str {
        if self.normal { " -> " } else { " -(build)-> " }
    }
}

impl<'m> Graph<'m> {
    fn new(model: &'m Model) -> Self {
        let packages = model.packages.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut deps: HashMap<&str, Vec<(&str, Kinds)>> = HashMap::new();
        for e in &model.edges {
            let list = deps.entry(e.from.as_str()).or_default();
            let idx = match list.iter().position(|(to, _)| *to == e.to) {
                Some(idx) => idx,
                None => {
                    list.push((e.to.as_str(), Kinds::default()));
                    list.len() - 1
                }
            };
            let kinds = &mut list[idx].1;
            match e.kind {
                DepKind::Normal => kinds.normal = true,
                DepKind::Build => kinds.build = true,
                DepKind::Dev => kinds.dev = true,
            }
        }
        Self { packages, deps }
    }

    fn name(&self, id: &str) -> String {
        self.packages.get(id).map_or_else(|| id.to_string(), |p| p.name.clone())
    }

    fn deps(&self, id: &str) -> &[(&'m str, Kinds)] {
        self.deps.get(id).map_or(&[], Vec::as_slice)
    }

    /// Breadth-first over normal and build edges from `seeds` (each with the path text that
    /// reaches it), calling `forbidden` on every package reached; returns the shortest path
    /// text to each package for which it returned true. A forbidden package is not traversed
    /// further: its own dependencies are reported from it (if it is checked itself) or are
    /// beside the point.
    fn reach(
        &self,
        seeds: Vec<(&'m str, String)>,
        skip: &[&'m str],
        forbidden: impl Fn(&Package) -> bool,
    ) -> Vec<(&'m str, String)> {
        let mut seen: HashMap<&str, ()> = skip.iter().map(|id| (*id, ())).collect();
        let mut queue = VecDeque::new();
        for (id, path) in seeds {
            if seen.insert(id, ()).is_none() {
                queue.push_back((id, path));
            }
        }
        let mut found = Vec::new();
        while let Some((id, path)) = queue.pop_front() {
            if self.packages.get(id).is_some_and(|p| forbidden(p)) {
                found.push((id, path));
                continue;
            }
            for &(to, kinds) in self.deps(id) {
                if kinds.builds() && seen.insert(to, ()).is_none() {
                    queue.push_back((to, format!("{path}{}{}", kinds.arrow(), self.name(to))));
                }
            }
        }
        found
    }
}

fn members_in(model: &Model, area: Area) -> impl Iterator<Item = &Package> {
    model.packages.iter().filter(move |p| p.member && p.area() == Some(area))
}

fn trusted_core_not_for_proxy(p: &Package) -> bool {
    p.area() == Some(Area::Components) && !PROXY_MAY_USE.contains(&p.name.as_str())
}

fn check_r1(model: &Model, graph: &Graph<'_>, out: &mut Vec<Violation>) {
    for proxy in members_in(model, Area::LinuxProxy) {
        let start = proxy.label();
        let seeds = vec![(proxy.id.as_str(), start.clone())];
        let built = graph.reach(seeds, &[], trusted_core_not_for_proxy);
        for (id, path) in &built {
            out.push(Violation {
                rule: Rule::R1,
                location: path.clone(),
                message: format!(
                    "untrusted proxy code reaches the trusted core {}; only {} may be used",
                    graph.name(id),
                    PROXY_MAY_USE.join(", ")
                ),
            });
        }
        // Dev-dependencies of the proxy crate itself, then whatever they build.
        let dev_seeds: Vec<(&str, String)> = graph
            .deps(&proxy.id)
            .iter()
            .filter(|(_, k)| k.dev)
            .map(|&(to, _)| (to, format!("{start} -(dev)-> {}", graph.name(to))))
            .collect();
        let already: Vec<&str> = built.iter().map(|(id, _)| *id).collect();
        for (id, path) in graph.reach(dev_seeds, &already, trusted_core_not_for_proxy) {
            out.push(Violation {
                rule: Rule::R1Dev,
                location: path,
                message: format!(
                    "the proxy crate's tests reach the trusted core {}; only {} may be used",
                    graph.name(id),
                    PROXY_MAY_USE.join(", ")
                ),
            });
        }
    }
}

fn check_r2(model: &Model, graph: &Graph<'_>, out: &mut Vec<Violation>) {
    let outside = |p: &Package| p.area().is_some_and(|a| a != Area::Components);
    for core in members_in(model, Area::Components) {
        let seeds = vec![(core.id.as_str(), core.label())];
        for (id, path) in graph.reach(seeds, &[], outside) {
            let dep = graph.packages[id];
            out.push(Violation {
                rule: Rule::R2,
                location: path,
                message: format!("trusted core depends on {}, a local crate outside components/", dep.label()),
            });
        }
    }
}

fn check_r3(model: &Model, out: &mut Vec<Violation>) {
    for p in model.packages.iter().filter(|p| p.member) {
        let Some(area) = p.area() else { continue };
        if !matches!(area, Area::Components | Area::LinuxProxy | Area::Tools) {
            continue;
        }
        let dir = p.dir.as_deref().unwrap_or("?");
        if !p.lints_workspace {
            out.push(Violation {
                rule: Rule::R3,
                location: format!("{dir}/Cargo.toml ({})", p.name),
                message: "missing `[lints] workspace = true` (the workspace lints forbid unsafe_code)".to_string(),
            });
        }
        if area != Area::Components {
            continue;
        }
        match &p.lib_root {
            None => out.push(Violation {
                rule: Rule::R3,
                location: format!("{dir}/src/lib.rs ({})", p.name),
                message: "trusted core has no readable library root".to_string(),
            }),
            Some(lib) => {
                for (forms, what) in [(NO_STD_FORMS, "#![no_std]"), (FORBID_UNSAFE_FORMS, "#![forbid(unsafe_code)]")] {
                    if !scan::has_inner_attribute(&lib.text, forms) {
                        out.push(Violation {
                            rule: Rule::R3,
                            location: format!("{} ({})", lib.path, p.name),
                            message: format!("trusted core's library root lacks `{what}`"),
                        });
                    }
                }
            }
        }
    }
}

fn check_r4(model: &Model, out: &mut Vec<Violation>) {
    for file in &model.sources {
        if Area::of(&file.path) == Area::System {
            continue;
        }
        for (line, text) in scan::unsafe_lines(&file.text) {
            out.push(Violation {
                rule: Rule::R4,
                location: format!("{}:{line}", file.path),
                message: format!("`unsafe` outside system/: {text}"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Edge, SourceFile};

    const KW: &str = concat!("un", "safe");

    /// A clean workspace member at `dir` named `name` (id = name).
    fn member(dir: &str, name: &str) -> Package {
        let lib_root = (Area::of(dir) == Area::Components)
            .then(|| SourceFile::new(format!("{dir}/src/lib.rs"), "//! Core.\n#![no_std]\n#![forbid(unsafe_code)]\n"));
        Package {
            id: name.to_string(),
            name: name.to_string(),
            dir: Some(dir.to_string()),
            member: true,
            lints_workspace: true,
            lib_root,
        }
    }

    fn registry(name: &str) -> Package {
        Package {
            id: name.to_string(),
            name: name.to_string(),
            dir: None,
            member: false,
            lints_workspace: false,
            lib_root: None,
        }
    }

    fn clean() -> Model {
        Model {
            packages: vec![
                member("components/wire", "ppn-wire"),
                member("components/ledger", "ppn-ledger"),
                member("system/hosted", "ppn-tcb"),
                member("linux-proxy/tcb-client", "ppn-tcb-client"),
                member("linux-proxy/proxy", "ppn-proxy"),
                member("tools/ppn", "ppn"),
                member("qemu-tests/conformance", "ppn-conformance"),
                registry("serde"),
                registry("tokio"),
                registry("cc"),
                registry("proptest"),
            ],
            edges: vec![
                Edge::new("ppn-wire", "serde", DepKind::Normal),
                Edge::new("ppn-wire", "proptest", DepKind::Dev),
                Edge::new("ppn-ledger", "ppn-wire", DepKind::Normal),
                Edge::new("ppn-tcb", "ppn-ledger", DepKind::Normal),
                Edge::new("ppn-tcb", "ppn-wire", DepKind::Normal),
                Edge::new("ppn-tcb", "cc", DepKind::Build),
                Edge::new("ppn-tcb-client", "ppn-wire", DepKind::Normal),
                Edge::new("ppn-tcb-client", "tokio", DepKind::Normal),
                Edge::new("ppn-proxy", "ppn-tcb-client", DepKind::Normal),
                Edge::new("ppn", "ppn-tcb-client", DepKind::Normal),
                Edge::new("ppn-conformance", "ppn-tcb-client", DepKind::Normal),
                // The conformance suite may use cores; the proxy just must not reach it.
                Edge::new("ppn-conformance", "ppn-ledger", DepKind::Normal),
            ],
            sources: vec![
                SourceFile::new("components/wire/src/lib.rs", "#![no_std]\n#![forbid(unsafe_code)]\n"),
                SourceFile::new("tools/ppn/src/main.rs", format!("// no {KW} here\nfn main() {{}}\n")),
                SourceFile::new("system/hosted/src/mem.rs", format!("{KW} fn peek() {{}}\n")),
            ],
        }
    }

    fn pkg<'a>(m: &'a mut Model, name: &str) -> &'a mut Package {
        m.packages.iter_mut().find(|p| p.name == name).unwrap()
    }

    fn rules(v: &[Violation]) -> Vec<Rule> {
        v.iter().map(|v| v.rule).collect()
    }

    #[test]
    fn clean_model_passes() {
        let v = check(&clean());
        assert!(v.is_empty(), "{v:#?}");
    }

    #[test]
    fn r1_proxy_reaching_a_core_through_an_intermediate_crate() {
        let mut m = clean();
        m.packages.push(member("linux-proxy/foo", "ppn-foo"));
        m.packages.push(member("tools/bar", "ppn-bar"));
        m.edges.push(Edge::new("ppn-foo", "ppn-bar", DepKind::Normal));
        m.edges.push(Edge::new("ppn-bar", "ppn-ledger", DepKind::Normal));
        let v = check(&m);
        assert_eq!(rules(&v), vec![Rule::R1], "{v:#?}");
        assert_eq!(v[0].location, "linux-proxy/foo (ppn-foo) -> ppn-bar -> ppn-ledger");
        assert!(v[0].message.contains("ppn-ledger"));
    }

    #[test]
    fn r1_through_a_build_dependency() {
        let mut m = clean();
        m.edges.push(Edge::new("ppn-tcb-client", "ppn-tcb", DepKind::Build));
        let v = check(&m);
        // ppn-tcb-client is reached by ppn-proxy too, so both proxy crates are reported.
        assert_eq!(rules(&v), vec![Rule::R1, Rule::R1], "{v:#?}");
        assert!(
            v.iter().any(|v| v.location == "linux-proxy/tcb-client (ppn-tcb-client) -(build)-> ppn-tcb -> ppn-ledger")
        );
        assert!(
            v.iter()
                .any(|v| v.location
                    == "linux-proxy/proxy (ppn-proxy) -> ppn-tcb-client -(build)-> ppn-tcb -> ppn-ledger")
        );
    }

    #[test]
    fn r1_dev_dependency_on_a_core() {
        let mut m = clean();
        m.edges.push(Edge::new("ppn-tcb-client", "ppn-conformance", DepKind::Dev));
        let v = check(&m);
        assert_eq!(rules(&v), vec![Rule::R1Dev], "{v:#?}");
        assert_eq!(v[0].location, "linux-proxy/tcb-client (ppn-tcb-client) -(dev)-> ppn-conformance -> ppn-ledger");
    }

    #[test]
    fn r1_dev_deps_of_dependencies_are_not_followed() {
        // ppn-ledger as a dev-dep of ppn-tcb-client is never built for ppn-proxy.
        let mut m = clean();
        m.edges.push(Edge::new("ppn-tcb-client", "ppn-ledger", DepKind::Dev));
        let v = check(&m);
        assert_eq!(rules(&v), vec![Rule::R1Dev], "{v:#?}");
        assert!(v[0].location.starts_with("linux-proxy/tcb-client"));
    }

    #[test]
    fn r1_dependency_of_both_kinds_is_reported_once() {
        let mut m = clean();
        m.edges.push(Edge::new("ppn-tcb-client", "ppn-ledger", DepKind::Normal));
        m.edges.push(Edge::new("ppn-tcb-client", "ppn-ledger", DepKind::Dev));
        let v = check(&m);
        assert_eq!(rules(&v), vec![Rule::R1, Rule::R1], "{v:#?}"); // tcb-client and proxy
    }

    #[test]
    fn r1_non_member_core_crate_counts() {
        let mut m = clean();
        let mut fuzz = member("components/wire/fuzz", "ppn-wire-fuzz");
        fuzz.member = false;
        m.packages.push(fuzz);
        m.edges.push(Edge::new("ppn-tcb-client", "ppn-wire-fuzz", DepKind::Normal));
        let v = check(&m);
        assert_eq!(rules(&v), vec![Rule::R1, Rule::R1], "{v:#?}");
    }

    #[test]
    fn r2_component_depending_on_a_proxy_crate() {
        let mut m = clean();
        m.edges.push(Edge::new("ppn-ledger", "ppn-tcb-client", DepKind::Normal));
        let v = check(&m);
        assert_eq!(rules(&v), vec![Rule::R2], "{v:#?}");
        assert_eq!(v[0].location, "components/ledger (ppn-ledger) -> ppn-tcb-client");
        assert!(v[0].message.contains("linux-proxy/tcb-client"));
    }

    #[test]
    fn r2_transitive_and_build_dependencies() {
        let mut m = clean();
        m.packages.push(member("tools/gen", "ppn-gen"));
        m.edges.push(Edge::new("ppn-wire", "ppn-gen", DepKind::Build));
        let v = check(&m);
        // ppn-wire directly, ppn-ledger through ppn-wire.
        let locations: Vec<&str> = v.iter().map(|v| v.location.as_str()).collect();
        assert_eq!(
            locations,
            vec![
                "components/ledger (ppn-ledger) -> ppn-wire -(build)-> ppn-gen",
                "components/wire (ppn-wire) -(build)-> ppn-gen",
            ],
            "{v:#?}"
        );
        assert!(v.iter().all(|v| v.rule == Rule::R2));
    }

    #[test]
    fn r2_ignores_dev_dependencies_and_registry_crates() {
        let mut m = clean();
        m.edges.push(Edge::new("ppn-ledger", "ppn-conformance", DepKind::Dev));
        m.edges.push(Edge::new("ppn-ledger", "tokio", DepKind::Normal));
        assert!(check(&m).is_empty());
    }

    #[test]
    fn r3_missing_lints_table() {
        let mut m = clean();
        pkg(&mut m, "ppn-tcb-client").lints_workspace = false;
        pkg(&mut m, "ppn").lints_workspace = false;
        pkg(&mut m, "ppn-tcb").lints_workspace = false; // system/ keeps its own table
        pkg(&mut m, "ppn-conformance").lints_workspace = false; // not covered by R3
        let v = check(&m);
        let locations: Vec<&str> = v.iter().map(|v| v.location.as_str()).collect();
        assert_eq!(locations, vec!["linux-proxy/tcb-client/Cargo.toml (ppn-tcb-client)", "tools/ppn/Cargo.toml (ppn)"]);
        assert!(v.iter().all(|v| v.rule == Rule::R3));
    }

    #[test]
    fn r3_core_without_no_std_or_forbid() {
        let mut m = clean();
        pkg(&mut m, "ppn-ledger").lib_root =
            Some(SourceFile::new("components/ledger/src/lib.rs", "// #![no_std]\npub fn f() {}\n"));
        pkg(&mut m, "ppn-wire").lib_root = None;
        let v = check(&m);
        assert_eq!(rules(&v), vec![Rule::R3; 3], "{v:#?}");
        assert!(v[0].message.contains("#![no_std]"));
        assert!(v[1].message.contains("#![forbid(unsafe_code)]"));
        assert!(v[2].message.contains("no readable library root"));
    }

    #[test]
    fn r3_accepts_no_std_outside_tests() {
        let mut m = clean();
        pkg(&mut m, "ppn-ledger").lib_root = Some(SourceFile::new(
            "components/ledger/src/lib.rs",
            "#![cfg_attr(not(test), no_std)]\n#![forbid(unsafe_code)]\n",
        ));
        assert!(check(&m).is_empty());
    }

    #[test]
    fn r4_unsafe_block_outside_system() {
        let mut m = clean();
        m.sources.push(SourceFile::new(
            "linux-proxy/tcb-client/src/lib.rs",
            format!("fn f(p: *const u8) -> u8 {{\n    {KW} {{ *p }}\n}}\n"),
        ));
        m.sources.push(SourceFile::new("scripts/gen.rs", format!("{KW} impl Send for X {{}}\n")));
        let v = check(&m);
        assert_eq!(rules(&v), vec![Rule::R4, Rule::R4], "{v:#?}");
        assert_eq!(v[0].location, "linux-proxy/tcb-client/src/lib.rs:2");
        assert_eq!(v[1].location, "scripts/gen.rs:1");
    }

    #[test]
    fn display_format() {
        let v = Violation { rule: Rule::R1Dev, location: "a -> b".into(), message: "why".into() };
        assert_eq!(v.to_string(), "[R1-dev] a -> b: why");
        let counts = Counts::of(&clean());
        assert_eq!(
            counts.to_string(),
            "7 workspace crates (2 components, 2 linux-proxy, 1 qemu-tests, 1 system, 1 tools), 3 .rs files scanned"
        );
    }
}
