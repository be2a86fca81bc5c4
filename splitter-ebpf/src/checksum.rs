//! Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')) for the XDP program,
//! where packets carry complete checksums as received from the wire. One's complement sums do
//! not depend on byte order, so words are used exactly as they sit in memory.
//! (The TC program uses the kernel's csum helpers instead: they also handle CHECKSUM_PARTIAL.)

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// A running difference "old words out, new words in", applied to any number of checksums.
#[derive(Clone, Copy, Default)]
pub struct Delta(u64);

impl Delta {
    #[inline(always)]
    pub const fn new() -> Self {
        Self(0)
    }

    #[inline(always)]
    pub fn u16(mut self, old: u16, new: u16) -> Self {
        self.0 += (!old) as u64 + new as u64;
        self
    }

    #[inline(always)]
    pub fn u32(self, old: u32, new: u32) -> Self {
        self.u16(old as u16, new as u16)
            .u16((old >> 16) as u16, (new >> 16) as u16)
    }

    #[inline(always)]
    pub fn addr(self, old: &[u32; 4], new: &[u32; 4]) -> Self {
        self.u32(old[0], new[0])
            .u32(old[1], new[1])
            .u32(old[2], new[2])
            .u32(old[3], new[3])
    }

    /// Both sets of changes.
    #[inline(always)]
    pub fn plus(self, other: Delta) -> Self {
        Self(self.0 + other.0)
    }

    /// The checksum field `check` after the changes.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold((!check) as u64 + self.0)
    }

    /// As [`Delta::apply`] for a UDP checksum: zero means "none" (IPv4) and stays zero; a
    /// computed zero is sent as 0xffff.
    #[inline(always)]
    pub fn apply_udp(self, check: u16) -> u16 {
        if check == 0 {
            return 0;
        }
        match self.apply(check) {
            0 => 0xffff,
            sum => sum,
        }
    }
}
