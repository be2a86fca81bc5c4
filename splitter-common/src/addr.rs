//! Addresses as stored in map keys: 16 bytes in network order, IPv4 in the first 4.

/// An IPv4 or IPv6 address, stored as four 32-bit words whose memory holds the address bytes in
/// network order (the words are loaded straight from the packet). IPv4 uses word 0 only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Addr(pub [u32; 4]);

/// Address family tag stored in keys.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4 = 4,
    Ipv6 = 6,
}

impl Addr {
    pub const fn from_v4(octets: [u8; 4]) -> Self {
        Self([u32::from_ne_bytes(octets), 0, 0, 0])
    }

    pub const fn from_v6(o: [u8; 16]) -> Self {
        Self([
            u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
            u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
            u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
            u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
        ])
    }

    /// The address bytes in network order (IPv4: the first 4).
    pub const fn octets(&self) -> [u8; 16] {
        let a = self.0[0].to_ne_bytes();
        let b = self.0[1].to_ne_bytes();
        let c = self.0[2].to_ne_bytes();
        let d = self.0[3].to_ne_bytes();
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    pub const fn v4_octets(&self) -> [u8; 4] {
        self.0[0].to_ne_bytes()
    }
}
