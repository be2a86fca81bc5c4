//! Loading the embedded object and attaching it: XDP ingress + TC egress on every
//! client-facing interface.

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TcAttachType, Xdp},
};
use splitter_common::maps as names;

use super::{DataplaneError, EBPF_OBJECT, maps::Maps};

/// How XDP is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    Auto,
    /// Driver mode only: attaching fails where the driver has no XDP support.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Generic,
}

/// Load-time settings that cannot change while the programs run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub flow_table_size: u32,
    pub hash_seed: u32,
    /// A client SYN retransmitted this long after the first, without a SYN-ACK in between,
    /// counts as a handshake timeout (rollout signals).
    pub handshake_timeout_ns: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            flow_table_size: names::DEFAULT_FLOW_TABLE_SIZE,
            hash_seed: splitter_common::hash::DEFAULT_HASH_SEED,
            handshake_timeout_ns: splitter_common::signals::DEFAULT_HANDSHAKE_TIMEOUT_NS,
        }
    }
}

/// A loaded data plane: the programs (verified, not yet attached) and their maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
    attached: Vec<String>,
}

impl Dataplane {
    /// Loads and verifies the embedded programs with fresh maps. Nothing is pinned: the
    /// programs, their attachments and the maps live as long as this value (tests). The daemon
    /// uses [`super::PinnedDataplane`] instead.
    pub fn load(options: &LoadOptions) -> Result<Self, DataplaneError> {
        let mut ebpf = load_object(options)?;
        let maps = Maps::open(|name| ebpf.take_map(name))?;
        Ok(Self {
            ebpf,
            maps,
            attached: Vec::new(),
        })
    }

    /// The ingress program, e.g. for BPF_PROG_TEST_RUN.
    pub fn ingress_program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        xdp(&mut self.ebpf)
    }

    /// The egress program, e.g. for BPF_PROG_TEST_RUN.
    pub fn egress_program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        tc(&mut self.ebpf)
    }

    /// Attaches ingress (XDP) and egress (TC) to a client-facing interface. The attachment
    /// lasts as long as this `Dataplane`.
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        if interface_index(interface).is_none() {
            return Err(DataplaneError::UnknownInterface {
                interface: interface.to_owned(),
            });
        }
        let attach_error = |source| DataplaneError::Attach {
            interface: interface.to_owned(),
            source,
        };
        let program = xdp(&mut self.ebpf)?;
        match mode {
            XdpMode::Native => program.attach(interface, aya::programs::XdpMode::Driver),
            XdpMode::Generic => program.attach(interface, aya::programs::XdpMode::Skb),
            XdpMode::Auto => program
                .attach(interface, aya::programs::XdpMode::Driver)
                .or_else(|_| program.attach(interface, aya::programs::XdpMode::Skb)),
        }
        .map_err(attach_error)?;
        tc(&mut self.ebpf)?
            .attach(interface, TcAttachType::Egress)
            .map_err(attach_error)?;
        self.attached.push(interface.to_owned());
        Ok(())
    }

    /// Enables the XDP fast path (FIB lookup + XDP_REDIRECT) toward a backend-facing interface.
    /// Native XDP transmit must work there: physical NICs do; a veth only when its peer has an
    /// XDP program or GRO on; a bridge never (refused here). Without it, rewritten packets take
    /// the kernel's routing.
    pub fn allow_redirect(&mut self, interface: &str) -> Result<(), DataplaneError> {
        let ifindex =
            interface_index(interface).ok_or_else(|| DataplaneError::UnknownInterface {
                interface: interface.to_owned(),
            })?;
        if driver(interface).as_deref() == Some("bridge") {
            return Err(DataplaneError::RedirectToBridge {
                interface: interface.to_owned(),
            });
        }
        self.maps.allow_redirect(ifindex)
    }

    /// Interfaces this data plane is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.attached
    }
}

/// Loads the embedded object (maps created, globals set) and verifies both programs.
pub(super) fn load_object(options: &LoadOptions) -> Result<Ebpf, DataplaneError> {
    let mut ebpf = EbpfLoader::new()
        .override_global(names::HASH_SEED_GLOBAL, &options.hash_seed, true)
        .override_global(
            names::HANDSHAKE_TIMEOUT_GLOBAL,
            &options.handshake_timeout_ns,
            true,
        )
        .map_max_entries(names::FLOWS, options.flow_table_size)
        .load(EBPF_OBJECT)?;
    xdp(&mut ebpf)?
        .load()
        .map_err(|source| program_error(names::INGRESS_PROGRAM, source))?;
    tc(&mut ebpf)?
        .load()
        .map_err(|source| program_error(names::EGRESS_PROGRAM, source))?;
    Ok(ebpf)
}

fn program_error(name: &'static str, source: aya::programs::ProgramError) -> DataplaneError {
    DataplaneError::Program { name, source }
}

pub(super) fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let name = names::INGRESS_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|source| program_error(name, source))
}

pub(super) fn tc(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DataplaneError> {
    let name = names::EGRESS_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|source| program_error(name, source))
}

/// The interface's index in the current network namespace.
pub fn interface_index(interface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(interface).ok()?;
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => None,
        index => Some(index),
    }
}

/// The interface's driver name (ETHTOOL_GDRVINFO) in the current network namespace: "veth",
/// "bridge", "virtio_net", ... (`/sys/class/net` may show another namespace's interfaces).
pub fn driver(interface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return None;
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return None;
    }
    let rc = unsafe { libc::ioctl(socket, SIOCETHTOOL, &mut request) };
    unsafe { libc::close(socket) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}
