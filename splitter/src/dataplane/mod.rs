//! The data plane as the daemon sees it: the embedded eBPF object, loading it, attaching it to
//! interfaces, and typed access to its maps.

mod error;
mod loader;
pub mod maps;
pub mod pins;
pub mod services;
mod sys;

pub use error::DataplaneError;
pub use loader::{Dataplane, LoadOptions, XdpMode, interface_index};
pub use pins::{Attachment, Origin, PinLayout, PinnedDataplane, Unloaded, unload};

/// The eBPF object built by `build.rs` from `splitter-ebpf`.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/splitter-ebpf"));
