//! The kernel/user contract of the splitter: every map key and value, map name, capacity,
//! counter and verdict-reason enum is defined here once and shared by `splitter-ebpf` (no_std,
//! bpf target) and the `splitter` daemon (with the `user` feature).
//!
//! Rules: `#[repr(C)]`, explicitly sized fields, explicit padding, no `bool`/`Option` in map
//! values. Ports and addresses are kept in network byte order exactly as on the wire.
#![no_std]

pub mod addr;
pub mod backend;
pub mod counters;
pub mod flow;
pub mod hash;
pub mod history;
#[cfg(any(feature = "user", test))]
pub mod maglev;
pub mod maps;
pub mod select;
pub mod service;
pub mod signals;

pub use addr::{Addr, Family};
pub use backend::{
    Backend, BackendKey, Color, MAX_SHARING, ReverseValue, SharedReverse, reverse_flags,
};
pub use counters::{
    BackendCounters, DirectionCounters, Forwarding, Reason, ServiceCounters, Signals,
};
pub use flow::{
    FlowEntry, FlowEntry4, FlowEntry6, FlowKey, FlowKey4, FlowKey6, FlowState, FlowValue,
    PendingEntry, PendingEntry4, PendingEntry6, TableAddr, TableKey, flow_flags,
};
pub use select::Choice;
pub use service::{
    Cohort, OverrideKey, OverrideValue, Pool, ServiceConfig, ServiceKey, WEIGHT_HISTORY,
    WEIGHT_SCALE, WeightChange, service_flags,
};

/// Implements `aya::Pod` (userspace only) for plain map types.
macro_rules! pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: repr(C), only integer fields and arrays of them, explicit padding.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pod!(
    ServiceKey,
    ServiceConfig,
    WeightChange,
    Backend,
    FlowKey,
    FlowKey4,
    FlowKey6,
    FlowEntry4,
    FlowEntry6,
    PendingEntry4,
    PendingEntry6,
    ReverseValue,
    BackendKey,
    BackendCounters,
    ServiceCounters,
    SharedReverse,
    OverrideKey,
    OverrideValue,
);

// The layout both sides agree on, checked at compile time: a field added, reordered or resized
// (implicit padding appearing) breaks the build, not the map.
macro_rules! size_is {
    ($($ty:ty => $size:expr),* $(,)?) => {
        $(const _: () = assert!(core::mem::size_of::<$ty>() == $size);)*
    };
}
size_is!(
    Addr => 16,
    ServiceKey => 20,
    ServiceConfig => 168,
    WeightChange => 16,
    Pool => 8,
    Backend => 24,
    BackendKey => 20,
    ReverseValue => 24,
    SharedReverse => 100,
    OverrideKey => 20,
    OverrideValue => 4,
    FlowKey => 40,
    FlowKey4 => 16,
    FlowKey6 => 40,
    FlowEntry4 => 16,
    FlowEntry6 => 28,
    PendingEntry4 => 24,
    PendingEntry6 => 36,
    DirectionCounters => 40,
    BackendCounters => 256,
    ServiceCounters => 16,
    Signals => 168,
);
