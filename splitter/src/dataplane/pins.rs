//! The data plane the daemon runs: maps, programs and links pinned under the configured bpffs
//! directory, so traffic keeps flowing when the daemon exits or dies, and a restarted daemon
//! adopts what is pinned (flows, counters and weights included) instead of replacing it.
//!
//! Layout under `bpffs` (e.g. `/sys/fs/bpf/splitter`):
//!
//! ```text
//! dataplane/maps/<MAP>            every map of splitter_common::maps, and RODATA (the globals)
//! dataplane/programs/<PROGRAM>    splitter_ingress (XDP), splitter_egress (TC)
//! links/<interface>/xdp           XDP bpf_link of an interface
//! links/<interface>/tc            TCX egress bpf_link of an interface
//! ```
//!
//! bpffs refuses `.` in names (reserved by the kernel), so an interface name's `.` and `%`
//! are written `%2e` and `%25` (`eth0.100` → `links/eth0%2e100/`).
//!
//! A fresh load pins `dataplane/` in a staging directory and renames it into place, so
//! `dataplane/` is either complete or absent. Links are pinned only after that.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use aya::{
    maps::{Map, MapData, MapInfo},
    programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, links::FdLink, tc::TcAttachOptions},
};
use aya_obj::programs::XdpAttachType;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use splitter_common::maps as names;

use super::{
    DataplaneError, EBPF_OBJECT, XdpMode, interface_index,
    loader::{self, LoadOptions},
    maps::{self, Maps},
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
    const fn suffix(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }

    const fn link_type(self) -> u32 {
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

    fn pin_error(&self, path: &Path) -> impl Fn(io::Error) -> DataplaneError {
        let path = path.to_owned();
        move |source| DataplaneError::Pin {
            path: path.clone(),
            source,
        }
    }

    /// The root exists on a bpffs; leftovers of an interrupted fresh load are gone.
    fn prepare(&self) -> Result<(), DataplaneError> {
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
    fn missing_pins(&self) -> Vec<String> {
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

    /// Loads the embedded object and pins its maps and programs as `dataplane/`, atomically.
    fn load_and_pin(&self, options: &LoadOptions) -> Result<(), DataplaneError> {
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
        let mut ebpf = loader::load_object(options)?;
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
        loader::xdp(&mut ebpf)?
            .pin(&path)
            .map_err(|source| DataplaneError::PinObject { path, source })?;
        let path = staged.program(names::EGRESS_PROGRAM);
        loader::tc(&mut ebpf)?
            .pin(&path)
            .map_err(|source| DataplaneError::PinObject { path, source })?;
        std::fs::rename(staged.dataplane(), self.dataplane())
            .map_err(self.pin_error(&self.dataplane()))?;
        std::fs::remove_dir(&staging).map_err(self.pin_error(&staging))?;
        Ok(())
    }
}

/// Whether the data plane was loaded by this daemon or adopted from the pins of an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Loaded,
    Adopted,
}

impl Origin {
    pub const fn name(self) -> &'static str {
        match self {
            Origin::Loaded => "loaded",
            Origin::Adopted => "adopted",
        }
    }
}

/// What happened to an interface's attachments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Both links were pinned and live: left untouched.
    Kept,
    /// At least one link was created (and pinned).
    Attached,
}

/// The load-time settings of the pinned programs, read back from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedWith {
    pub flow_table_size: u32,
    pub hash_seed: u32,
    pub handshake_timeout_ns: u64,
}

/// A data plane pinned under a bpffs directory.
pub struct PinnedDataplane {
    layout: PinLayout,
    pub maps: Maps,
    xdp: Xdp,
    tc: SchedClassifier,
    pub origin: Origin,
    pub loaded_with: LoadedWith,
}

impl PinnedDataplane {
    /// Adopts the data plane pinned under `root`, or loads and pins a new one. An adopted data
    /// plane must have been loaded with the same `options` (they cannot change while it runs).
    pub fn open(root: &Path, options: &LoadOptions) -> Result<Self, DataplaneError> {
        let layout = PinLayout::new(root);
        layout.prepare()?;
        let origin = if layout.dataplane().exists() {
            Origin::Adopted
        } else {
            Origin::Loaded
        };
        if origin == Origin::Adopted {
            let missing = layout.missing_pins();
            if !missing.is_empty() {
                if !layout.linked_interfaces().is_empty() {
                    return Err(DataplaneError::IncompletePins {
                        path: layout.dataplane(),
                        missing: missing.join(", "),
                    });
                }
                // Nothing attached uses these pins: start over.
                std::fs::remove_dir_all(layout.dataplane())
                    .map_err(layout.pin_error(&layout.dataplane()))?;
                return Self::open(root, options);
            }
        } else {
            layout.load_and_pin(options)?;
        }
        let this = Self::adopt(layout, origin)?;
        let loaded = this.loaded_with;
        for (setting, pinned, configured) in [
            (
                "flow_table_size",
                u64::from(loaded.flow_table_size),
                u64::from(options.flow_table_size),
            ),
            (
                "hash_seed",
                u64::from(loaded.hash_seed),
                u64::from(options.hash_seed),
            ),
            (
                "handshake_timeout (ns)",
                loaded.handshake_timeout_ns,
                options.handshake_timeout_ns,
            ),
        ] {
            if pinned != configured {
                return Err(DataplaneError::PinnedSettingDiffers {
                    path: this.layout.root.clone(),
                    setting,
                    pinned,
                    configured,
                });
            }
        }
        Ok(this)
    }

    /// Opens the complete pins of `layout`.
    fn adopt(layout: PinLayout, origin: Origin) -> Result<Self, DataplaneError> {
        let mut opened = BTreeMap::new();
        for name in maps::ALL {
            let path = layout.map(name);
            let map = MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| DataplaneError::OpenPinnedMap { path, source })?;
            opened.insert(name, map);
        }
        let maps = Maps::open(|name| opened.remove(name))?;
        let path = layout.program(names::INGRESS_PROGRAM);
        let xdp = Xdp::from_pin(&path, XdpAttachType::Interface)
            .map_err(|source| DataplaneError::OpenPinnedProgram { path, source })?;
        let path = layout.program(names::EGRESS_PROGRAM);
        let tc = SchedClassifier::from_pin(&path)
            .map_err(|source| DataplaneError::OpenPinnedProgram { path, source })?;
        let loaded_with = LoadedWith {
            flow_table_size: pinned_flow_table_size(&layout)?,
            hash_seed: u32::from_ne_bytes(pinned_global(&layout, names::HASH_SEED_GLOBAL)?),
            handshake_timeout_ns: u64::from_ne_bytes(pinned_global(
                &layout,
                names::HANDSHAKE_TIMEOUT_GLOBAL,
            )?),
        };
        Ok(Self {
            layout,
            maps,
            xdp,
            tc,
            origin,
            loaded_with,
        })
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// Interfaces with pinned links.
    pub fn interfaces(&self) -> BTreeSet<String> {
        self.layout.linked_interfaces()
    }

    /// Makes sure both programs are attached to `interface` through pinned links. Live links
    /// are kept as they are (a restart changes nothing on the wire); a link whose interface is
    /// gone (or was re-created) is replaced.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<Attachment, DataplaneError> {
        let ifindex =
            interface_index(interface).ok_or_else(|| DataplaneError::UnknownInterface {
                interface: interface.to_owned(),
            })?;
        let mut outcome = Attachment::Kept;
        for hook in [Hook::Xdp, Hook::Tc] {
            let path = self.layout.link(interface, hook);
            if path.exists() {
                if link_is_live(&path, hook, ifindex) {
                    continue;
                }
                tracing::warn!(link = %path.display(), "pinned link is defunct; attaching again");
                std::fs::remove_file(&path).map_err(self.layout.pin_error(&path))?;
            }
            let dir = self.layout.interface_links(interface);
            std::fs::create_dir_all(&dir).map_err(self.layout.pin_error(&dir))?;
            let link = match hook {
                Hook::Xdp => self.attach_xdp(interface, mode)?,
                Hook::Tc => self.attach_tc(interface)?,
            };
            link.pin(&path)
                .map_err(|source| DataplaneError::PinObject { path, source })?;
            outcome = Attachment::Attached;
        }
        Ok(outcome)
    }

    fn attach_xdp(&mut self, interface: &str, mode: XdpMode) -> Result<FdLink, DataplaneError> {
        use aya::programs::XdpMode as Flags;
        let attach_error = |source| DataplaneError::Attach {
            interface: interface.to_owned(),
            source,
        };
        let program = &mut self.xdp;
        let id = match mode {
            XdpMode::Native => program.attach(interface, Flags::Driver),
            XdpMode::Generic => program.attach(interface, Flags::Skb),
            XdpMode::Auto => program
                .attach(interface, Flags::Driver)
                .or_else(|_| program.attach(interface, Flags::Skb)),
        }
        .map_err(attach_error)?;
        let link = program.take_link(id).map_err(attach_error)?;
        FdLink::try_from(link).map_err(|_| DataplaneError::Unpinnable {
            interface: interface.to_owned(),
            hook: "XDP",
            detail: "the kernel refused bpf_link_create; XDP links need Linux 5.9",
        })
    }

    fn attach_tc(&mut self, interface: &str) -> Result<FdLink, DataplaneError> {
        let attach_error = |source| DataplaneError::Attach {
            interface: interface.to_owned(),
            source,
        };
        // TCX links (Linux 6.6) can be pinned; netlink clsact filters could not outlive us
        // in a way we can adopt.
        let id = self
            .tc
            .attach_with_options(
                interface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_error)?;
        let link = self.tc.take_link(id).map_err(attach_error)?;
        FdLink::try_from(link).map_err(|_| DataplaneError::Unpinnable {
            interface: interface.to_owned(),
            hook: "TC egress",
            detail: "tcx links need Linux 6.6",
        })
    }

    /// The interface indexes of `interfaces`, refusing bridges (XDP cannot transmit through
    /// them). Changes nothing.
    pub fn check_redirects(&self, interfaces: &[String]) -> Result<BTreeSet<u32>, DataplaneError> {
        interfaces
            .iter()
            .map(|interface| {
                let ifindex =
                    interface_index(interface).ok_or_else(|| DataplaneError::UnknownInterface {
                        interface: interface.clone(),
                    })?;
                if loader::driver(interface).as_deref() == Some("bridge") {
                    return Err(DataplaneError::RedirectToBridge {
                        interface: interface.clone(),
                    });
                }
                Ok(ifindex)
            })
            .collect()
    }

    /// Makes the fast path redirect to exactly these interfaces (off when there are none).
    pub fn set_redirects(&mut self, interfaces: &[String]) -> Result<(), DataplaneError> {
        let wanted = self.check_redirects(interfaces)?;
        let current: BTreeSet<u32> = self.maps.redirect_ifindexes()?.into_iter().collect();
        if wanted.is_empty() {
            self.maps.set_fast_path(false)?;
        }
        for ifindex in current.difference(&wanted) {
            self.maps.disallow_redirect(*ifindex)?;
        }
        for ifindex in wanted.difference(&current) {
            self.maps.allow_redirect(*ifindex)?;
        }
        Ok(())
    }

    /// Detaches both programs from `interface` (removes its link pins). Whether anything was
    /// attached.
    pub fn detach(&mut self, interface: &str) -> Result<bool, DataplaneError> {
        detach(&self.layout, interface)
    }

    /// Detaches every interface and removes every pin: the data plane is gone afterwards
    /// (pinned flows and counters included).
    pub fn unload(self) -> Result<Unloaded, DataplaneError> {
        let layout = self.layout.clone();
        drop(self);
        unload(&layout.root)
    }
}

fn detach(layout: &PinLayout, interface: &str) -> Result<bool, DataplaneError> {
    let mut detached = false;
    for hook in [Hook::Xdp, Hook::Tc] {
        let path = layout.link(interface, hook);
        match std::fs::remove_file(&path) {
            // The pin held the last reference: removing it detaches the program.
            Ok(()) => detached = true,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(layout.pin_error(&path)(error)),
        }
    }
    let dir = layout.interface_links(interface);
    match std::fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(layout.pin_error(&dir)(error)),
    }
    Ok(detached)
}

/// What [`unload`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unloaded {
    /// Interfaces the programs were detached from.
    pub interfaces: Vec<String>,
    /// Whether pinned maps and programs were removed.
    pub dataplane: bool,
}

/// Detaches and removes everything pinned under `root` (no daemon needed).
pub fn unload(root: &Path) -> Result<Unloaded, DataplaneError> {
    let layout = PinLayout::new(root);
    let mut unloaded = Unloaded::default();
    for interface in layout.linked_interfaces() {
        detach(&layout, &interface)?;
        unloaded.interfaces.push(interface);
    }
    if layout.dataplane().exists() {
        std::fs::remove_dir_all(layout.dataplane())
            .map_err(layout.pin_error(&layout.dataplane()))?;
        unloaded.dataplane = true;
    }
    if root.exists() {
        // Staging leftovers hold no links; then the (now empty) directories.
        layout.prepare()?;
        let _ = std::fs::remove_dir(layout.links());
        let _ = std::fs::remove_dir(&layout.root);
    }
    Ok(unloaded)
}

/// A pinned link is live when it is still attached to this interface (ifindex 0 means its
/// interface was deleted; another index means the name now belongs to a new interface).
fn link_is_live(path: &Path, hook: Hook, ifindex: u32) -> bool {
    let Ok(fd) = sys::obj_get(path) else {
        return false;
    };
    match sys::link_target(fd.as_fd()) {
        Ok(target) => target.link_type == hook.link_type() && target.ifindex == ifindex,
        Err(_) => false,
    }
}

fn pinned_flow_table_size(layout: &PinLayout) -> Result<u32, DataplaneError> {
    let path = layout.map(names::FLOWS);
    let info = MapInfo::from_pin(&path)
        .map_err(|source| DataplaneError::OpenPinnedMap { path, source })?;
    Ok(info.max_entries())
}

/// Offset of a global in the object's `.rodata` (the value of the pinned RODATA map).
fn global_offset(symbol: &'static str) -> Result<usize, DataplaneError> {
    static OFFSETS: OnceLock<BTreeMap<String, usize>> = OnceLock::new();
    let offsets = OFFSETS.get_or_init(|| {
        let Ok(file) = object::File::parse(EBPF_OBJECT) else {
            return BTreeMap::new();
        };
        let Some(rodata) = file.section_by_name(".rodata") else {
            return BTreeMap::new();
        };
        file.symbols()
            .filter(|symbol| symbol.section_index() == Some(rodata.index()))
            .filter_map(|symbol| Some((symbol.name().ok()?.to_owned(), symbol.address() as usize)))
            .collect()
    });
    offsets
        .get(symbol)
        .copied()
        .ok_or(DataplaneError::MissingGlobal { symbol })
}

/// The bytes of a load-time global as the pinned programs have it.
fn pinned_global<const N: usize>(
    layout: &PinLayout,
    symbol: &'static str,
) -> Result<[u8; N], DataplaneError> {
    let path = layout.map(RODATA_PIN);
    let offset = global_offset(symbol)?;
    let map = MapData::from_pin(&path).map_err(|source| DataplaneError::OpenPinnedMap {
        path: path.clone(),
        source,
    })?;
    let info = map.info().map_err(|source| DataplaneError::OpenPinnedMap {
        path: path.clone(),
        source,
    })?;
    let mut value = vec![0u8; info.value_size() as usize];
    sys::map_lookup(map.fd().as_fd(), &0u32.to_ne_bytes(), &mut value).map_err(|source| {
        DataplaneError::PinnedGlobals {
            path: path.clone(),
            source,
        }
    })?;
    value
        .get(offset..offset + N)
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .ok_or_else(|| DataplaneError::PinnedGlobals {
            path,
            source: io::Error::from(io::ErrorKind::UnexpectedEof),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_time_globals_live_in_rodata() {
        global_offset(names::HASH_SEED_GLOBAL).expect("HASH_SEED is a .rodata global");
        global_offset(names::HANDSHAKE_TIMEOUT_GLOBAL).expect("HANDSHAKE_TIMEOUT_NS too");
    }

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
