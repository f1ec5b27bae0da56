//! CPU figures from the kernel: this process's CPU time
//! (`/proc/self/stat`), the host's idle time (`/proc/stat`), and how many
//! cores the process may use (its affinity mask, and the `cpu.max` quota
//! of its cgroup and every parent, or cgroup v1's CFS quota).

use std::path::{Path, PathBuf};

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds this process has used.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_process_ticks(&stat).map(|t| t as f64 / clock_ticks())
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The
/// command name (field 2) may hold spaces and parentheses: fields are
/// counted after its last `)`.
fn parse_process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Idle + iowait CPU seconds of the whole host, summed over its cores.
pub fn host_idle_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_host_idle_ticks(&stat).map(|t| t as f64 / clock_ticks())
}

fn parse_host_idle_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    Some(f.get(3)? + f.get(4).copied().unwrap_or(0))
}

/// Cores this process may use: the CPUs of its affinity mask, capped by
/// the tightest CPU quota of its cgroup and the cgroups above it.
pub fn available_cores() -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let affinity = affinity_cpus().unwrap_or(cpus);
    match cgroup_quota() {
        Some(q) => affinity.min(q),
        None => affinity,
    }
}

fn affinity_cpus() -> Option<f64> {
    // SAFETY: set is a valid, zeroed cpu_set_t and its size is passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        let n = libc::CPU_COUNT(&set);
        (n > 0).then_some(n as f64)
    }
}

fn cgroup_quota() -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut best: Option<f64> = None;
    let mut take = |q: Option<f64>| {
        if let Some(q) = q {
            best = Some(best.map_or(q, |b: f64| b.min(q)));
        }
    };
    for (root, path) in cgroup_dirs(&own) {
        let mut dir = root.join(path.trim_start_matches('/'));
        loop {
            take(quota_in(&dir));
            if dir == root || !dir.pop() {
                break;
            }
        }
    }
    best
}

/// The cgroup directories (mount root, path below it) that may hold a CPU
/// quota for this process, from `/proc/self/cgroup`.
fn cgroup_dirs(own: &str) -> Vec<(PathBuf, String)> {
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            dirs.push((PathBuf::from("/sys/fs/cgroup"), path.to_string()));
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"] {
                dirs.push((PathBuf::from(mount), path.to_string()));
            }
        }
    }
    dirs
}

/// The quota in `dir` in cores: cgroup v2 `cpu.max`, or v1's CFS files.
fn quota_in(dir: &Path) -> Option<f64> {
    if let Ok(max) = std::fs::read_to_string(dir.join("cpu.max")) {
        return parse_cpu_max(&max);
    }
    let quota: i64 = std::fs::read_to_string(dir.join("cpu.cfs_quota_us"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let period: i64 = std::fs::read_to_string(dir.join("cpu.cfs_period_us"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// `cpu.max`: `max 100000` (no quota) or `150000 100000` (1.5 cores).
fn parse_cpu_max(s: &str) -> Option<f64> {
    let mut f = s.split_whitespace();
    let quota = f.next()?;
    let period: f64 = f.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_are_read_after_the_command_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 25 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_process_ticks(stat), Some(175));
        assert_eq!(parse_process_ticks("garbage"), None);
        assert!(process_cpu_seconds().is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn host_idle_counts_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 0 3 0 0 0\ncpu0 50 2 25 500 10 0 1 0 0 0\n";
        assert_eq!(parse_host_idle_ticks(stat), Some(1020));
        assert!(host_idle_seconds().is_some());
    }

    #[test]
    fn cpu_max_gives_cores_or_none() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn cgroup_lines_name_the_v2_and_v1_cpu_directories() {
        let v2 = cgroup_dirs("0::/system.slice/sluice.service\n");
        assert_eq!(
            v2,
            vec![(
                PathBuf::from("/sys/fs/cgroup"),
                "/system.slice/sluice.service".to_string()
            )]
        );
        let v1 = cgroup_dirs("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n");
        assert_eq!(v1.len(), 2);
        assert!(v1.iter().all(|(_, p)| p == "/docker/abc"));
        let cores = available_cores();
        assert!(cores > 0.0 && cores <= 4096.0, "{cores}");
    }
}
