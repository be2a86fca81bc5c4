//! nftables DNAT: one `nat` prerouting chain that maps `jhash(client address . port) mod 100`
//! to blue (0-89) or green (90-99), for the UDP and the TCP service. Conntrack keeps each flow
//! on its first choice and reverses the translation of replies.

use splitter_bench_common::compare::{SINK_TCP_PORT, SINK_UDP_PORT};

use crate::compare::{
    alternatives::exec_with_input,
    topology::{BLUE_ADDR, GREEN_ADDR, GREEN_PERCENT, Topology, VIP},
};

const TABLE: &str = "splcmp";

/// Dropping it deletes the table (conntrack lets go of the namespace with its last user).
pub struct NftGuard {
    router: String,
}

pub fn ruleset() -> String {
    let blue_last = 99 - GREEN_PERCENT;
    let map = format!(
        "{{ 0-{blue_last} : {BLUE_ADDR}, {}-99 : {GREEN_ADDR} }}",
        blue_last + 1
    );
    format!(
        "table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {VIP} udp dport {SINK_UDP_PORT} dnat to jhash ip saddr . udp sport mod 100 seed 0x5370 map {map}\n\
         \t\tip daddr {VIP} tcp dport {SINK_TCP_PORT} dnat to jhash ip saddr . tcp sport mod 100 seed 0x5370 map {map}\n\
         \t}}\n\
         }}\n"
    )
}

pub fn install(topology: &Topology) -> anyhow::Result<NftGuard> {
    exec_with_input(&topology.router, &["nft", "-f", "-"], &ruleset())?;
    Ok(NftGuard {
        router: topology.router.name.clone(),
    })
}

impl Drop for NftGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.router,
                "nft",
                "delete",
                "table",
                "ip",
                TABLE,
            ])
            .output();
    }
}
