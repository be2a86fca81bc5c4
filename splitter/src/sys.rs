//! Every raw system call of the crate, and so its only `unsafe` code: the rest of the crate
//! denies `unsafe_code`. It lives at the crate root, not under `dataplane/`, because the state
//! directory's lock (`flock`) and the control socket's peer check (`geteuid`) need it too.
//!
//! - bpf(2) calls aya 0.14 does not expose: opening any pinned object, reading a link's target
//!   (to tell a live pinned link from one whose interface is gone), a raw map lookup (for the
//!   read-only `.rodata` map);
//! - statfs(2): whether a path is on a bpffs;
//! - interfaces: `if_nametoindex`, the driver name (ethtool ioctl);
//! - `clock_gettime(CLOCK_MONOTONIC)`.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `enum bpf_link_type` values we care about.
pub const LINK_TYPE_XDP: u32 = 6;
pub const LINK_TYPE_TCX: u32 = 11;

fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised `union bpf_attr` prefix of the size we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// BPF_OBJ_GET: a new fd for whatever is pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    let mut attr = [0u64; 4];
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What a bpf link is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTarget {
    pub link_type: u32,
    pub link_id: u32,
    pub prog_id: u32,
    /// 0 once the interface is gone (the link is then defunct).
    pub ifindex: u32,
}

/// BPF_OBJ_GET_INFO_BY_FD on a link: type, program and interface of an XDP or TCX link.
pub fn link_target(fd: BorrowedFd<'_>) -> io::Result<LinkTarget> {
    // struct bpf_link_info: u32 type, id, prog_id; then an 8-aligned union whose xdp and tcx
    // members both start with u32 ifindex (offset 16).
    let mut info = [0u64; 16];
    let mut attr = [0u64; 2];
    attr[0] = fd.as_raw_fd() as u32 as u64 | (size_of_val(&info) as u64) << 32;
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkTarget {
        link_type: info[0] as u32,
        link_id: (info[0] >> 32) as u32,
        prog_id: info[1] as u32,
        ifindex: info[2] as u32,
    })
}

/// BPF_MAP_LOOKUP_ELEM with raw key and value buffers.
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<()> {
    // struct { __u32 map_fd; __aligned_u64 key; __aligned_u64 value; __u64 flags; }
    let mut attr = [0u64; 4];
    attr[0] = map.as_fd().as_raw_fd() as u32 as u64;
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_mut_ptr() as u64;
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(())
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is writable.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

/// The interface's index in the current network namespace.
pub fn interface_index(interface: &str) -> Option<u32> {
    let name = CString::new(interface).ok()?;
    // SAFETY: `name` is NUL-terminated.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => None,
        index => Some(index),
    }
}

/// The interface's driver name (ETHTOOL_GDRVINFO) in the current network namespace: "veth",
/// "bridge", "virtio_net", ... (`/sys/class/net` may show another namespace's interfaces).
pub fn interface_driver(interface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    // SAFETY: all-zero is a valid value of this plain-integer struct.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: all-zero is a valid `ifreq` (an empty name, a null union).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return None;
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = std::ptr::from_mut(&mut info).cast();
    // SAFETY: plain socket(2); the fd is owned (closed on drop) right after.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us.
    let socket = unsafe { OwnedFd::from_raw_fd(socket) };
    // SAFETY: `request` names the interface and points at `info`, which outlives the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
