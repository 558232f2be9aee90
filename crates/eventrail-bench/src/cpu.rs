//! Where a phase's CPU went, by process name, from `/proc` (Linux): the relay benchmark prints
//! it beside its rates, so that a ratio to a bare loop can be read against what the machine
//! had to spare. Processes that exit within a phase are not counted (the benchmark's servers
//! and pools live across phases).

use std::collections::HashMap;
use std::time::Instant;

/// The name this benchmark's own process is counted under.
pub(crate) const BENCH: &str = "eventrail-bench";

/// Clock ticks per second of `/proc`'s CPU times (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds so far of every process, keyed by pid, with its name.
fn processes() -> HashMap<u32, (String, f64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(')')?;
            // This process by its role, whatever its binary is called.
            let name = if pid == std::process::id() {
                BENCH.to_owned()
            } else {
                head.split_once('(')?.1.to_owned()
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after `state`.
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some((pid, (name, ticks / TICKS_PER_SECOND)))
        })
        .collect()
}

/// A phase being measured.
pub(crate) struct CpuMeter {
    started: Instant,
    before: HashMap<u32, (String, f64)>,
}

/// What a phase used: CPU seconds by process name, and its wall time.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuUse {
    pub(crate) by_name: Vec<(String, f64)>,
    pub(crate) seconds: f64,
}

impl CpuMeter {
    pub(crate) fn start() -> Self {
        Self {
            started: Instant::now(),
            before: processes(),
        }
    }

    pub(crate) fn stop(self) -> CpuUse {
        let seconds = self.started.elapsed().as_secs_f64();
        let mut by_name: HashMap<String, f64> = HashMap::new();
        for (pid, (name, now)) in processes() {
            let before = self.before.get(&pid).map_or(0.0, |(_, b)| *b);
            // A pid seen only now started during the phase: all its time is the phase's.
            *by_name.entry(name).or_default() += now - before;
        }
        let mut by_name: Vec<(String, f64)> =
            by_name.into_iter().filter(|(_, s)| *s > 0.0).collect();
        by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
        CpuUse { by_name, seconds }
    }
}

impl CpuUse {
    /// Cores busy on average over the phase.
    pub(crate) fn cores(&self) -> f64 {
        self.by_name.iter().fold(0.0, |sum, (_, s)| sum + s) / self.seconds.max(f64::EPSILON)
    }

    /// CPU µs per message of the processes named `name`.
    pub(crate) fn micros_per_message(&self, name: &str, messages: usize) -> f64 {
        self.per_message(messages, |n| n == name)
    }

    /// CPU µs per message of every process not in `named`.
    pub(crate) fn others_per_message(&self, named: &[&str], messages: usize) -> f64 {
        self.per_message(messages, |n| !named.contains(&n))
    }

    /// CPU µs per message of the processes whose names `counted` accepts.
    fn per_message(&self, messages: usize, counted: impl Fn(&str) -> bool) -> f64 {
        let seconds = self
            .by_name
            .iter()
            .filter(|(n, _)| counted(n))
            .fold(0.0, |sum, (_, s)| sum + s);
        seconds * 1e6 / messages.max(1) as f64
    }
}
