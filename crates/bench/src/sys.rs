//! Process memory and machine facts from `/proc` (Linux; `None` elsewhere).

use serde::Serialize;

/// Resets the kernel's peak-RSS mark of this process (`echo 5 > /proc/self/clear_refs`), so the
/// next [`peak_rss_kib`] is the peak of what ran since. Returns whether the reset worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `VmHWM` (peak resident set size) of this process in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    status_field("VmHWM:")
}

/// `VmRSS` (current resident set size) of this process in KiB.
pub fn rss_kib() -> Option<u64> {
    status_field("VmRSS:")
}

fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// CPU model from `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// Total memory in MiB.
    pub memory_mib: Option<u64>,
    /// `std::env::consts::OS` / `ARCH`.
    pub os: String,
}

impl Machine {
    /// Facts about this machine.
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        });
        let memory_mib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 =
                line["MemTotal:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kib / 1024)
        });
        Self {
            cpus,
            cpu_model,
            memory_mib,
            os: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_on_linux() {
        if cfg!(target_os = "linux") {
            let peak = peak_rss_kib().unwrap();
            let now = rss_kib().unwrap();
            assert!(peak > 0 && now > 0, "peak {peak} now {now}");
        }
        assert!(Machine::detect().cpus >= 1);
    }
}
