//! Where everything is pinned, and pinning a freshly loaded object as `dataplane/`.

use std::{
    collections::BTreeSet,
    io,
    path::{Path, PathBuf},
};

use aya::Ebpf;
use splitter_common::maps as names;

use crate::{
    dataplane::{DataplaneError, maps, object},
    sys,
};

const DATAPLANE_DIR: &str = "dataplane";
const STAGING_PREFIX: &str = "staging-";
/// The pin name of the read-only globals map (aya calls it `.rodata`).
pub const RODATA_PIN: &str = "RODATA";

/// Where everything is pinned.
#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
}

/// The two attachments of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Xdp, Hook::Tc];

    const fn suffix(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }

    pub(super) const fn link_type(self) -> u32 {
        match self {
            Hook::Xdp => sys::LINK_TYPE_XDP,
            Hook::Tc => sys::LINK_TYPE_TCX,
        }
    }
}

impl PinLayout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn dataplane(&self) -> PathBuf {
        self.root.join(DATAPLANE_DIR)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dataplane().join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.dataplane().join("programs").join(name)
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The directory holding an interface's link pins.
    pub fn interface_links(&self, interface: &str) -> PathBuf {
        let encoded = interface.replace('%', "%25").replace('.', "%2e");
        self.links().join(encoded)
    }

    pub fn link(&self, interface: &str, hook: Hook) -> PathBuf {
        self.interface_links(interface).join(hook.suffix())
    }

    /// Interfaces with a link directory.
    pub fn linked_interfaces(&self) -> BTreeSet<String> {
        let Ok(entries) = std::fs::read_dir(self.links()) else {
            return BTreeSet::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.replace("%2e", ".").replace("%25", "%")
            })
            .collect()
    }

    pub(in crate::dataplane) fn pin_error(
        &self,
        path: &Path,
    ) -> impl Fn(io::Error) -> DataplaneError {
        let path = path.to_owned();
        move |source| DataplaneError::Pin {
            path: path.clone(),
            source,
        }
    }

    /// The root exists on a bpffs; leftovers of an interrupted fresh load are gone.
    pub(in crate::dataplane) fn prepare(&self) -> Result<(), DataplaneError> {
        let mut existing = self.root.as_path();
        while !existing.exists() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        if !sys::is_bpffs(existing).map_err(self.pin_error(existing))? {
            return Err(DataplaneError::NotBpffs {
                path: self.root.clone(),
            });
        }
        std::fs::create_dir_all(&self.root).map_err(self.pin_error(&self.root))?;
        std::fs::create_dir_all(self.links()).map_err(self.pin_error(&self.links()))?;
        for entry in std::fs::read_dir(&self.root)
            .map_err(self.pin_error(&self.root))?
            .filter_map(Result::ok)
        {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                // Staging directories never hold links: removing them detaches nothing.
                std::fs::remove_dir_all(entry.path()).map_err(self.pin_error(&entry.path()))?;
            }
        }
        Ok(())
    }

    /// What of `dataplane/` is missing (empty when complete).
    pub(in crate::dataplane) fn missing_pins(&self) -> Vec<String> {
        let maps = maps::ALL
            .iter()
            .chain(&[RODATA_PIN])
            .map(|name| self.map(name));
        let programs = [names::INGRESS_PROGRAM, names::EGRESS_PROGRAM]
            .iter()
            .map(|name| self.program(name));
        maps.chain(programs)
            .filter(|path| !path.exists())
            .map(|path| path.display().to_string())
            .collect()
    }

    /// Pins the maps and programs of a freshly loaded object as `dataplane/`, atomically.
    pub(in crate::dataplane) fn pin_object(&self, ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
        let staging = self
            .root
            .join(format!("{STAGING_PREFIX}{}", std::process::id()));
        let staged = PinLayout {
            root: staging.clone(),
        };
        // Pins are made under `staging/dataplane/...`, then that directory is renamed.
        for dir in [staged.maps_dir(), staged.dataplane().join("programs")] {
            std::fs::create_dir_all(&dir).map_err(self.pin_error(&dir))?;
        }
        // Exactly the contract's maps and the load-time globals; nothing else of the object.
        for name in names::ALL.into_iter().chain([".rodata"]) {
            let map = ebpf.map(name).ok_or(DataplaneError::MissingMap { name })?;
            let pin = match name {
                ".rodata" => RODATA_PIN,
                name => name,
            };
            let path = staged.map(pin);
            map.pin(&path)
                .map_err(|source| DataplaneError::PinObject { path, source })?;
        }
        let path = staged.program(names::INGRESS_PROGRAM);
        object::xdp(ebpf)?
            .pin(&path)
            .map_err(|source| DataplaneError::PinObject { path, source })?;
        let path = staged.program(names::EGRESS_PROGRAM);
        object::tc(ebpf)?
            .pin(&path)
            .map_err(|source| DataplaneError::PinObject { path, source })?;
        std::fs::rename(staged.dataplane(), self.dataplane())
            .map_err(self.pin_error(&self.dataplane()))?;
        std::fs::remove_dir(&staging).map_err(self.pin_error(&staging))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_name_their_interface() {
        let layout = PinLayout::new(Path::new("/sys/fs/bpf/x"));
        assert_eq!(
            layout.link("eth0.100", Hook::Xdp),
            Path::new("/sys/fs/bpf/x/links/eth0%2e100/xdp")
        );
        let dir = std::env::temp_dir().join(format!("splitter-links-{}", std::process::id()));
        let layout = PinLayout::new(&dir);
        std::fs::create_dir_all(layout.interface_links("eth0.100%")).unwrap();
        assert_eq!(
            layout.linked_interfaces(),
            BTreeSet::from(["eth0.100%".to_owned()])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
