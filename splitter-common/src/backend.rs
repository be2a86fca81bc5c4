//! Backends: `BACKENDS` maps a backend id to a [`Backend`]; `POOLS` maps a slot to a backend id.

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
