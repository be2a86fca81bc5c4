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
/// Stateless on purpose for a backend that serves one service: replies are rewritten even when
/// the flow was evicted from `FLOWS` or began on another host behind the same ECMP group.
/// A backend shared by several services (a preview address, or two services on the same
/// backends) has [`reverse_flags::SHARED`]: its candidates are in `SHARED_REVERSE`, and this
/// value is the first of them (the fallback when no pinned flow says which one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReverseValue {
    pub service_addr: Addr,
    pub service_port: u16,
    /// [`reverse_flags`] bits.
    pub flags: u8,
    pub _pad: u8,
    pub backend_id: u32,
}

/// Bits of [`ReverseValue::flags`].
pub mod reverse_flags {
    /// The backend serves several services: look in `SHARED_REVERSE`.
    pub const SHARED: u8 = 1;
}

/// How many services one backend (address, port, protocol) may serve: the egress program looks
/// up the client's flow once per candidate.
pub const MAX_SHARING: usize = 4;

/// `SHARED_REVERSE` value: the services a shared backend serves, in config order. The egress
/// program picks the one whose pinned flow for the reply's client goes to this backend; none
/// found (the flow was evicted or began on another host): `candidates[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SharedReverse {
    /// Candidates in use (1..=[`MAX_SHARING`]).
    pub count: u32,
    pub candidates: [ReverseValue; MAX_SHARING],
}
