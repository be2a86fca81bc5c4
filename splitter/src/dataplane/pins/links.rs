//! The link pins of each interface: created when missing or defunct, kept when live, removed to
//! detach; and [`unload`], which removes everything pinned.

use std::{io, os::fd::AsFd, path::Path};

use aya::programs::links::FdLink;

use super::{Hook, PinLayout};
use crate::{
    dataplane::{Attachment, DataplaneError},
    sys,
};

/// Makes sure both hooks of `interface` (index `ifindex`) have a live pinned link, creating
/// the missing ones with `attach`. Live links are kept as they are (a restart changes nothing
/// on the wire); a link whose interface is gone (or was re-created) is replaced.
pub(in crate::dataplane) fn pin_links(
    layout: &PinLayout,
    interface: &str,
    ifindex: u32,
    mut attach: impl FnMut(Hook) -> Result<FdLink, DataplaneError>,
) -> Result<Attachment, DataplaneError> {
    let mut outcome = Attachment::Kept;
    for hook in Hook::ALL {
        let path = layout.link(interface, hook);
        if path.exists() {
            if link_is_live(&path, hook, ifindex) {
                continue;
            }
            tracing::warn!(link = %path.display(), "pinned link is defunct; attaching again");
            std::fs::remove_file(&path).map_err(layout.pin_error(&path))?;
        }
        let dir = layout.interface_links(interface);
        std::fs::create_dir_all(&dir).map_err(layout.pin_error(&dir))?;
        attach(hook)?
            .pin(&path)
            .map_err(|source| DataplaneError::PinObject { path, source })?;
        outcome = Attachment::Attached;
    }
    Ok(outcome)
}

/// A pinned link is live when it is still attached to this interface (ifindex 0 means its
/// interface was deleted; another index means the name now belongs to a new interface).
fn link_is_live(path: &Path, hook: Hook, ifindex: u32) -> bool {
    let Ok(fd) = sys::obj_get(path) else {
        return false;
    };
    match sys::link_target(fd.as_fd()) {
        Ok(target) => target.link_type == hook.link_type() && target.ifindex == ifindex,
        Err(_) => false,
    }
}

/// Detaches both programs from `interface` (removes its link pins). Whether anything was
/// attached.
pub fn detach(layout: &PinLayout, interface: &str) -> Result<bool, DataplaneError> {
    let mut detached = false;
    for hook in Hook::ALL {
        let path = layout.link(interface, hook);
        match std::fs::remove_file(&path) {
            // The pin held the last reference: removing it detaches the program.
            Ok(()) => detached = true,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(layout.pin_error(&path)(error)),
        }
    }
    let dir = layout.interface_links(interface);
    match std::fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(layout.pin_error(&dir)(error)),
    }
    Ok(detached)
}

/// What [`unload`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unloaded {
    /// Interfaces the programs were detached from.
    pub interfaces: Vec<String>,
    /// Whether pinned maps and programs were removed.
    pub dataplane: bool,
}

/// Detaches and removes everything pinned under `root` (no daemon needed).
pub fn unload(root: &Path) -> Result<Unloaded, DataplaneError> {
    let layout = PinLayout::new(root);
    let mut unloaded = Unloaded::default();
    for interface in layout.linked_interfaces() {
        detach(&layout, &interface)?;
        unloaded.interfaces.push(interface);
    }
    if layout.dataplane().exists() {
        std::fs::remove_dir_all(layout.dataplane())
            .map_err(layout.pin_error(&layout.dataplane()))?;
        unloaded.dataplane = true;
    }
    if root.exists() {
        // Staging leftovers hold no links; then the (now empty) directories.
        layout.prepare()?;
        let _ = std::fs::remove_dir(layout.links());
        let _ = std::fs::remove_dir(&layout.root);
    }
    Ok(unloaded)
}
