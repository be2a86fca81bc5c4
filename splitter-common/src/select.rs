//! The selection rule, defined once: cohort → hash → color → index in that color's pool. The
//! data plane (`splitter-ebpf/src/select.rs`) runs it on a flow's first packet; the tests'
//! predictors run the very same function. The hash and its rules are in [`crate::hash`].

use crate::{
    Addr, Cohort, Color, Family, FlowKey, ServiceConfig,
    hash::{client_hash, flow_hash, is_green, pool_index},
};

/// Where a new flow goes: a color, and the index of its backend in that color's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub color: Color,
    pub index: u32,
}

impl Cohort {
    /// The cohort stored in `ServiceConfig::cohort`; anything but `Client` is `Flow`.
    #[inline(always)]
    pub const fn from_raw(raw: u32) -> Self {
        if raw == Cohort::Client as u32 {
            Cohort::Client
        } else {
            Cohort::Flow
        }
    }
}

/// The hash of the cohort `key` belongs to.
#[inline(always)]
pub fn cohort_hash(cohort: Cohort, key: &FlowKey, seed: u32) -> u32 {
    match cohort {
        Cohort::Client => client_hash(&key.src, key.family, seed),
        Cohort::Flow => flow_hash(key, seed),
    }
}

/// `addr` masked to its leading `prefix_v4` (IPv4) or `prefix_v6` (IPv6) bits; 0 (or a length
/// past the address) keeps the whole address. Words are in network byte order as in [`Addr`].
#[inline(always)]
pub fn mask_prefix(addr: &Addr, family: u8, prefix_v4: u8, prefix_v6: u8) -> Addr {
    let prefix = if family == Family::Ipv6 as u8 {
        if prefix_v6 == 0 || prefix_v6 >= 128 {
            return *addr;
        }
        prefix_v6 as u32
    } else {
        if prefix_v4 == 0 || prefix_v4 >= 32 {
            return *addr;
        }
        prefix_v4 as u32
    };
    let mut masked = *addr;
    let mut word = 0;
    while word < 4 {
        let start = word as u32 * 32;
        let keep = prefix.saturating_sub(start);
        let mask: u32 = if keep == 0 {
            0
        } else if keep >= 32 {
            u32::MAX
        } else {
            u32::MAX << (32 - keep)
        };
        // The word holds the address bytes as they are in memory: the mask's bytes likewise.
        masked.0[word] &= mask.to_be();
        word += 1;
    }
    masked
}

/// The hash of the cohort `key` belongs to, for a service: with the `client` cohort the client
/// address is first masked to the service's `client_prefix` (a whole subnet moves together).
#[inline(always)]
pub fn service_hash(config: &ServiceConfig, key: &FlowKey, seed: u32) -> u32 {
    match Cohort::from_raw(config.cohort) {
        Cohort::Client => {
            let src = mask_prefix(
                &key.src,
                key.family,
                config.client_prefix_v4,
                config.client_prefix_v6,
            );
            client_hash(&src, key.family, seed)
        }
        Cohort::Flow => flow_hash(key, seed),
    }
}

/// Chooses color and backend for a new flow `key` of a service whose Maglev tables hold
/// `blue_len` and `green_len` entries, at `green_weight` (parts per million): the entry index
/// in the chosen color's table. A color with an empty table (no backend in rotation) sends its
/// cohorts to the other color; `None` only when both are empty.
#[inline(always)]
pub fn choose(
    cohort: Cohort,
    key: &FlowKey,
    seed: u32,
    green_weight: u32,
    blue_len: u32,
    green_len: u32,
) -> Option<Choice> {
    choose_hashed(
        cohort_hash(cohort, key, seed),
        green_weight,
        blue_len,
        green_len,
    )
}

/// [`choose`] for a cohort whose hash is known already (a mid-flow miss needs the hash for the
/// weight history first: `crate::history`).
#[inline(always)]
pub fn choose_hashed(
    hash: u32,
    green_weight: u32,
    blue_len: u32,
    green_len: u32,
) -> Option<Choice> {
    choose_forced(hash, green_weight, None, blue_len, green_len)
}

/// The color of a cohort: `forced` when a source override (or a preview address) says so,
/// otherwise the weight's monotone threshold.
#[inline(always)]
pub fn choose_color(hash: u32, green_weight: u32, forced: Option<Color>) -> Color {
    match forced {
        Some(color) => color,
        None if is_green(hash, green_weight) => Color::Green,
        None => Color::Blue,
    }
}

/// [`choose_hashed`] with the color possibly forced (see [`choose_color`]); the in-pool
/// choice is the same either way. An empty color never black-holes its cohorts, forced or
/// not: they go to the other color (`None` only when both are empty).
#[inline(always)]
pub fn choose_forced(
    hash: u32,
    green_weight: u32,
    forced: Option<Color>,
    blue_len: u32,
    green_len: u32,
) -> Option<Choice> {
    let green = choose_color(hash, green_weight, forced) == Color::Green;
    let (color, len) = if (green && green_len > 0) || blue_len == 0 {
        (Color::Green, green_len)
    } else {
        (Color::Blue, blue_len)
    };
    if len == 0 {
        return None;
    }
    Some(Choice {
        color,
        index: pool_index(hash, len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Addr, Family, WEIGHT_SCALE, hash::DEFAULT_HASH_SEED};

    fn addr(ip: core::net::IpAddr) -> (Addr, Family) {
        match ip {
            core::net::IpAddr::V4(v4) => (Addr::from_v4(v4.octets()), Family::Ipv4),
            core::net::IpAddr::V6(v6) => (Addr::from_v6(v6.octets()), Family::Ipv6),
        }
    }

    fn flow(client: &str, service: &str, protocol: u8) -> FlowKey {
        let client: core::net::SocketAddr = client.parse().unwrap();
        let service: core::net::SocketAddr = service.parse().unwrap();
        let (src, family) = addr(client.ip());
        FlowKey {
            src,
            dst: addr(service.ip()).0,
            src_port: client.port().to_be(),
            dst_port: service.port().to_be(),
            protocol,
            family: family as u8,
            _pad: [0; 2],
        }
    }

    fn v4_flow(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16, protocol: u8) -> FlowKey {
        FlowKey {
            src: Addr::from_v4(src),
            dst: Addr::from_v4(dst),
            src_port: src_port.to_be(),
            dst_port: dst_port.to_be(),
            protocol,
            family: Family::Ipv4 as u8,
            _pad: [0; 2],
        }
    }

    /// Fixed results computed independently of this crate, with Python's `mmh3` over the
    /// documented key words (see `crate::hash`), e.g. for the first row:
    ///
    /// ```text
    /// import mmh3, struct, ipaddress
    /// def fmix32(h):
    ///     h ^= h >> 16; h = h * 0x85ebca6b & 0xffffffff; h ^= h >> 13
    ///     h = h * 0xc2b2ae35 & 0xffffffff; return h ^ (h >> 16)
    /// src = ipaddress.ip_address("198.18.1.10").packed + bytes(12)
    /// dst = ipaddress.ip_address("198.18.100.1").packed + bytes(12)
    /// ports = struct.pack(">H", 40000) + struct.pack(">H", 80)   # as on the wire
    /// last = struct.pack("<I", 6 | 4 << 8)                       # protocol | family << 8
    /// h = mmh3.hash(src + dst + ports + last, 0x53706c74, signed=False)
    /// green = h * 1_000_000 < weight << 32
    /// index = fmix32(h ^ 0x9e3779b9) * pool_len >> 32
    /// ```
    /// (`client` cohort: `src + struct.pack("<I", family << 8)`.)
    #[test]
    fn fixed_keys_choose_the_independently_computed_backend() {
        use Color::{Blue, Green};
        // (client, service, protocol, cohort, seed, weight ppm, blue len, green len)
        //   → (hash, color, index), from the script above.
        let cases = [
            (
                "198.18.1.10:40000",
                "198.18.100.1:80",
                6,
                Cohort::Flow,
                DEFAULT_HASH_SEED,
                100_000,
                3,
                2,
                (0xde4b_3ac1, Blue, 2),
            ),
            (
                "198.18.1.11:40001",
                "198.18.100.1:80",
                6,
                Cohort::Flow,
                DEFAULT_HASH_SEED,
                500_000,
                3,
                2,
                (0xe6ef_6e09, Blue, 0),
            ),
            (
                "198.18.7.200:51515",
                "198.18.100.1:53",
                17,
                Cohort::Flow,
                1,
                900_000,
                4,
                3,
                (0xbea2_3f69, Green, 2),
            ),
            (
                "[fd00:1::10]:40000",
                "[fd00:100::1]:443",
                6,
                Cohort::Flow,
                DEFAULT_HASH_SEED,
                250_000,
                2,
                5,
                (0x0354_bfc7, Green, 2),
            ),
            (
                "198.18.1.10:40000",
                "198.18.100.1:80",
                6,
                Cohort::Client,
                DEFAULT_HASH_SEED,
                500_000,
                3,
                2,
                (0x7a97_de7b, Green, 0),
            ),
            (
                "[fd00:1::10]:40000",
                "[fd00:100::1]:443",
                6,
                Cohort::Client,
                0xdead_beef,
                750_000,
                2,
                5,
                (0x0258_6c3c, Green, 2),
            ),
        ];
        for (client, service, protocol, cohort, seed, weight, blue, green, (hash, color, index)) in
            cases
        {
            let key = flow(client, service, protocol);
            assert_eq!(
                cohort_hash(cohort, &key, seed),
                hash,
                "{client} → {service} {cohort:?}"
            );
            assert_eq!(
                choose(cohort, &key, seed, weight, blue, green),
                Some(Choice { color, index }),
                "{client} → {service} {cohort:?} seed {seed:#x} weight {weight}"
            );
        }
    }

    /// Raising the weight only moves cohorts from blue to green: a cohort green at `w` is green
    /// at every higher weight (and blue at `w` stays blue at every lower one).
    #[test]
    fn green_at_a_weight_stays_green_at_every_higher_weight() {
        let weights: [u32; 12] = [
            0,
            1,
            100,
            9_999,
            10_000,
            100_000,
            333_333,
            500_000,
            500_001,
            900_000,
            999_999,
            WEIGHT_SCALE,
        ];
        let mut key = v4_flow([198, 18, 0, 0], 1024, [198, 18, 100, 1], 80, 6);
        for i in 0..20_000u32 {
            key.src = Addr::from_v4([198, 18, (i >> 8) as u8, i as u8]);
            key.src_port = (1024 + (i % 50_000) as u16).to_be();
            let mut was_green = false;
            for &weight in &weights {
                let choice = choose(Cohort::Flow, &key, DEFAULT_HASH_SEED, weight, 3, 2).unwrap();
                let green = choice.color == Color::Green;
                assert!(
                    green || !was_green,
                    "flow {i} green at a lower weight, blue at {weight}"
                );
                was_green = green;
            }
            assert!(was_green, "every cohort is green at 100 %");
        }
    }

    #[test]
    fn a_forced_color_beats_the_weight() {
        let key = flow("198.18.1.10:40000", "198.18.100.1:80", 6);
        let hash = cohort_hash(Cohort::Flow, &key, DEFAULT_HASH_SEED);
        for weight in [0, 500_000, WEIGHT_SCALE] {
            for forced in [Color::Blue, Color::Green] {
                let choice = choose_forced(hash, weight, Some(forced), 3, 2).unwrap();
                assert_eq!(choice.color, forced, "weight {weight}");
                let unforced = choose_hashed(hash, weight, 3, 2).unwrap();
                if unforced.color == forced {
                    assert_eq!(choice, unforced, "same color, same backend");
                }
            }
        }
    }

    #[test]
    fn an_empty_color_sends_its_cohorts_to_the_other_one() {
        let key = flow("198.18.1.10:40000", "198.18.100.1:80", 6);
        let hash = cohort_hash(Cohort::Flow, &key, 0);
        assert_eq!(
            choose(Cohort::Flow, &key, 0, 0, 0, 3),
            Some(Choice {
                color: Color::Green,
                index: pool_index(hash, 3)
            }),
            "all on blue, blue empty: green"
        );
        assert_eq!(
            choose(Cohort::Flow, &key, 0, WEIGHT_SCALE, 5, 0),
            Some(Choice {
                color: Color::Blue,
                index: pool_index(hash, 5)
            }),
            "all on green, green empty: blue"
        );
        assert_eq!(choose(Cohort::Flow, &key, 0, 500_000, 0, 0), None);
        for weight in [0, 500_000, WEIGHT_SCALE] {
            assert_eq!(
                choose(Cohort::Flow, &key, 0, weight, 7, 11).map(|c| c.color),
                Some(if is_green(hash, weight) {
                    Color::Green
                } else {
                    Color::Blue
                }),
                "both non-empty: the threshold decides"
            );
        }
    }

    #[test]
    fn client_prefix_masks_the_leading_bits() {
        let v4 = Addr::from_v4([198, 18, 7, 200]);
        let v4f = Family::Ipv4 as u8;
        assert_eq!(mask_prefix(&v4, v4f, 24, 0), Addr::from_v4([198, 18, 7, 0]));
        assert_eq!(mask_prefix(&v4, v4f, 20, 0), Addr::from_v4([198, 18, 0, 0]));
        assert_eq!(mask_prefix(&v4, v4f, 0, 64), v4);
        assert_eq!(mask_prefix(&v4, v4f, 32, 0), v4);
        let v6 = Addr::from_v6([
            0xfd, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4, 5, 6, 7, 8,
        ]);
        let v6f = Family::Ipv6 as u8;
        assert_eq!(
            mask_prefix(&v6, v6f, 24, 64),
            Addr::from_v6([
                0xfd, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 0, 0, 0, 0, 0
            ])
        );
        assert_eq!(
            mask_prefix(&v6, v6f, 0, 52),
            Addr::from_v6([0xfd, 0, 0, 1, 0xaa, 0xbb, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        );
        assert_eq!(mask_prefix(&v6, v6f, 24, 0), v6);
        // Two clients of one /24 share the client cohort's hash.
        let config = ServiceConfig {
            cohort: Cohort::Client as u32,
            client_prefix_v4: 24,
            ..ServiceConfig::default()
        };
        let a = flow("198.18.7.10:40000", "198.18.100.1:80", 6);
        let b = flow("198.18.7.99:50000", "198.18.100.1:80", 6);
        let c = flow("198.18.8.10:40000", "198.18.100.1:80", 6);
        assert_eq!(service_hash(&config, &a, 1), service_hash(&config, &b, 1));
        assert_ne!(service_hash(&config, &a, 1), service_hash(&config, &c, 1));
        let whole = ServiceConfig {
            client_prefix_v4: 0,
            ..config
        };
        assert_eq!(
            service_hash(&whole, &a, 1),
            cohort_hash(Cohort::Client, &a, 1)
        );
    }
}
