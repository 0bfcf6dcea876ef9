//! The `winedevice.exe` processes that host the drivers this stage starts.
//!
//! Wine reports a driver service STOPPED from inside its `winedevice.exe` before that process
//! has exited. A `sc start` that reaches services.exe in that window is answered 1359
//! (ERROR_INTERNAL_ERROR) before DriverEntry runs: a race in the harness, not a driver
//! failure, seen once on a loaded CI machine. So every stop waits for the hosts that the
//! matching starts created to be gone.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a stopped driver's host may take to exit.
const HOST_EXIT: Duration = Duration::from_secs(10);

/// The live (not zombie) `winedevice.exe` processes of the prefix `prefix`.
pub(super) fn winedevices(prefix: &Path) -> BTreeSet<u32> {
    let want = format!("WINEPREFIX={}", prefix.display());
    let mut pids = BTreeSet::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let p = e.path();
        let cmd = fs::read(p.join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmd)
            .to_ascii_lowercase()
            .contains("winedevice.exe")
        {
            continue;
        }
        let env = fs::read(p.join("environ")).unwrap_or_default();
        if !env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            continue;
        }
        if zombie(&fs::read_to_string(p.join("stat")).unwrap_or_default()) {
            continue;
        }
        pids.insert(pid);
    }
    pids
}

/// Whether a `/proc/PID/stat` line is a zombie's (the state follows the last `)`).
fn zombie(stat: &str) -> bool {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// Waits until none of `hosts` is alive in `prefix`; the ones still alive after
/// [`HOST_EXIT`].
pub(super) fn wait_gone(prefix: &Path, hosts: &BTreeSet<u32>) -> BTreeSet<u32> {
    let t = Instant::now();
    loop {
        let alive: BTreeSet<u32> = winedevices(prefix).intersection(hosts).copied().collect();
        if alive.is_empty() || t.elapsed() >= HOST_EXIT {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombie_state_is_read_after_the_command_name() {
        assert!(zombie("2739 (winedevice.exe) Z 1 2739"));
        assert!(!zombie("2739 (winedevice.exe) S 1 2739"));
        // A command name holding ") Z" does not fool it.
        assert!(!zombie("12 (a) Z b) R 1 12"));
        assert!(!zombie(""));
    }

    #[test]
    fn no_winedevice_in_a_prefix_that_does_not_exist() {
        assert!(winedevices(Path::new("/nonexistent/prefix")).is_empty());
    }
}
