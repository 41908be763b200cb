//! The architecture, checked (in the style of rust-analyzer's tidy tests): which workspace
//! crate may depend on or import which, and that every source file says what it holds. It reads
//! the manifests and sources only; nothing is built or run.
//!
//! The rules are a table ([`RULES`]). A rule marked [`Status::Pending`] describes where the
//! workspace is going rather than where it is: it is checked and its failures are printed, but
//! it does not fail the test. Once the change it waits for is merged, flip it to
//! [`Status::Enforced`] (the test output says when a pending rule already holds).
//!
//! Not here: the fuzz crate (`fuzz/`, its own workspace, allowed to reach into every library).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The crates that run as processes (one binary each); none may build on another.
const PROCESS_CRATES: &[&str] = &[
    "milter-gateway",
    "check-workers",
    "auditor",
    "bounce-ingest",
];

/// Dev-dependencies between process crates that are allowed, as `(crate, on)`. None exist today
/// (the whole-pipeline tests live in `test-support`, which may use them all).
const PROCESS_DEV_EXCEPTIONS: &[(&str, &str)] = &[];

enum Status {
    Enforced,
    /// Waits for the change described; fails only in the output, not the test.
    // no rule waits today; kept so the next structural change can land its rule first
    #[allow(dead_code)]
    Pending(&'static str),
}

enum Rule {
    /// `krate` has none of `on` among its dependencies (any section, any target).
    NoDependencyOn {
        krate: &'static str,
        on: &'static [&'static str],
    },
    /// Of the workspace's crates, `krate` depends (any section) on `may_use` only. Holds
    /// trivially while `krate` does not exist.
    SiblingsOnly {
        krate: &'static str,
        may_use: &'static [&'static str],
    },
    /// No process crate depends on another, except the dev-dependencies listed.
    ProcessCratesIndependent {
        dev_exceptions: &'static [(&'static str, &'static str)],
    },
    /// Other crates have `krate` as a dev-dependency only.
    DevOnly { krate: &'static str },
    /// Code names sibling crates only through dependencies it has: `src/` its normal ones,
    /// tests, benches and examples also its dev-dependencies.
    ImportsFollowDependencies,
    /// Every `.rs` file under a crate's `src/` opens with a `//!` comment.
    SourcesOpenWithInnerDoc,
    /// A folder of modules in layers (the auditor's web interface): its `mod.rs` wires the
    /// `pages` together; a page names no other page, only the `shared` modules; a shared
    /// module names no page. Every module of the folder is one or the other.
    Layers {
        /// Relative to the workspace root.
        dir: &'static str,
        pages: &'static [&'static str],
        shared: &'static [&'static str],
    },
}

/// The auditor's web interface: pages over shared modules (auditor/src/web/mod.rs).
const WEB_LAYERS: Rule = Rule::Layers {
    dir: "auditor/src/web",
    pages: &[
        "bounces", "login", "message", "openapi", "quotas", "search", "stats",
    ],
    shared: &[
        "auth", "error", "format", "nav", "params", "server", "state", "svg", "terminal",
        "throttle",
    ],
};

const RULES: &[(Rule, Status)] = &[
    (
        Rule::NoDependencyOn {
            krate: "wire",
            on: &["tokio", "lapin", "sqlx"],
        },
        // the contract must build anywhere (a tool, a test) without an async runtime
        Status::Enforced,
    ),
    (
        Rule::SiblingsOnly {
            krate: "wire",
            may_use: &[],
        },
        Status::Enforced,
    ),
    (
        Rule::SiblingsOnly {
            krate: "platform",
            may_use: &["wire"],
        },
        Status::Enforced,
    ),
    (
        Rule::ProcessCratesIndependent {
            dev_exceptions: PROCESS_DEV_EXCEPTIONS,
        },
        Status::Enforced,
    ),
    (
        Rule::DevOnly {
            krate: "test-support",
        },
        Status::Enforced,
    ),
    (Rule::ImportsFollowDependencies, Status::Enforced),
    (Rule::SourcesOpenWithInnerDoc, Status::Enforced),
    // page modules import each other in a circle no more (issue 13)
    (WEB_LAYERS, Status::Enforced),
];

#[test]
fn architecture_rules_hold() {
    let workspace = Workspace::read();
    let mut failures = Vec::new();
    for (rule, status) in RULES {
        let broken = workspace.check(rule);
        match status {
            Status::Enforced => failures.extend(broken),
            Status::Pending(waiting_for) if broken.is_empty() => {
                eprintln!("tidy: a pending rule holds now; flip it to Enforced ({waiting_for})");
            }
            Status::Pending(waiting_for) => {
                for failure in broken {
                    eprintln!("tidy: pending ({waiting_for}): {failure}");
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "architecture rules broken:\n  {}",
        failures.join("\n  ")
    );
}

/// A rule that must fail on a workspace that breaks it (the checks are not vacuous).
#[test]
fn the_rules_catch_what_they_forbid() {
    let mut workspace = Workspace::read();
    // a process crate on another
    workspace.crate_mut("auditor").deps.insert(
        Section::Normal,
        BTreeSet::from(["check-workers".to_owned()]),
    );
    // test-support as a normal dependency
    workspace
        .crate_mut("bounce-ingest")
        .deps
        .entry(Section::Normal)
        .or_default()
        .insert("test-support".to_owned());
    // wire on a sibling and on lapin
    workspace
        .crate_mut("wire")
        .deps
        .entry(Section::Normal)
        .or_default()
        .extend(["milter-gateway".to_owned(), "lapin".to_owned()]);
    let broken: Vec<String> = RULES
        .iter()
        .flat_map(|(rule, _)| workspace.check(rule))
        .collect();
    for expected in [
        "auditor depends on the process crate check-workers",
        "bounce-ingest depends on test-support (not as a dev-dependency",
        "wire depends on milter-gateway",
        "wire depends on lapin",
    ] {
        assert!(
            broken.iter().any(|b| b.contains(expected)),
            "{expected:?} not reported in {broken:#?}"
        );
    }

    // a page that imports another page, a shared module that imports a page
    let root: &[&str] = &["search"];
    assert_eq!(
        web_modules_named("use super::message::load;", root),
        ["message"]
    );
    assert_eq!(
        web_modules_named("use super::{auth::Identity, message};", root),
        ["auth", "message"]
    );
    assert_eq!(
        web_modules_named("use crate::web::message::x;", &["search", "filter"]),
        ["message"]
    );
    assert_eq!(
        web_modules_named("use super::super::message::x;", &["search", "filter"]),
        ["message"]
    );
    // within a page's own folder `super::` is the page
    assert!(
        web_modules_named("use super::params::SearchParams;", &["search", "filter"]).is_empty()
    );
    assert!(web_modules_named("// super::message", root).is_empty());
    let broken = check_layers(
        &[
            (
                "search".to_owned(),
                vec!["search".to_owned()],
                "use super::message::x;".to_owned(),
            ),
            (
                "format".to_owned(),
                vec!["format".to_owned()],
                "use super::search::y;".to_owned(),
            ),
            ("extra".to_owned(), vec!["extra".to_owned()], String::new()),
        ],
        &["search", "message"],
        &["format"],
    );
    for expected in [
        "page search names the page message",
        "shared module format names the page search",
        "extra is neither a page nor a shared module",
    ] {
        assert!(
            broken.iter().any(|b| b.contains(expected)),
            "{expected:?} not reported in {broken:#?}"
        );
    }

    let names = workspace.lib_names();
    let use_of = |text: &str| named_crates(text, &names);
    assert_eq!(use_of("use check_workers::modules;"), ["check-workers"]);
    assert_eq!(use_of("    let x = ::wire::MessageId::new();"), ["wire"]);
    assert!(use_of("use crate::auditor::x; // wire::y").is_empty());
    assert!(use_of("/// see `auditor::store`").is_empty());
    assert!(use_of("let s = \"milter_gateway::x\";").is_empty());
    assert!(use_of("mod wire; self::wire::x").is_empty());
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Normal,
    Dev,
    Build,
}

struct Crate {
    /// The crate's directory.
    dir: PathBuf,
    /// The name its code uses (`[lib] name`, or the package name with `_`).
    lib_name: String,
    /// Dependencies by section, by the workspace's names for its own crates (directory names)
    /// and by package name for the rest.
    deps: BTreeMap<Section, BTreeSet<String>>,
}

struct Workspace {
    /// By directory name (`milter-gateway`, `wire`, …).
    crates: BTreeMap<String, Crate>,
}

impl Workspace {
    fn read() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let manifest = read_toml(&root.join("Cargo.toml"));
        let workspace = &manifest["workspace"];
        // `[workspace.dependencies]` entries that are our crates, to their directory names
        let mut local: BTreeMap<String, String> = BTreeMap::new();
        if let Some(deps) = workspace.get("dependencies").and_then(|d| d.as_table()) {
            for (key, spec) in deps {
                if let Some(path) = spec.get("path").and_then(|p| p.as_str()) {
                    local.insert(key.clone(), dir_name(path));
                }
            }
        }
        let mut crates = BTreeMap::new();
        for member in workspace["members"].as_array().unwrap() {
            let member = member.as_str().unwrap();
            let dir = root.join(member);
            let manifest = read_toml(&dir.join("Cargo.toml"));
            let package = manifest["package"]["name"].as_str().unwrap();
            let lib_name = manifest
                .get("lib")
                .and_then(|lib| lib.get("name"))
                .and_then(|name| name.as_str())
                .map_or_else(|| package.replace('-', "_"), str::to_owned);
            let mut deps: BTreeMap<Section, BTreeSet<String>> = BTreeMap::new();
            // the manifest's own sections and those of `[target.'cfg(…)']`
            let mut tables: Vec<&toml::Table> = vec![&manifest];
            if let Some(targets) = manifest.get("target").and_then(|t| t.as_table()) {
                tables.extend(targets.values().filter_map(|t| t.as_table()));
            }
            for table in tables {
                for (section, key) in [
                    (Section::Normal, "dependencies"),
                    (Section::Dev, "dev-dependencies"),
                    (Section::Build, "build-dependencies"),
                ] {
                    let Some(entries) = table.get(key).and_then(|d| d.as_table()) else {
                        continue;
                    };
                    for (name, spec) in entries {
                        let name = if let Some(path) = spec.get("path").and_then(|p| p.as_str()) {
                            dir_name(path)
                        } else if spec.get("workspace").and_then(|w| w.as_bool()) == Some(true) {
                            local.get(name).cloned().unwrap_or_else(|| name.clone())
                        } else {
                            spec.get("package")
                                .and_then(|p| p.as_str())
                                .unwrap_or(name)
                                .to_owned()
                        };
                        deps.entry(section).or_default().insert(name);
                    }
                }
            }
            crates.insert(
                dir_name(member),
                Crate {
                    dir,
                    lib_name,
                    deps,
                },
            );
        }
        Self { crates }
    }

    fn crate_mut(&mut self, name: &str) -> &mut Crate {
        self.crates.get_mut(name).unwrap()
    }

    /// The workspace's crates by the names their code uses.
    fn lib_names(&self) -> BTreeMap<String, String> {
        self.crates
            .iter()
            .map(|(name, krate)| (krate.lib_name.clone(), name.clone()))
            .collect()
    }

    /// What breaks the rule, one line each.
    fn check(&self, rule: &Rule) -> Vec<String> {
        let mut broken = Vec::new();
        match rule {
            Rule::NoDependencyOn { krate, on } => {
                if let Some(c) = self.crates.get(*krate) {
                    for (section, name) in c.all_deps() {
                        if on.contains(&name) {
                            broken.push(format!("{krate} depends on {name} ({section:?})"));
                        }
                    }
                }
            }
            Rule::SiblingsOnly { krate, may_use } => {
                if let Some(c) = self.crates.get(*krate) {
                    for (section, name) in c.all_deps() {
                        if self.crates.contains_key(name) && !may_use.contains(&name) {
                            broken.push(format!("{krate} depends on {name} ({section:?})"));
                        }
                    }
                }
            }
            Rule::ProcessCratesIndependent { dev_exceptions } => {
                for krate in PROCESS_CRATES {
                    let Some(c) = self.crates.get(*krate) else {
                        continue;
                    };
                    for (section, name) in c.all_deps() {
                        if name != *krate
                            && PROCESS_CRATES.contains(&name)
                            && !(section == Section::Dev && dev_exceptions.contains(&(krate, name)))
                        {
                            broken.push(format!(
                                "{krate} depends on the process crate {name} ({section:?})"
                            ));
                        }
                    }
                }
            }
            Rule::DevOnly { krate } => {
                for (name, c) in &self.crates {
                    for (section, dep) in c.all_deps() {
                        if dep == *krate && section != Section::Dev && name != krate {
                            broken.push(format!(
                                "{name} depends on {krate} (not as a dev-dependency: {section:?})"
                            ));
                        }
                    }
                }
            }
            Rule::ImportsFollowDependencies => {
                let names = self.lib_names();
                for (name, c) in &self.crates {
                    let normal = c.deps_in(&[Section::Normal]);
                    let dev = c.deps_in(&[Section::Normal, Section::Dev]);
                    for (file, in_src) in rust_files(&c.dir) {
                        let allowed = if in_src { &normal } else { &dev };
                        let text = fs::read_to_string(&file).unwrap();
                        for used in named_crates(&text, &names) {
                            if used != *name && !allowed.contains(used.as_str()) {
                                broken.push(format!(
                                    "{} uses {used}, which {name} does not depend on{}",
                                    file.display(),
                                    if in_src {
                                        " outside dev-dependencies"
                                    } else {
                                        ""
                                    }
                                ));
                            }
                        }
                    }
                }
            }
            Rule::Layers { dir, pages, shared } => {
                let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
                let mut files = Vec::new();
                walk(&root, &mut |file| {
                    let relative = file.strip_prefix(&root).unwrap().with_extension("");
                    let mut path: Vec<String> = relative
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    if path.last().is_some_and(|last| last == "mod") {
                        path.pop();
                    }
                    if let Some(module) = path.first().cloned() {
                        files.push((module, path, fs::read_to_string(&file).unwrap()));
                    }
                });
                broken.extend(
                    check_layers(&files, pages, shared)
                        .into_iter()
                        .map(|b| format!("{dir}: {b}")),
                );
            }
            Rule::SourcesOpenWithInnerDoc => {
                for c in self.crates.values() {
                    for (file, in_src) in rust_files(&c.dir) {
                        if in_src && !fs::read_to_string(&file).unwrap().starts_with("//!") {
                            broken.push(format!("{} does not open with `//!`", file.display()));
                        }
                    }
                }
            }
        }
        broken
    }
}

impl Crate {
    fn all_deps(&self) -> impl Iterator<Item = (Section, &str)> {
        self.deps
            .iter()
            .flat_map(|(section, names)| names.iter().map(|name| (*section, name.as_str())))
    }

    fn deps_in(&self, sections: &[Section]) -> BTreeSet<&str> {
        self.all_deps()
            .filter(|(section, _)| sections.contains(section))
            .map(|(_, name)| name)
            .collect()
    }
}

fn read_toml(path: &Path) -> toml::Table {
    let text = fs::read_to_string(path).unwrap();
    text.parse()
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// `../wire` → `wire`.
fn dir_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The `.rs` files of a crate, each with whether it is under `src/` (rather than `tests/`,
/// `benches/`, `examples/` or a build script, which may use dev-dependencies… except the build
/// script, which is rare enough to be counted with the sources).
fn rust_files(dir: &Path) -> Vec<(PathBuf, bool)> {
    let mut files = Vec::new();
    for (sub, in_src) in [
        ("src", true),
        ("tests", false),
        ("benches", false),
        ("examples", false),
    ] {
        walk(&dir.join(sub), &mut |file| files.push((file, in_src)));
    }
    let build = dir.join("build.rs");
    if build.is_file() {
        files.push((build, true));
    }
    files
}

fn walk(dir: &Path, found: &mut dyn FnMut(PathBuf)) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found(path);
        }
    }
}

/// The workspace crates (by directory name) that code names as `lib_name::…`, outside
/// comments and string literals; a name reached through `self::`, `super::` or `crate::` is a
/// module, not a crate, and so is a name the file declares with `mod` (`platform::config` has
/// a module `auditor` for the `[auditor]` section).
fn named_crates(text: &str, names: &BTreeMap<String, String>) -> Vec<String> {
    let local_modules: BTreeSet<&str> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line
                .strip_prefix("pub(crate) ")
                .or_else(|| line.strip_prefix("pub "))
                .unwrap_or(line);
            let rest = line.strip_prefix("mod ")?;
            Some(rest.trim_end_matches([';', '{', ' ']))
        })
        .collect();
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = code_of(line);
        for (lib_name, dir) in names {
            if local_modules.contains(lib_name.as_str()) {
                continue;
            }
            let pattern = format!("{lib_name}::");
            let mut from = 0;
            while let Some(at) = code[from..].find(&pattern) {
                let start = from + at;
                from = start + pattern.len();
                let before = code[..start].trim_end_matches("::");
                let reached_through_path = code[..start].ends_with("::")
                    && !before.ends_with([' ', '(', '<', '&'])
                    && !before.is_empty();
                let part_of_a_word = code[..start]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_');
                if !part_of_a_word && !reached_through_path {
                    found.insert(dir.clone());
                }
            }
        }
    }
    found.into_iter().collect()
}

/// What breaks the layering of one folder: `files` are (the folder's module the file belongs
/// to, the file's module path within the folder, its text); the folder's `mod.rs` is left out
/// (it wires the pages together).
fn check_layers(
    files: &[(String, Vec<String>, String)],
    pages: &[&str],
    shared: &[&str],
) -> Vec<String> {
    let mut broken = BTreeSet::new();
    for (module, path, text) in files {
        let is_page = pages.contains(&module.as_str());
        if !is_page && !shared.contains(&module.as_str()) {
            broken.insert(format!(
                "{module} is neither a page nor a shared module (add it to the rule)"
            ));
            continue;
        }
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        for named in web_modules_named(text, &path) {
            if named != *module && pages.contains(&named.as_str()) {
                broken.insert(if is_page {
                    format!(
                        "page {module} names the page {named} (move what they share to a shared module)"
                    )
                } else {
                    format!("shared module {module} names the page {named}")
                });
            }
        }
    }
    broken.into_iter().collect()
}

/// The modules of a folder (`crate::web`) that code at `path` within it names: through
/// `super::` (as many as lead back to the folder), `crate::web::`, each item of a `{…}` group.
/// Comments and string literals are left out.
fn web_modules_named(text: &str, path: &[&str]) -> Vec<String> {
    let code: String = text.lines().map(code_of).collect::<Vec<_>>().join(" ");
    let mut found = BTreeSet::new();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let starts_path = !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        let mut reaches_folder = false;
        let mut len = 0;
        if starts_path && rest.starts_with("crate::web::") {
            reaches_folder = true;
            len = "crate::web::".len();
        } else if starts_path && rest.starts_with("super::") {
            let mut n = 0;
            while rest[len..].starts_with("super::") {
                len += "super::".len();
                n += 1;
            }
            // `super::` n times from a module n deep reaches the folder
            reaches_folder = n == path.len();
        }
        if !reaches_folder {
            at += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let after = &rest[len..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                    _ if depth == 1 => item.push(c),
                    _ => {}
                }
            }
            items.push(item);
            for item in items {
                let first: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !first.is_empty() && first != "self" {
                    found.insert(first);
                }
            }
        } else {
            let first: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !first.is_empty() {
                found.insert(first);
            }
        }
        at += len;
    }
    found.into_iter().collect()
}

/// A line without its `//` comment and with string literals blanked (one line at a time is
/// enough for the names looked for here).
fn code_of(line: &str) -> String {
    let mut code = String::with_capacity(line.len());
    let mut in_string = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_string = false;
                    code.push('"');
                }
                _ => code.push(' '),
            }
        } else if c == '\'' && chars.peek() == Some(&'"') {
            // the character literal '"'
            chars.next();
            code.push_str("' ");
        } else if c == '"' {
            in_string = true;
            code.push('"');
        } else if c == '/' && chars.peek() == Some(&'/') {
            break;
        } else {
            code.push(c);
        }
    }
    code
}
