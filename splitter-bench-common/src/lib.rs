//! The contract of the benchmark and comparison harness programs (`splitter-bench-ebpf`) with
//! the harness code in `tests/`: map names, map values, program names. Nothing here is part of
//! the product: the daemon neither loads these programs nor knows these types.
#![no_std]

pub mod bench;
pub mod compare;

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
pod!(bench::BenchPacket, compare::GenPacket, compare::GenState);

// The layout the programs and the harness agree on (no implicit padding).
const _: () = assert!(core::mem::size_of::<bench::BenchPacket>() == 8 + bench::BENCH_PACKET_MAX);
const _: () = assert!(core::mem::size_of::<compare::GenPacket>() == 32 + compare::GEN_PACKET_MAX);
const _: () = assert!(core::mem::size_of::<compare::GenState>() == 16);
