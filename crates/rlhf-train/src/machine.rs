//! The machine a run was made on, in one line for its report: the CPU and the vector
//! instructions the CPU kernels may choose between. Runs are bitwise reproducible on one kind
//! of machine, but the same seed gave other numbers on another machine (docs/results.md, "The
//! same seed on another machine"; most likely the kernels' vector code sums in another order,
//! and training amplifies it), so a report says where its numbers come from.

/// `"AMD EPYC, x86_64, 2 threads, avx2 fma"`: the CPU's name where the OS tells it, the
/// architecture, the threads available and the vector extensions the CPU has.
pub fn describe() -> String {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut parts = Vec::new();
    if let Some(name) = cpu_name() {
        parts.push(name);
    }
    parts.push(std::env::consts::ARCH.to_string());
    parts.push(format!(
        "{threads} thread{}",
        if threads == 1 { "" } else { "s" }
    ));
    let simd = vector_extensions();
    parts.push(if simd.is_empty() {
        "no vector extensions detected".to_string()
    } else {
        simd.join(" ")
    });
    parts.join(", ")
}

/// The "model name" line of `/proc/cpuinfo` (Linux); `None` elsewhere or when it is absent.
fn cpu_name() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    model_name(&text)
}

fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "model name")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The names among `$feature` that the CPU has, by the architecture's detection macro (which
/// takes only literal tokens, hence a macro rather than a loop over a table).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! detected {
    ($detect:ident: $($feature:tt),+) => {{
        let mut found = Vec::new();
        $(if std::arch::$detect!($feature) {
            found.push($feature);
        })+
        found
    }};
}

#[cfg(target_arch = "x86_64")]
fn vector_extensions() -> Vec<&'static str> {
    detected!(is_x86_feature_detected: "avx512f", "avx2", "fma")
}

#[cfg(target_arch = "aarch64")]
fn vector_extensions() -> Vec<&'static str> {
    detected!(is_aarch64_feature_detected: "neon", "sve")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn vector_extensions() -> Vec<&'static str> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_name_line_is_found_and_trimmed() {
        let info =
            "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC \nflags\t: fpu";
        assert_eq!(model_name(info).as_deref(), Some("AMD EPYC"));
        assert_eq!(model_name("processor : 0\nmodel name :  \n"), None);
        assert_eq!(model_name(""), None);
    }

    #[test]
    fn the_line_names_the_architecture_and_the_threads() {
        let d = describe();
        assert!(d.contains(std::env::consts::ARCH), "{d}");
        assert!(d.contains(" thread"), "{d}");
    }
}
