//! Backends: `BACKENDS` maps a backend id to a [`Backend`]; `POOLS` maps a slot to a backend id;
//! `BACKEND_REVERSE` maps a backend's address to the service its replies are rewritten to.

use crate::Addr;

/// The two environments of a service.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Color {
    Blue = 0,
    Green = 1,
}

/// Where a backend listens. `port` in network byte order, `family` is [`crate::Family`] as u8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: Addr,
    pub port: u16,
    pub family: u8,
    /// [`Color`] as u8.
    pub color: u8,
    /// The owning service's `ServiceConfig::id`.
    pub service_id: u32,
}

/// A backend's address as the source of its replies. `port` in network byte order; `protocol`
/// the IP protocol number; `family` [`crate::Family`] as u8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendKey {
    pub addr: Addr,
    pub port: u16,
    pub protocol: u8,
    pub family: u8,
}

/// What a backend's reply is rewritten to: the address and port of the service it belongs to.
/// Stateless on purpose: replies are rewritten even when the flow was evicted from `FLOWS` or
/// began on another host behind the same ECMP group. So a backend (address, port, protocol)
/// belongs to exactly one service (the config validation enforces it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReverseValue {
    pub service_addr: Addr,
    pub service_port: u16,
    pub _pad: [u8; 2],
    pub backend_id: u32,
}
