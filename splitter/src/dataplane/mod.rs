//! The data plane as the daemon sees it: the embedded eBPF object, loading it (or adopting its
//! pins), attaching it to interfaces, and typed access to its maps.
//!
//! - `loader.rs`: [`Dataplane`], the one data-plane type, with its [`PinPolicy`];
//! - `object.rs`: the embedded object, its load-time settings, loading it;
//! - `attach.rs`: attaching the programs, checking interfaces;
//! - `pins/`: the pinned layout, link pins, load-time globals of pinned programs;
//! - `maps.rs`, `services.rs`: typed maps, service writers;
//! - `pools.rs`: each color's Maglev table and members in `POOLS`;
//! - `overrides.rs`: `[service.overrides]` prefixes in the `OVERRIDES` trie;
//! - `replies.rs`: the reply path of backends shared by several services;
//! - `census.rs`: flows by state per backend, table fill (off the runtime thread).

mod attach;
mod census;
mod error;
pub mod flows;
mod loader;
pub mod maps;
mod object;
pub mod overrides;
pub mod pins;
pub mod pools;
pub mod replies;
pub mod services;

pub use attach::interface_index;
pub use error::DataplaneError;
pub use loader::{Attachment, Dataplane, Origin, PinPolicy};
pub use object::{LoadOptions, XdpMode};
pub use pins::{PinLayout, Unloaded, unload};

/// The eBPF object built by `build.rs` from `splitter-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/splitter-ebpf"));
