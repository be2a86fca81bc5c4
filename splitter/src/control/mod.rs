//! The control API: a Unix socket (mode 0600) carrying JSON lines. `protocol` is the wire
//! format, `server` the daemon side, `client` the CLI side.

pub mod client;
pub mod protocol;
pub mod server;
