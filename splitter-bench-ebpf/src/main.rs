//! Benchmark and comparison harness programs, built for the tests and benchmarks only
//! (`tests/build.rs`); the daemon's object holds none of them. `bench.rs`: the restoring
//! wrapper that tail-calls the data plane's real ingress program (loaded from the daemon's
//! object) and the floors; `compare.rs`: the traffic generator, the backends' sink and the bare
//! XDP forwarder of `cargo xtask bench --compare`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod bench;
mod compare;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects programs that could panic.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
