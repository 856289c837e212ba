//! `cargo xtask cycles`: import cycles between a crate's modules.
//!
//! A module that every update path needs (the log, the settings) must know no path, or each new
//! path grows a knot that the next one has to untie. The check reads the crate's sources with
//! `syn`, follows `mod` declarations from the crate root (skipping `#[cfg(test)]` items: tests may
//! reach anywhere), resolves every `crate::` / `super::` / `self::` path and every path through a
//! child module to the deepest module it names, and reports each strongly connected group of
//! modules. A module using its own ancestors' items does not count (a child implementing its
//! parent's trait is how Rust modules are meant to be used); a parent using its child's items
//! does, so a cycle through a child (`runner -> backend -> backend::emu -> runner`) is found.

use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// A module's absolute path below the crate root (`[]` is the root, `["proto", "arduino"]` is
/// `crate::proto::arduino`).
type ModPath = Vec<String>;

/// One module as read from the sources: its file and the absolute paths it mentions.
struct Module {
    file: PathBuf,
    /// Paths this module names, already made absolute where they start with `crate`, `super`,
    /// `self` or a child module's name; others (std, other crates, local items) are dropped.
    mentions: Vec<ModPath>,
}

/// A dependency of one module on another, with one path that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub file: PathBuf,
    pub via: String,
}

/// A group of modules that import each other (directly or round a loop).
#[derive(Debug)]
pub struct Cycle {
    pub modules: Vec<String>,
    /// The dependencies inside the group.
    pub edges: Vec<Edge>,
}

fn display(path: &[String]) -> String {
    if path.is_empty() { "crate".to_string() } else { path.join("::") }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| matches!(&m, syn::Meta::Path(p) if p.is_ident("test")))
    })
}

/// Where `mod name;` in `file` (of module `module`) is: `#[path]`, `name.rs` or `name/mod.rs`.
fn child_file(file: &Path, is_dir_owner: bool, name: &str, attrs: &[syn::Attribute]) -> PathBuf {
    let dir = if is_dir_owner {
        file.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        file.with_extension("")
    };
    for a in attrs {
        if a.path().is_ident("path")
            && let syn::Meta::NameValue(nv) = &a.meta
            && let syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) = &nv.value
        {
            return dir.join(s.value());
        }
    }
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() { flat } else { dir.join(name).join("mod.rs") }
}

/// Collects the paths named in a module's own items (not in its child modules').
struct PathCollector {
    raw: Vec<Vec<String>>,
}

impl PathCollector {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.raw.push(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.raw.push(full);
            }
            syn::UseTree::Glob(_) => self.raw.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if !is_cfg_test(&u.attrs) {
            self.use_tree(&mut Vec::new(), &u.tree);
        }
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.raw.push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // A child module is read on its own.
    }
    fn visit_item(&mut self, i: &'ast syn::Item) {
        let attrs = match i {
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(x) => &x.attrs,
            syn::Item::Struct(x) => &x.attrs,
            syn::Item::Enum(x) => &x.attrs,
            syn::Item::Const(x) => &x.attrs,
            syn::Item::Static(x) => &x.attrs,
            syn::Item::Trait(x) => &x.attrs,
            syn::Item::Type(x) => &x.attrs,
            syn::Item::Macro(x) => &x.attrs,
            _ => return syn::visit::visit_item(self, i),
        };
        if !is_cfg_test(attrs) {
            syn::visit::visit_item(self, i);
        }
    }
}

/// Reads a crate's module tree from its root file (`src/lib.rs` or `src/main.rs`).
fn read_crate(root_file: &Path) -> anyhow::Result<BTreeMap<ModPath, Module>> {
    let mut modules = BTreeMap::new();
    let text =
        std::fs::read_to_string(root_file).with_context(|| format!("reading {}", root_file.display()))?;
    let file = syn::parse_file(&text).with_context(|| format!("parsing {}", root_file.display()))?;
    read_items(&mut modules, Vec::new(), root_file, true, &file.items)?;
    Ok(modules)
}

fn read_items(
    modules: &mut BTreeMap<ModPath, Module>,
    path: ModPath,
    file: &Path,
    is_dir_owner: bool,
    items: &[syn::Item],
) -> anyhow::Result<()> {
    let mut children = BTreeSet::new();
    let mut collector = PathCollector { raw: Vec::new() };
    for item in items {
        collector.visit_item(item);
        let syn::Item::Mod(m) = item else { continue };
        if is_cfg_test(&m.attrs) {
            continue;
        }
        let name = m.ident.to_string();
        children.insert(name.clone());
        let mut child = path.clone();
        child.push(name.clone());
        match &m.content {
            Some((_, inner)) => read_items(modules, child, file, is_dir_owner, inner)?,
            None => {
                let child_file = child_file(file, is_dir_owner, &name, &m.attrs);
                let text = std::fs::read_to_string(&child_file).with_context(|| {
                    format!("reading {} (module {})", child_file.display(), display(&child))
                })?;
                let parsed =
                    syn::parse_file(&text).with_context(|| format!("parsing {}", child_file.display()))?;
                let owns_dir = child_file.file_name().is_some_and(|n| n == "mod.rs");
                read_items(modules, child, &child_file, owns_dir, &parsed.items)?;
            }
        }
    }
    let mentions = collector.raw.into_iter().filter_map(|raw| absolute(&path, &children, &raw)).collect();
    modules.insert(path, Module { file: file.to_path_buf(), mentions });
    Ok(())
}

/// `raw` as named in module `at`, made absolute; `None` for paths outside the crate.
fn absolute(at: &[String], children: &BTreeSet<String>, raw: &[String]) -> Option<ModPath> {
    let (first, rest) = raw.split_first()?;
    let mut base: ModPath = match first.as_str() {
        "crate" => Vec::new(),
        "self" => at.to_vec(),
        "super" => {
            let mut b = at.to_vec();
            b.pop();
            let mut rest = rest;
            while rest.first().is_some_and(|s| s == "super") {
                b.pop();
                rest = &rest[1..];
            }
            b.extend(rest.iter().cloned());
            return Some(b);
        }
        name if children.contains(name) => {
            let mut b = at.to_vec();
            b.push(name.to_string());
            b
        }
        _ => return None,
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The module dependencies of a crate, one edge per (from, to) pair.
pub fn edges(root_file: &Path) -> anyhow::Result<Vec<Edge>> {
    let modules = read_crate(root_file)?;
    let mut found: BTreeMap<(ModPath, ModPath), Edge> = BTreeMap::new();
    for (from, module) in &modules {
        for mention in &module.mentions {
            // The deepest module the path names.
            let Some(to) =
                (0..=mention.len()).rev().map(|n| &mention[..n]).find(|p| modules.contains_key(*p))
            else {
                continue;
            };
            // A module using its own ancestors' items (`super::Trait`) is how Rust modules are
            // meant to be used; a parent using its child's items is a dependency like any other.
            if from.starts_with(to) {
                continue;
            }
            found.entry((from.clone(), to.to_vec())).or_insert_with(|| Edge {
                from: display(from),
                to: display(to),
                file: module.file.clone(),
                via: format!("crate::{}", mention.join("::")),
            });
        }
    }
    Ok(found.into_values().collect())
}

/// Strongly connected groups of more than one module (Tarjan's algorithm).
pub fn cycles(edges: &[Edge]) -> Vec<Cycle> {
    let mut names: Vec<&str> = edges.iter().flat_map(|e| [e.from.as_str(), e.to.as_str()]).collect();
    names.sort_unstable();
    names.dedup();
    let index = |n: &str| names.binary_search(&n).expect("every edge end is a name");
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for e in edges {
        out[index(&e.from)].push(index(&e.to));
    }

    struct Tarjan<'a> {
        out: &'a [Vec<usize>],
        order: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        groups: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.order[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.out[v] {
                match self.order[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(o) if self.on_stack[w] => self.low[v] = self.low[v].min(o),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.order[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    group.push(w);
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    self.groups.push(group);
                }
            }
        }
    }
    let n = names.len();
    let mut t = Tarjan {
        out: &out,
        order: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        groups: Vec::new(),
    };
    for v in 0..n {
        if t.order[v].is_none() {
            t.visit(v);
        }
    }
    let mut cycles: Vec<Cycle> = t
        .groups
        .into_iter()
        .map(|g| {
            let mut modules: Vec<String> = g.iter().map(|&i| names[i].to_string()).collect();
            modules.sort();
            let edges = edges
                .iter()
                .filter(|e| modules.contains(&e.from) && modules.contains(&e.to))
                .cloned()
                .collect();
            Cycle { modules, edges }
        })
        .collect();
    cycles.sort_by(|a, b| a.modules.cmp(&b.modules));
    cycles
}

/// The crates whose modules must stay acyclic, by root file below the workspace.
pub const CHECKED: &[&str] = &["firmware/core/src/lib.rs", "harness/src/lib.rs"];

/// Checks every crate in [`CHECKED`]; an error lists each cycle and the paths that make it.
pub fn check(workspace: &Path) -> anyhow::Result<()> {
    let mut report = String::new();
    for root in CHECKED {
        let edges = edges(&workspace.join(root))?;
        let found = cycles(&edges);
        if found.is_empty() {
            println!("cycles: {root}: none among {} module dependencies", edges.len());
            continue;
        }
        for c in &found {
            report.push_str(&format!(
                "{root}: {} modules import each other: {}\n",
                c.modules.len(),
                c.modules.join(", ")
            ));
            for e in &c.edges {
                let file = e.file.strip_prefix(workspace).unwrap_or(&e.file);
                report.push_str(&format!("  {} -> {} ({} in {})\n", e.from, e.to, e.via, file.display()));
            }
        }
    }
    if !report.is_empty() {
        bail!("import cycles between modules:\n{report}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir.join("lib.rs")
    }

    #[test]
    fn finds_a_cycle_through_use_groups_and_child_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = write(
            dir.path(),
            &[
                ("lib.rs", "pub mod log; pub mod proto; pub mod leaf;"),
                ("log.rs", "use crate::{proto::{arduino::Error as E}, leaf};"),
                ("proto.rs", "pub mod arduino;"),
                ("proto/arduino.rs", "pub fn f() { crate::log::line(); super::super::leaf::x(); }"),
                ("leaf.rs", "pub fn x() {}"),
            ],
        );
        let edges = edges(&root).unwrap();
        let found = cycles(&edges);
        assert_eq!(found.len(), 1, "{edges:?}");
        assert_eq!(found[0].modules, ["log", "proto::arduino"]);
        assert_eq!(found[0].edges.len(), 2);
        assert!(edges.iter().any(|e| e.from == "proto::arduino" && e.to == "leaf"));
    }

    #[test]
    fn ancestors_and_tests_are_no_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let root = write(
            dir.path(),
            &[
                ("lib.rs", "pub mod proto; pub mod log; pub const N: u32 = 1;"),
                ("proto.rs", "pub mod esphome; pub use esphome::Server; pub trait P {} use crate::log::X;"),
                (
                    "proto/esphome.rs",
                    "use super::P; use crate::N; pub struct Server; #[cfg(test)] mod tests;",
                ),
                // Tests may reach anywhere: this file is never read.
                ("proto/esphome/tests.rs", "use crate::log::*;"),
                ("log.rs", "pub struct X; #[cfg(test)] fn t() { crate::proto::esphome::Server; }"),
            ],
        );
        let edges = edges(&root).unwrap();
        assert!(cycles(&edges).is_empty(), "{edges:?}");
        assert_eq!(
            edges.iter().map(|e| (e.from.as_str(), e.to.as_str())).collect::<Vec<_>>(),
            [("proto", "log"), ("proto", "proto::esphome")],
            "esphome's `super::P` and `crate::N` are uses of its ancestors"
        );
    }

    #[test]
    fn inline_modules_and_mod_rs() {
        let dir = tempfile::tempdir().unwrap();
        let root = write(
            dir.path(),
            &[
                ("lib.rs", "pub mod a; mod b { pub fn f() { crate::a::inner::g(); } }"),
                ("a/mod.rs", "pub mod inner;"),
                ("a/inner.rs", "pub fn g() { crate::b::f(); }"),
            ],
        );
        let found = cycles(&edges(&root).unwrap());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].modules, ["a::inner", "b"]);
    }

    /// The project's own crates: this is what keeps cycles from growing back.
    #[test]
    fn project_crates_have_no_import_cycles() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        if let Err(e) = check(workspace) {
            panic!("{e:#}");
        }
    }
}
