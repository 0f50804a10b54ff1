//! kmod's text indexes (`modules.alias`, `modules.dep`, `modules.builtin`): which module
//! drives a modalias, what must be loaded before it, and which modules the kernel has built in.
//! The image builder reads the same files with this parser when it picks the ramdisk's modules.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::glob::glob_match;

#[derive(Debug, thiserror::Error)]
pub enum ModIndexError {
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One loadable module, as named in `modules.dep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Normalised name (`-` replaced by `_`), as `modules.alias` and the kernel name it.
    pub name: String,
    /// Path relative to the modules directory, e.g. `kernel/drivers/net/virtio_net.ko`.
    pub path: PathBuf,
    /// Names of the modules it needs, as listed (depmod lists all of them, transitively).
    pub deps: Vec<String>,
}

#[derive(Debug)]
struct Alias {
    pattern: String,
    /// Bytes before the first wildcard: a cheap filter before the glob match.
    literal_prefix_len: usize,
    module: String,
}

/// The alias and dependency index of one kernel release.
#[derive(Debug)]
pub struct ModuleIndex {
    /// `<root>/lib/modules/<release>`: module paths are relative to it.
    dir: PathBuf,
    aliases: Vec<Alias>,
    modules: HashMap<String, Module>,
    /// Normalised names of the modules compiled into the kernel: nothing to load for them.
    builtin: HashSet<String>,
}

/// The kernel's name for a module file or alias target: `-` and `_` are interchangeable.
pub fn normalize_module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a `modules.dep` or `modules.builtin` path, compressed or not:
/// `kernel/drivers/hid/hid-generic.ko[.xz]` -> `hid_generic`.
pub fn module_name_of_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalize_module_name(file.split_once(".ko").map_or(file, |(stem, _)| stem))
}

impl ModuleIndex {
    /// The directory holding a release's modules below `root`.
    pub fn modules_dir(root: &Path, release: &str) -> PathBuf {
        root.join("lib/modules").join(release)
    }

    /// Reads `modules.alias`, `modules.dep` and, if present, `modules.builtin` of `release`
    /// below `root`.
    pub fn load(root: &Path, release: &str) -> Result<Self, ModIndexError> {
        let dir = Self::modules_dir(root, release);
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| ModIndexError::Read { path, source })
        };
        let (alias_text, dep_text) = (read("modules.alias")?, read("modules.dep")?);
        let builtin_text = match read("modules.builtin") {
            Err(ModIndexError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => String::new(),
            other => other?,
        };
        Ok(Self::parse(dir, &alias_text, &dep_text, &builtin_text))
    }

    /// Builds the index from the files' text; malformed lines are skipped.
    pub fn parse(dir: PathBuf, alias_text: &str, dep_text: &str, builtin_text: &str) -> Self {
        let aliases = alias_text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("alias"), Some(pattern), Some(module)) => Some(Alias {
                        pattern: pattern.to_string(),
                        literal_prefix_len: pattern.find(['*', '?', '[']).unwrap_or(pattern.len()),
                        module: normalize_module_name(module),
                    }),
                    _ => None,
                }
            })
            .collect();

        let mut modules = HashMap::new();
        for line in dep_text.lines() {
            let Some((path, deps)) = line.split_once(':') else { continue };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps: Vec<&str> = deps.split_whitespace().collect();
            // A dependency without a line of its own still needs a path to load from.
            for dep in &deps {
                modules.entry(module_name_of_path(dep)).or_insert_with(|| Module {
                    name: module_name_of_path(dep),
                    path: PathBuf::from(dep),
                    deps: Vec::new(),
                });
            }
            let module = Module {
                name: module_name_of_path(path),
                path: PathBuf::from(path),
                deps: deps.iter().map(|dep| module_name_of_path(dep)).collect(),
            };
            modules.insert(module.name.clone(), module);
        }
        let builtin =
            builtin_text.lines().map(str::trim).filter(|line| !line.is_empty()).map(module_name_of_path).collect();
        Self { dir, aliases, modules, builtin }
    }

    /// Absolute path of a module's file.
    pub fn path_of(&self, module: &Module) -> PathBuf {
        self.dir.join(&module.path)
    }

    /// The module of this name, if `modules.dep` lists it.
    pub fn module(&self, name: &str) -> Option<&Module> {
        self.modules.get(&normalize_module_name(name))
    }

    /// Whether `modules.builtin` lists the module: it is part of the kernel, not a file.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_module_name(name))
    }

    /// Names of the modules whose alias patterns match `modalias`, each once, in file order.
    pub fn modules_for_modalias(&self, modalias: &str) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for alias in &self.aliases {
            let prefix = &alias.pattern[..alias.literal_prefix_len];
            if modalias.starts_with(prefix)
                && glob_match(&alias.pattern, modalias)
                && !names.contains(&alias.module.as_str())
            {
                names.push(&alias.module);
            }
        }
        names
    }

    /// The modules to load for `name`, dependencies first (deepest first), `name` last,
    /// each once. Unknown names (built in, or not in this ramdisk) are left out.
    pub fn load_order(&self, name: &str) -> Vec<&Module> {
        let mut order = Vec::new();
        let mut visited = HashSet::new();
        self.visit(&normalize_module_name(name), &mut visited, &mut order);
        order
    }

    fn visit<'a>(&'a self, name: &str, visited: &mut HashSet<String>, order: &mut Vec<&'a Module>) {
        if !visited.insert(name.to_string()) {
            return;
        }
        let Some(module) = self.modules.get(name) else { return };
        // Like kmod, take the listed dependencies in reverse; the recursion puts each one's
        // own dependencies before it whatever the listed order.
        for dep in module.deps.iter().rev() {
            self.visit(dep, visited, order);
        }
        order.push(module);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "6.1.0-56-amd64";

    /// A subset of the real indexes of Debian's 6.1.0-56-amd64 kernel, made by depmod.
    fn fixture() -> ModuleIndex {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/modules");
        ModuleIndex::load(&root, RELEASE).unwrap()
    }

    fn names(modules: &[&Module]) -> Vec<String> {
        modules.iter().map(|module| module.name.clone()).collect()
    }

    #[test]
    fn virtio_modaliases_map_to_their_drivers() {
        let index = fixture();
        #[rustfmt::skip]
        let cases: &[(&str, &[&str])] = &[
            ("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", &["virtio_pci"]),
            ("pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00", &["virtio_pci"]),
            ("virtio:d00000001v00001AF4", &["virtio_net"]),
            ("virtio:d00000002v00001AF4", &["virtio_blk"]),
            ("virtio:d00000042v00001AF4", &[]),
            ("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00", &["e1000"]),
            ("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", &["nvme"]),
            // Matched only by the device-specific `d0[0-2]*` class pattern (interface class 03 is HID).
            ("usb:v13FDp3940d0150dc00dsc00dp00ic03isc01ip01in00", &["uas", "usb_storage"]),
            ("usb:v13FDp3940d0350dc00dsc00dp00ic03isc01ip01in00", &[]),
            // Any mass-storage interface, by class.
            ("usb:v1234p5678d0100dc00dsc00dp00ic08isc06ip50in00", &["uas", "usb_storage"]),
        ];
        for &(modalias, expected) in cases {
            let mut found = index.modules_for_modalias(modalias);
            found.sort();
            assert_eq!(found, expected, "{modalias}");
        }
    }

    #[test]
    fn alias_targets_and_file_names_meet_with_underscores() {
        let index = fixture();
        assert_eq!(index.modules_for_modalias("hid:b0003g0001v0000046Dp0000C52B"), ["hid_generic"]);
        let module = index.module("hid-generic").expect("hid-generic.ko is in modules.dep");
        assert_eq!(module.path, Path::new("kernel/drivers/hid/hid-generic.ko"));
        let fixture_dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/modules/lib/modules").join(RELEASE);
        assert_eq!(index.path_of(module), fixture_dir.join("kernel/drivers/hid/hid-generic.ko"));
    }

    #[test]
    fn dependencies_come_first_deepest_first_each_once() {
        let index = fixture();
        assert_eq!(
            names(&index.load_order("virtio_net")),
            ["virtio_ring", "virtio", "failover", "net_failover", "virtio_net"]
        );
        assert_eq!(
            names(&index.load_order("virtio_pci")),
            ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci"]
        );
        assert_eq!(names(&index.load_order("e1000")), ["e1000"]);
        assert!(index.load_order("not_a_module").is_empty());
    }

    #[test]
    fn every_dependency_precedes_its_dependents() {
        let index = fixture();
        for module in index.modules.values() {
            let order = names(&index.load_order(&module.name));
            assert_eq!(order.last(), Some(&module.name));
            for (position, name) in order.iter().enumerate() {
                for dep in &index.modules[name].deps {
                    let dep_position = order.iter().position(|n| n == dep);
                    assert!(dep_position.is_some_and(|p| p < position), "{dep} must precede {name} in {order:?}");
                }
            }
        }
    }

    #[test]
    fn dependency_without_own_line_still_has_a_path() {
        let index = ModuleIndex::parse(
            PathBuf::from("/m"),
            "alias foo:* foo-drv\n# comment\ngarbage\n",
            "kernel/foo-drv.ko: kernel/lib/helper-lib.ko\n",
            "",
        );
        assert_eq!(index.modules_for_modalias("foo:x"), ["foo_drv"]);
        let order = index.load_order("foo_drv");
        assert_eq!(names(&order), ["helper_lib", "foo_drv"]);
        assert_eq!(index.path_of(order[0]), Path::new("/m/kernel/lib/helper-lib.ko"));
    }

    #[test]
    fn names_of_paths_drop_directories_and_extensions() {
        assert_eq!(module_name_of_path("kernel/fs/nls/nls_iso8859-1.ko"), "nls_iso8859_1");
        assert_eq!(module_name_of_path("kernel/drivers/char/hw_random/virtio-rng.ko.zst"), "virtio_rng");
        assert_eq!(module_name_of_path("virtio_net.ko.xz"), "virtio_net");
        assert_eq!(normalize_module_name("mlx5-core"), "mlx5_core");
    }

    #[test]
    fn builtin_modules_are_known_but_have_nothing_to_load() {
        let index = fixture();
        for name in ["mq-deadline", "rng_core", "crc-ccitt"] {
            assert!(index.is_builtin(name), "{name}");
            assert!(index.load_order(name).is_empty(), "{name}");
        }
        assert!(!index.is_builtin("virtio_net"));
        let without_file = ModuleIndex::load(Path::new("/nonexistent"), RELEASE);
        assert!(without_file.is_err(), "modules.alias and modules.dep are required");
    }

    #[test]
    fn modules_builtin_is_optional() {
        let root = tempfile::tempdir().unwrap();
        let dir = ModuleIndex::modules_dir(root.path(), RELEASE);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("modules.alias"), "alias virtio:d00000001v* virtio_net\n").unwrap();
        std::fs::write(dir.join("modules.dep"), "kernel/drivers/net/virtio_net.ko:\n").unwrap();
        let index = ModuleIndex::load(root.path(), RELEASE).unwrap();
        assert!(!index.is_builtin("virtio_net"));
        assert_eq!(names(&index.load_order("virtio_net")), ["virtio_net"]);
    }
}
