use std::path::PathBuf;

/// Everything that can go wrong between the daemon and the kernel.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object failed (are you root with CAP_BPF?): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no program `{name}` (stale build?)")]
    MissingProgram { name: &'static str },
    #[error("the eBPF object has no map `{name}` (stale build?)")]
    MissingMap { name: &'static str },
    #[error("program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to interface `{interface}` failed: {source}")]
    Attach {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface `{interface}` does not exist")]
    UnknownInterface { interface: String },
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map `{name}`: duplicating its file descriptor: {source}")]
    MapHandle {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no service at {address} in the data plane")]
    UnknownService { address: std::net::SocketAddr },
    #[error("cannot enable XDP_REDIRECT to interface index {ifindex}: {source}")]
    Redirect {
        ifindex: u32,
        #[source]
        source: Box<aya::maps::xdp::XdpMapError>,
    },
    #[error(
        "interface `{interface}` is a bridge: XDP cannot transmit through a bridge, so the fast \
         path stays off there (remove it from redirect_interfaces)"
    )]
    RedirectToBridge { interface: String },
    #[error("pinning under {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning {path}: {source}")]
    PinObject {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error(
        "opening the pinned map {path}: {source} (pinned by a release with another map layout? \
         `splitter unload` and a start replace the data plane; that drops the pinned flows)"
    )]
    OpenPinnedMap {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("opening the pinned program {path}: {source}")]
    OpenPinnedProgram {
        path: PathBuf,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "{path} is not on a bpf filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`) or point control.bpffs at one"
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "the data plane pinned under {path} is incomplete (missing {missing}) but has attached links: run `splitter unload` and start again"
    )]
    IncompletePins { path: PathBuf, missing: String },
    #[error(
        "the data plane pinned under {path} was loaded with {setting} = {pinned}, the config says {configured}: set it back, or run `splitter unload` (drops pinned flows and counters) and start again"
    )]
    PinnedSettingDiffers {
        path: PathBuf,
        setting: &'static str,
        pinned: u64,
        configured: u64,
    },
    #[error("reading the load-time settings of the pinned data plane ({path}): {source}")]
    PinnedGlobals {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the eBPF object has no `{symbol}` in .rodata (stale build?)")]
    MissingGlobal { symbol: &'static str },
    #[error(
        "interface `{interface}`: {hook} is attached without a bpf_link, which cannot be pinned ({detail})"
    )]
    Unpinnable {
        interface: String,
        hook: &'static str,
        detail: &'static str,
    },
}
