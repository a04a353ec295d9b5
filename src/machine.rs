//! What a measurement ran on, and how much memory this process uses: for
//! the demo's report and the benches, which print both with every number;
//! and giving memory the process has freed back to the system.

use std::sync::OnceLock;
use std::time::Duration;

/// `"<cores> cores, <cpu model>"`.
pub fn describe() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    format!("{cores} cores, {model}")
}

fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Peak resident memory of this process, in MiB (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

/// Resident memory of this process now, in MiB (Linux).
pub fn rss_mib() -> Option<f64> {
    status_mib("VmRSS:")
}

/// How often freed memory is given back to the system.
pub const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Starts, once per process, a thread that gives memory freed by any
/// thread back to the system every [`TRIM_EVERY`].
///
/// glibc's allocator keeps what a thread frees in that thread's arena for
/// its next allocations, and returns it to the system only from the top
/// of an arena. The workers, the view sink and the tokio threads allocate
/// and free batches of every size all the time, so free holes pile up
/// inside the arenas: flat out, half of the resident memory was free
/// memory held this way (glibc's `malloc_stats`: 846 MB taken from the
/// system, 456 MB in use). `malloc_trim` hands the whole free pages among
/// them back (`MADV_DONTNEED`) without moving anything. The allocator
/// itself stays glibc's: a UDF's library frees memory the host allocated
/// (see `udf.rs`).
pub fn give_back_freed_memory() {
    static TRIMMER: OnceLock<()> = OnceLock::new();
    TRIMMER.get_or_init(|| {
        let started = std::thread::Builder::new().name("memory trim".into()).spawn(|| {
            loop {
                std::thread::sleep(TRIM_EVERY);
                trim();
            }
        });
        if let Err(error) = started {
            tracing::warn!(%error, "cannot start the thread that gives freed memory back; memory stays as the allocator keeps it");
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and only rearranges the
    // allocator's free lists under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
