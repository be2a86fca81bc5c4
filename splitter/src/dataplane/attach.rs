//! Attaching the programs to an interface, one way for every data plane, pinned or not: XDP
//! with the configured mode (and its fallback), TC egress as a TCX link, both as bpf_links
//! that the caller pins or keeps. Also the checks on the interfaces named in a config.

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, Xdp, links::FdLink, tc::TcAttachOptions,
};

use super::{DataplaneError, XdpMode};
use crate::sys;

/// The interface's index in the current network namespace.
pub fn interface_index(interface: &str) -> Option<u32> {
    sys::interface_index(interface)
}

/// The interface's index, or the error that names it.
pub(super) fn existing_interface(interface: &str) -> Result<u32, DataplaneError> {
    interface_index(interface).ok_or_else(|| DataplaneError::UnknownInterface {
        interface: interface.to_owned(),
    })
}

/// The index of an interface the fast path may redirect to: XDP_REDIRECT needs native XDP
/// transmit there. Physical NICs have it; a veth only when its peer has an XDP program or GRO
/// on; a bridge never (refused here).
pub(super) fn redirect_target(interface: &str) -> Result<u32, DataplaneError> {
    let ifindex = existing_interface(interface)?;
    if sys::interface_driver(interface).as_deref() == Some("bridge") {
        return Err(DataplaneError::RedirectToBridge {
            interface: interface.to_owned(),
        });
    }
    Ok(ifindex)
}

fn attach_error(interface: &str) -> impl Fn(aya::programs::ProgramError) -> DataplaneError + '_ {
    move |source| DataplaneError::Attach {
        interface: interface.to_owned(),
        source,
    }
}

/// Attaches the ingress program to `interface` as an XDP bpf_link (Linux 5.9).
pub(super) fn xdp(
    program: &mut Xdp,
    interface: &str,
    mode: XdpMode,
) -> Result<FdLink, DataplaneError> {
    use aya::programs::XdpMode as Flags;
    let id = match mode {
        XdpMode::Native => program.attach(interface, Flags::Driver),
        XdpMode::Generic => program.attach(interface, Flags::Skb),
        XdpMode::Auto => program
            .attach(interface, Flags::Driver)
            .or_else(|_| program.attach(interface, Flags::Skb)),
    }
    .map_err(attach_error(interface))?;
    let link = program.take_link(id).map_err(attach_error(interface))?;
    fd_link(
        link,
        interface,
        "XDP",
        "the kernel refused bpf_link_create; XDP links need Linux 5.9",
    )
}

/// Attaches the egress program to `interface` as a TCX link (Linux 6.6): unlike a netlink
/// clsact filter, it can be pinned, so it outlives the daemon in a way a restart can adopt.
pub(super) fn tc(program: &mut SchedClassifier, interface: &str) -> Result<FdLink, DataplaneError> {
    let id = program
        .attach_with_options(
            interface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(attach_error(interface))?;
    let link = program.take_link(id).map_err(attach_error(interface))?;
    fd_link(link, interface, "TC egress", "tcx links need Linux 6.6")
}

/// The link as a bpf_link, the kind that can be pinned (and is detached when its last fd or
/// pin goes).
fn fd_link<L>(
    link: L,
    interface: &str,
    hook: &'static str,
    detail: &'static str,
) -> Result<FdLink, DataplaneError>
where
    FdLink: TryFrom<L>,
{
    FdLink::try_from(link).map_err(|_| DataplaneError::Unpinnable {
        interface: interface.to_owned(),
        hook,
        detail,
    })
}
