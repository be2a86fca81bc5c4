//! `cargo xtask install --prefix DIR [--destdir STAGE]`: builds the release binary and puts
//! it and everything around it in their places under `DIR`:
//!
//! | path | what |
//! |---|---|
//! | `bin/splitter` | the daemon and CLI |
//! | `lib/systemd/system/splitter.service` | the unit (`packaging/`), `ExecStart` pointing at `DIR/bin/splitter` |
//! | `share/man/man1/splitter.1` | the man page (`splitter manpage`, clap_mangen) |
//! | `share/bash-completion/completions/splitter` | bash completions (`splitter completions bash`) |
//! | `share/zsh/vendor-completions/_splitter` | zsh |
//! | `share/fish/vendor_completions.d/splitter.fish` | fish |
//! | `share/doc/splitter/` | `splitter.example.toml`, `README.md`, the licenses |
//! | `share/splitter/grafana/splitter.json` | the Grafana dashboard (`packaging/grafana/`) |
//!
//! `--destdir STAGE` writes the same tree under `STAGE/DIR` (for packages: the unit still
//! points at `DIR/bin/splitter`). Nothing under `/etc` is written: the config is the
//! operator's (`/etc/splitter/splitter.toml`, which the unit reads).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{run_command, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Installation prefix, e.g. /usr/local or /usr.
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Write the files under STAGE/DIR instead of DIR (for packaging).
    #[arg(long, value_name = "STAGE")]
    pub destdir: Option<PathBuf>,
    /// Install this splitter binary instead of building one (tests, CI artifacts).
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
}

/// Where the unit expects the binary in the repository's copy.
const UNIT_BINARY: &str = "/usr/bin/splitter";

pub fn run(options: &Options) -> anyhow::Result<()> {
    let binary = binary(options.binary.as_deref())?;
    let installed = install(&binary, &options.prefix, options.destdir.as_deref())?;
    for path in &installed {
        eprintln!("installed {}", path.display());
    }
    Ok(())
}

/// `given`, or the release binary, built.
pub fn binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path.to_owned()),
        None => build(),
    }
}

/// Builds the release binary; its path.
fn build() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    run_command(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "splitter",
        "--bin",
        "splitter",
    ]))?;
    Ok(root.join("target/release/splitter"))
}

/// Installs `binary` and its files for `prefix` (under `destdir` if given); the paths written.
pub fn install(
    binary: &Path,
    prefix: &Path,
    destdir: Option<&Path>,
) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        prefix.is_absolute(),
        "--prefix must be an absolute path, not {}",
        prefix.display()
    );
    let root = workspace_root();
    let stage = |relative: &str| -> PathBuf {
        let target = prefix.join(relative);
        match destdir {
            Some(destdir) => destdir.join(target.strip_prefix("/").expect("absolute")),
            None => target,
        }
    };
    let mut written = Vec::new();
    let mut put = |relative: &str, contents: &[u8], mode: u32| -> anyhow::Result<()> {
        let path = stage(relative);
        let dir = path.parent().expect("files live in directories");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        written.push(path);
        Ok(())
    };
    let read = |relative: &str| -> anyhow::Result<Vec<u8>> {
        let path = root.join(relative);
        fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };

    put("bin/splitter", &read_path(binary)?, 0o755)?;
    let unit = String::from_utf8(read("packaging/splitter.service")?)?;
    anyhow::ensure!(
        unit.contains(UNIT_BINARY),
        "packaging/splitter.service no longer names {UNIT_BINARY}"
    );
    let installed_binary = prefix.join("bin/splitter");
    let unit = unit.replace(UNIT_BINARY, &installed_binary.to_string_lossy());
    put(
        "lib/systemd/system/splitter.service",
        unit.as_bytes(),
        0o644,
    )?;
    put(
        "share/man/man1/splitter.1",
        &generated(binary, &["manpage"])?,
        0o644,
    )?;
    for (shell, relative) in [
        ("bash", "share/bash-completion/completions/splitter"),
        ("zsh", "share/zsh/vendor-completions/_splitter"),
        ("fish", "share/fish/vendor_completions.d/splitter.fish"),
    ] {
        put(
            relative,
            &generated(binary, &["completions", shell])?,
            0o644,
        )?;
    }
    for (from, to) in [
        ("examples/splitter.toml", "splitter.example.toml"),
        ("README.md", "README.md"),
        ("LICENSE-MIT", "LICENSE-MIT"),
        ("LICENSE-APACHE", "LICENSE-APACHE"),
    ] {
        put(&format!("share/doc/splitter/{to}"), &read(from)?, 0o644)?;
    }
    put(
        "share/splitter/grafana/splitter.json",
        &read("packaging/grafana/splitter.json")?,
        0o644,
    )?;
    Ok(written)
}

fn read_path(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// What `binary ARGS` prints (completions, the man page).
fn generated(binary: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {} {args:?}", binary.display()))?;
    anyhow::ensure!(
        out.status.success() && !out.stdout.is_empty(),
        "{} {args:?} failed: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}
