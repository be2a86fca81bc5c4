//! The one data-plane type: the embedded programs loaded (or adopted from pins), their maps, and
//! their attachments to client-facing interfaces. The daemon pins everything under its bpffs
//! directory ([`PinPolicy::Pinned`]); tests and benchmarks may pin nothing
//! ([`PinPolicy::None`]). Both attach, check interfaces and count flows the same way.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::{
    Ebpf,
    programs::{SchedClassifier, Xdp, links::FdLink},
};
use aya_obj::programs::XdpAttachType;
use splitter_common::maps as names;

use super::{
    DataplaneError, LoadOptions, XdpMode, attach,
    maps::Maps,
    object,
    pins::{self, Hook, LoadedWith, PinLayout, Unloaded},
};

/// Whether (and where) a data plane is pinned.
#[derive(Clone, Copy, Debug)]
pub enum PinPolicy<'a> {
    /// Nothing pinned: the programs, their attachments and the maps live as long as the
    /// [`Dataplane`] value (tests, benchmarks).
    None,
    /// Maps, programs and links pinned under `bpffs` (see [`super::pins`]): they outlive the
    /// process, and the next [`Dataplane::open`] adopts them (the daemon).
    Pinned { bpffs: &'a Path },
}

/// Whether the data plane was loaded by this process or adopted from the pins of an earlier one.
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
    /// Both links were there and live: left untouched.
    Kept,
    /// At least one link was created (and, when pinned, pinned).
    Attached,
}

/// The two programs.
enum Programs {
    /// Loaded by this process without pins: they stay in their object (aya 0.14 cannot take a
    /// program out of an `Ebpf`).
    Object(Ebpf),
    /// Opened from their pins (boxed: an `Xdp` and a `SchedClassifier` are large).
    Pinned(Box<(Xdp, SchedClassifier)>),
}

impl Programs {
    fn xdp(&mut self) -> Result<&mut Xdp, DataplaneError> {
        match self {
            Programs::Object(ebpf) => object::xdp(ebpf),
            Programs::Pinned(pinned) => Ok(&mut pinned.0),
        }
    }

    fn tc(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        match self {
            Programs::Object(ebpf) => object::tc(ebpf),
            Programs::Pinned(pinned) => Ok(&mut pinned.1),
        }
    }
}

/// A loaded data plane: programs, maps and attachments, pinned or not.
pub struct Dataplane {
    /// The links of an unpinned data plane, by interface: dropping them detaches.
    links: BTreeMap<String, [FdLink; 2]>,
    pub maps: Maps,
    programs: Programs,
    pins: Option<PinLayout>,
    pub origin: Origin,
    pub loaded_with: LoadedWith,
}

impl Dataplane {
    /// Loads and verifies the embedded programs with fresh maps, pinning nothing (see
    /// [`PinPolicy::None`]).
    pub fn load(options: &LoadOptions) -> Result<Self, DataplaneError> {
        Self::open(options, PinPolicy::None)
    }

    /// Loads the data plane by `pins`. Pinned: adopts the data plane pinned under `bpffs`, or
    /// loads and pins a new one; an adopted data plane must have been loaded with the same
    /// `options` (they cannot change while it runs).
    pub fn open(options: &LoadOptions, pins: PinPolicy<'_>) -> Result<Self, DataplaneError> {
        match pins {
            PinPolicy::None => {
                let mut ebpf = object::load_object(options)?;
                let mut maps = Maps::open(|name| ebpf.take_map(name))?;
                maps.udp_idle_timeout_ns = options.udp_idle_timeout_ns;
                Ok(Self {
                    links: BTreeMap::new(),
                    maps,
                    programs: Programs::Object(ebpf),
                    pins: None,
                    origin: Origin::Loaded,
                    loaded_with: LoadedWith::from(options),
                })
            }
            PinPolicy::Pinned { bpffs } => Self::open_pinned(PinLayout::new(bpffs), options),
        }
    }

    fn open_pinned(layout: PinLayout, options: &LoadOptions) -> Result<Self, DataplaneError> {
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
                return Self::open_pinned(layout, options);
            }
        } else {
            layout.pin_object(&mut object::load_object(options)?)?;
        }
        let this = Self::adopt(layout, origin)?;
        let layout = this.pins.as_ref().expect("adopted from pins");
        this.loaded_with.check(options, layout)?;
        Ok(this)
    }

    /// Opens the complete pins of `layout`.
    fn adopt(layout: PinLayout, origin: Origin) -> Result<Self, DataplaneError> {
        let mut maps = Maps::from_pins(&layout.maps_dir())?;
        let loaded_with = LoadedWith::read(&layout)?;
        maps.udp_idle_timeout_ns = loaded_with.udp_idle_timeout_ns;
        let path = layout.program(names::INGRESS_PROGRAM);
        let xdp = Xdp::from_pin(&path, XdpAttachType::Interface)
            .map_err(|source| DataplaneError::OpenPinnedProgram { path, source })?;
        let path = layout.program(names::EGRESS_PROGRAM);
        let tc = SchedClassifier::from_pin(&path)
            .map_err(|source| DataplaneError::OpenPinnedProgram { path, source })?;
        Ok(Self {
            links: BTreeMap::new(),
            maps,
            programs: Programs::Pinned(Box::new((xdp, tc))),
            loaded_with,
            pins: Some(layout),
            origin,
        })
    }

    /// Where the data plane is pinned (`None` when it is not).
    pub fn layout(&self) -> Option<&PinLayout> {
        self.pins.as_ref()
    }

    /// The ingress program, e.g. for BPF_PROG_TEST_RUN.
    pub fn ingress_program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        self.programs.xdp()
    }

    /// The egress program, e.g. for BPF_PROG_TEST_RUN.
    pub fn egress_program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.programs.tc()
    }

    /// Makes sure ingress (XDP, `mode`) and egress (TC) are attached to `interface`. Live
    /// attachments are kept as they are (after a restart nothing changes on the wire); a pinned
    /// link whose interface is gone (or was re-created) is replaced. Pinned links outlive this
    /// value; unpinned ones last as long as it.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<Attachment, DataplaneError> {
        let ifindex = attach::existing_interface(interface)?;
        let Self {
            links,
            programs,
            pins,
            ..
        } = self;
        let mut attach_hook = |hook| match hook {
            Hook::Xdp => attach::xdp(programs.xdp()?, interface, mode),
            Hook::Tc => attach::tc(programs.tc()?, interface),
        };
        match pins {
            Some(layout) => pins::pin_links(layout, interface, ifindex, attach_hook),
            None if links.contains_key(interface) => Ok(Attachment::Kept),
            None => {
                let xdp = attach_hook(Hook::Xdp)?;
                let tc = attach_hook(Hook::Tc)?;
                links.insert(interface.to_owned(), [xdp, tc]);
                Ok(Attachment::Attached)
            }
        }
    }

    /// Detaches both programs from `interface`. Whether anything was attached.
    pub fn detach(&mut self, interface: &str) -> Result<bool, DataplaneError> {
        match &self.pins {
            Some(layout) => pins::detach(layout, interface),
            None => Ok(self.links.remove(interface).is_some()),
        }
    }

    /// Interfaces the programs are attached to.
    pub fn interfaces(&self) -> BTreeSet<String> {
        match &self.pins {
            Some(layout) => layout.linked_interfaces(),
            None => self.links.keys().cloned().collect(),
        }
    }

    /// The interface indexes of `interfaces`, refusing bridges (XDP cannot transmit through
    /// them). Changes nothing.
    pub fn check_redirects(&self, interfaces: &[String]) -> Result<BTreeSet<u32>, DataplaneError> {
        interfaces
            .iter()
            .map(|interface| attach::redirect_target(interface))
            .collect()
    }

    /// Makes the fast path (FIB lookup + XDP_REDIRECT) redirect to exactly these interfaces
    /// (off when there are none). Without it, rewritten packets take the kernel's routing.
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

    /// Enables the fast path toward one more backend-facing interface (see
    /// [`Self::set_redirects`] for the checks).
    pub fn allow_redirect(&mut self, interface: &str) -> Result<(), DataplaneError> {
        let ifindex = attach::redirect_target(interface)?;
        self.maps.allow_redirect(ifindex)
    }

    /// Detaches every interface and removes every pin: the data plane is gone afterwards
    /// (pinned flows and counters included). Unpinned: detaches and drops everything.
    pub fn unload(self) -> Result<Unloaded, DataplaneError> {
        match self.pins.clone() {
            Some(layout) => {
                drop(self);
                pins::unload(&layout.root)
            }
            None => Ok(Unloaded {
                interfaces: self.interfaces().into_iter().collect(),
                dataplane: true,
            }),
        }
    }
}
