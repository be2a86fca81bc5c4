//! What a pinned data plane leaves under the configured bpffs directory, so traffic keeps
//! flowing when the daemon exits or dies, and a restarted daemon adopts what is pinned (flows,
//! counters and weights included) instead of replacing it.
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
//!
//! - `layout.rs`: the paths, and pinning a freshly loaded object;
//! - `links.rs`: the link pins of each interface (kept when live, detach, unload);
//! - `globals.rs`: the load-time settings the pinned programs were loaded with.

mod globals;
mod layout;
mod links;

pub use globals::LoadedWith;
pub use layout::{Hook, PinLayout, RODATA_PIN};
pub(super) use links::pin_links;
pub use links::{Unloaded, detach, unload};
