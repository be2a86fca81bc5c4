//! `splitter_build_info{version,commit}`: always 1; the labels say which build is running
//! (join it to other series with `* on() group_left(version) splitter_build_info`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// Registers `splitter_build_info` with this binary's version and commit.
pub(super) fn register(registry: &mut Registry) {
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION"),
        commit: crate::cli::COMMIT,
    })
    .set(1);
    registry.register(
        "splitter_build_info",
        "The running build: version and git commit (always 1)",
        info,
    );
}
