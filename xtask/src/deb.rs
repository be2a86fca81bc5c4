//! `cargo xtask deb`: a Debian package built with `dpkg-deb` from the tree `cargo xtask
//! install --prefix /usr` writes (`target/debian/splitter_VERSION_ARCH.deb`).
//!
//! The package installs the binary, the unit (`/usr/lib/systemd/system/splitter.service`, not
//! enabled: the config `/etc/splitter/splitter.toml` is the operator's), the man page,
//! completions and the docs. An upgrade restarts a running daemon (`try-restart`): the new one
//! adopts the pinned data plane, so traffic and established connections are not touched.
//! Removing the package stops the daemon and leaves the data plane attached (`splitter unload`
//! first removes it); purging also removes `/var/lib/splitter`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{install, run_command, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Where to write the .deb [default: target/debian].
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Package this splitter binary instead of building one.
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
}

const POSTINST: &str = r#"#!/bin/sh
set -e
# Only on a live system managed by systemd (not when installed into another root).
if [ "$1" = configure ] && [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # An upgrade restarts a running daemon: the new one adopts the pinned data plane (hitless).
    if [ -n "$2" ]; then
        systemctl try-restart splitter.service || true
    fi
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
# The data plane stays attached and pinned after the daemon stops: `splitter unload` removes it.
if [ "$1" = remove ] && [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl stop splitter.service || true
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf "$DPKG_ROOT/var/lib/splitter"
fi
if [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
"#;

pub fn run(options: &Options) -> anyhow::Result<()> {
    let binary = install::binary(options.binary.as_deref())?;
    let out_dir = options
        .out_dir
        .clone()
        .unwrap_or_else(|| workspace_root().join("target/debian"));
    let deb = build(&binary, &out_dir)?;
    eprintln!("built {}", deb.display());
    Ok(())
}

/// Stages the package tree and builds the .deb; its path.
fn build(binary: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    let version = version(binary)?;
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"))?;
    let name = format!("splitter_{version}_{arch}");
    let stage = out_dir.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    install::install(binary, Path::new("/usr"), Some(&stage))?;
    // Debian policy: man pages compressed; the copyright file in the doc directory.
    let man = stage.join("usr/share/man/man1/splitter.1");
    run_command(Command::new("gzip").args(["-9n", "-f"]).arg(&man))?;
    let doc = stage.join("usr/share/doc/splitter");
    fs::write(
        doc.join("copyright"),
        "splitter\nCopyright: the splitter authors\nLicense: MIT OR Apache-2.0\n \
         The full texts are LICENSE-MIT and LICENSE-APACHE in this directory.\n",
    )?;
    let installed_kib = disk_usage_kib(&stage)?;
    let control = stage.join("DEBIAN");
    fs::create_dir_all(&control)?;
    let maintainer = std::env::var("DEBEMAIL").map_or_else(
        |_| "the splitter authors <root@localhost>".to_owned(),
        |email| format!("the splitter authors <{email}>"),
    );
    fs::write(
        control.join("control"),
        format!(
            "Package: splitter\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: {maintainer}\n\
             Installed-Size: {installed_kib}\n\
             Depends: libc6\n\
             Section: net\n\
             Priority: optional\n\
             Description: kernel-level blue/green and canary traffic splitter\n \
             An XDP program rewrites packets sent to a service address to a blue or green\n \
             backend chosen per flow by hash and weight; a TC egress program rewrites the\n \
             replies. Established connections stay pinned when weights change. Includes the\n \
             daemon, its CLI and a systemd unit.\n"
        ),
    )?;
    for (script, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        let path = control.join(script);
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    let deb = out_dir.join(format!("{name}.deb"));
    run_command(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The package version: the binary's (`splitter 0.1.0 (abc1234)` → `0.1.0`).
fn version(binary: &Path) -> anyhow::Result<String> {
    let text = stdout(Command::new(binary).arg("--version"))?;
    text.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("unexpected `splitter --version` output: {text}"))
}

fn disk_usage_kib(dir: &Path) -> anyhow::Result<u64> {
    let text = stdout(Command::new("du").args(["-sk"]).arg(dir))?;
    text.split_whitespace()
        .next()
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("unexpected du output: {text}"))
}

fn stdout(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}
