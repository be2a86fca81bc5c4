//! The control API: a Unix socket (mode 0600) carrying JSON lines. `protocol` is the wire
//! format, `server` the daemon side, `client` the CLI side, `limits` the connection cap and
//! accept backoff the control socket and the metrics endpoint share.

pub mod client;
pub mod limits;
pub mod protocol;
pub mod server;
mod whatif;
