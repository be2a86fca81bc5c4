//! The embedded eBPF object: its load-time settings, loading and verifying it, and finding its
//! two programs.

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier, Xdp},
};
use splitter_common::maps as names;

use super::{DataplaneError, EBPF_OBJECT};

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
    /// Capacity of `FLOWS` (verified flows).
    pub flow_table_size: u32,
    /// Capacity of `PENDING` (unverified flows: handshakes, mid-flow misses, UDP).
    pub pending_table_size: u32,
    /// A UDP flow idle this long is gone.
    pub udp_idle_timeout_ns: u64,
    pub hash_seed: u32,
    /// A client SYN retransmitted this long after the first, without a SYN-ACK in between,
    /// counts as a handshake timeout (rollout signals).
    pub handshake_timeout_ns: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            flow_table_size: names::DEFAULT_FLOW_TABLE_SIZE,
            pending_table_size: names::DEFAULT_PENDING_TABLE_SIZE,
            udp_idle_timeout_ns: names::DEFAULT_UDP_IDLE_TIMEOUT_NS,
            hash_seed: splitter_common::hash::DEFAULT_HASH_SEED,
            handshake_timeout_ns: splitter_common::signals::DEFAULT_HANDSHAKE_TIMEOUT_NS,
        }
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
        .override_global(
            names::UDP_IDLE_TIMEOUT_GLOBAL,
            &options.udp_idle_timeout_ns,
            true,
        )
        .map_max_entries(names::FLOWS, options.flow_table_size)
        .map_max_entries(names::FLOWS6, options.flow_table_size)
        .map_max_entries(names::PENDING, options.pending_table_size)
        .map_max_entries(names::PENDING6, options.pending_table_size)
        .load(EBPF_OBJECT)?;
    xdp(&mut ebpf)?
        .load()
        .map_err(|source| program_error(names::INGRESS_PROGRAM, source))?;
    tc(&mut ebpf)?
        .load()
        .map_err(|source| program_error(names::EGRESS_PROGRAM, source))?;
    Ok(ebpf)
}

pub(super) fn program_error(name: &'static str, source: ProgramError) -> DataplaneError {
    DataplaneError::Program { name, source }
}

/// The ingress (XDP) program of a loaded object.
pub(super) fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let name = names::INGRESS_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|source| program_error(name, source))
}

/// The egress (TC) program of a loaded object.
pub(super) fn tc(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DataplaneError> {
    let name = names::EGRESS_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|source| program_error(name, source))
}
