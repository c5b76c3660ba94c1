//! `cargo xtask setup cuda`: the one-time set-up for an offline `--features cuda` build.
//!
//! burn's CUDA backend (cubecl-cuda 0.11) links LLVM for its NVPTX code generator through
//! `cubecl-llvm`, whose build dependency `tracel-llvm-bundler` downloads a prebuilt LLVM 23 into
//! `<data dir>/tracel/tracel-llvm-<version>/` unless that folder already holds its sentinel file
//! `.tracel-llvm-installed`; the bundler's `link()` then asks `<prefix>/bin/llvm-config
//! --link-static` for the libraries. This set-up offers Debian's LLVM 22 (a package of the
//! distribution's registry, built with every target, NVPTX included) at that prefix: a small
//! `llvm-config` wrapper that forwards to `llvm-config-22`, and the sentinel. Nothing is
//! downloaded outside the package registry. docs/backends.md says why LLVM 22 serves a crate that
//! names 23 (llvm-sys is built with `no-llvm-linking`; every LLVM-C function the CUDA stack calls
//! exists in 22).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{is_root, root, run};

/// The Debian packages: LLVM 22 (headers, static libraries, `llvm-config-22`), Polly's static
/// libraries (Debian's `llvm-config --libs` names them) and the `.so` link name of zstd, which
/// LLVM's static libraries need.
const PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"];
const LLVM_CONFIG: &str = "/usr/lib/llvm-22/bin/llvm-config";
/// Marks a prefix this set-up wrote (so that a real downloaded bundle is never overwritten).
const MARKER: &str = "rlhf-xtask-setup-cuda";

/// Entry point for `cargo xtask setup <what>`.
pub fn run_setup(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("cuda") => setup_cuda(),
        Some(other) => bail!("unknown set-up `{other}`: the only one is `cuda`"),
        None => bail!("usage: cargo xtask setup cuda"),
    }
}

/// Where the bundler looks for its LLVM (`<data dir>/tracel/tracel-llvm-<version>`).
fn bundle_prefix() -> Result<PathBuf> {
    let version = bundler_version()?;
    Ok(data_local_dir()?
        .join("tracel")
        .join(format!("tracel-llvm-{version}")))
}

/// Whether a `--features cuda` build can find its LLVM (this set-up, or the bundler's own
/// download, has been done).
pub fn cuda_ready() -> bool {
    bundle_prefix().is_ok_and(|p| p.join(".tracel-llvm-installed").exists())
}

fn setup_cuda() -> Result<()> {
    ensure_llvm()?;
    let version = bundler_version()?;
    let prefix = bundle_prefix()?;
    write_prefix(&prefix)?;
    let llvm = llvm_config(&["--version"])?;
    eprintln!(
        "\nsetup cuda: LLVM {llvm} (Debian's llvm-22-dev, NVPTX built) stands in for \
         tracel-llvm {version} at {}\n\
         No environment variable is needed. Build with:\n  \
         cargo build --release -p rlhf-cli --features cuda\n\
         The binary finds the CUDA driver (libcuda.so) at run time; without a GPU, \
         `--backend cuda` fails with an error naming the cause.",
        prefix.display()
    );
    Ok(())
}

/// Installs the packages unless `llvm-config-22` is there, then checks it builds NVPTX.
fn ensure_llvm() -> Result<()> {
    let have_zstd = Path::new("/usr/lib/x86_64-linux-gnu/libzstd.so").exists()
        || Path::new("/usr/lib/aarch64-linux-gnu/libzstd.so").exists();
    let have_polly = Path::new("/usr/lib/llvm-22/lib/libPolly.a").exists();
    if !Path::new(LLVM_CONFIG).exists() || !have_zstd || !have_polly {
        if !is_root() {
            bail!(
                "LLVM 22 is not installed: run `sudo apt-get install {}` (Debian 12 or newer), \
                 then `cargo xtask setup cuda` again",
                PACKAGES.join(" ")
            );
        }
        let mut update = Command::new("apt-get");
        update.args(["update", "-qq"]);
        run("apt-get update", update)?;
        let mut install = Command::new("apt-get");
        install
            .args(["install", "-y", "-qq"])
            .args(PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive");
        run("install LLVM 22", install)?;
    }
    let targets = llvm_config(&["--targets-built"])?;
    if !targets.split_whitespace().any(|t| t == "NVPTX") {
        bail!("{LLVM_CONFIG} --targets-built is `{targets}`: the CUDA backend needs NVPTX");
    }
    Ok(())
}

fn llvm_config(args: &[&str]) -> Result<String> {
    let out = Command::new(LLVM_CONFIG)
        .args(args)
        .output()
        .with_context(|| format!("running {LLVM_CONFIG}"))?;
    if !out.status.success() {
        bail!(
            "{LLVM_CONFIG} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The version of `tracel-llvm-bundler` in Cargo.lock (it names the prefix folder).
fn bundler_version() -> Result<String> {
    let lock = root().join("Cargo.lock");
    let text = fs::read_to_string(&lock).with_context(|| format!("reading {}", lock.display()))?;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"tracel-llvm-bundler\""
            && let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = "))
        {
            return Ok(v.trim_matches('"').to_string());
        }
    }
    bail!(
        "{}: no tracel-llvm-bundler package (is the cuda feature still on cubecl-llvm?)",
        lock.display()
    )
}

/// What the `dirs` crate calls the local data directory on Linux.
fn data_local_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| Path::new(d).is_absolute()) {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/share"))
}

/// The `llvm-config` the bundler runs: Debian's, with absolute shared-library paths in
/// `--system-libs` (`/usr/lib/x86_64-linux-gnu/libz3.so`) turned into `-l` flags, because the
/// bundler keeps a path's file stem (`libz3`) as the library name.
fn wrapper() -> String {
    format!(
        "#!/bin/bash\n\
         # {MARKER}: Debian's LLVM 22 in place of the tracel-llvm bundle (docs/backends.md)\n\
         set -o pipefail\n\
         {LLVM_CONFIG} \"$@\" | sed -E 's#(^| )/[^ ]*/lib([A-Za-z0-9_+-]+)\\.so#\\1-l\\2#g'\n"
    )
}

fn write_prefix(prefix: &Path) -> Result<()> {
    let sentinel = prefix.join(".tracel-llvm-installed");
    let config = prefix.join("bin/llvm-config");
    let ours = fs::read_to_string(&config).is_ok_and(|t| t.contains(MARKER));
    if sentinel.exists() && !ours {
        eprintln!(
            "setup cuda: {} already holds an LLVM bundle (not written by this set-up); left as is",
            prefix.display()
        );
        return Ok(());
    }
    fs::create_dir_all(prefix.join("bin"))
        .with_context(|| format!("creating {}", prefix.display()))?;
    fs::write(&config, wrapper()).with_context(|| format!("writing {}", config.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&config, fs::Permissions::from_mode(0o755))?;
    let libs = Command::new(&config)
        .args(["--link-static", "--system-libs"])
        .output()
        .with_context(|| format!("running {}", config.display()))?;
    if !libs.status.success() {
        bail!(
            "{} --link-static --system-libs failed: {}",
            config.display(),
            String::from_utf8_lossy(&libs.stderr)
        );
    }
    fs::write(&sentinel, format!("{MARKER}\n"))
        .with_context(|| format!("writing {}", sentinel.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_rewrites_absolute_library_paths() {
        let script = wrapper();
        let sed = script
            .lines()
            .find(|l| l.contains("sed -E"))
            .expect("the wrapper has a sed line");
        let expr = sed.split('\'').nth(1).expect("a quoted expression");
        let out = Command::new("sed")
            .args(["-E", expr])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(b"-lrt -ldl /usr/lib/x86_64-linux-gnu/libz3.so -lz -lxml2\n")?;
                c.wait_with_output()
            })
            .expect("sed runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "-lrt -ldl -lz3 -lz -lxml2"
        );
    }

    #[test]
    fn the_lock_file_names_the_bundler() {
        let v = bundler_version().expect("Cargo.lock has tracel-llvm-bundler");
        assert!(v.starts_with("23."), "{v}");
    }
}
