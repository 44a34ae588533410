//! The fault schedules of the random scenarios, driven by a seeded RNG on a thread of their own.
//!
//! The schedule (which fault, where, for how long) comes from the seed; timing stays
//! nondeterministic. Every fault is recorded in the history on the same clock as the clients'
//! calls, and the nemesis reports the intervals during which progress cannot be expected
//! (`unhealthy`) and during which a majority of nodes is down (`majority_down`).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use redlock_tests::{Cluster, ProxyMode, ProxySet};

use crate::history::{Fault, Nanos, Record, Recorder};

/// Upper bound on the faults of one schedule, whatever the clock says.
const MAX_FAULTS: usize = 100_000;

/// The random scenarios (correctness.md §7.6); each one's fault schedule is in [`Nemesis::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// No faults.
    S0,
    /// SIGSTOP of 1–2 nodes at a time, 0.1–1.5 s (some longer than the ttl).
    S1,
    /// kill -9 of one node, later of a second one, never restarted.
    S2,
    /// Latency with jitter on 1–2 nodes, with 1.5 s spikes.
    S3,
    /// Per-client partitions (blackhole, refuse or reset of up to 2 nodes each): every client
    /// still reaches some majority, not the same one.
    S4,
    /// kill -9 and immediate restart of 1–3 nodes at once, with AOF `appendfsync always`.
    S5,
    /// kill -9 of 1–2 nodes, restarted empty after more than the ttl.
    S6,
    /// A majority paused or killed for longer than the ttl, then recovered.
    S7,
    /// Replies to one client delayed past the ttl on all of its proxies.
    S8,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::S0 => "s0-no-faults",
            Scenario::S1 => "s1-paused-minority",
            Scenario::S2 => "s2-killed-minority",
            Scenario::S3 => "s3-latency-minority",
            Scenario::S4 => "s4-asymmetric-partitions",
            Scenario::S5 => "s5-restart-aof-always",
            Scenario::S6 => "s6-delayed-restart",
            Scenario::S7 => "s7-majority-down",
            Scenario::S8 => "s8-replies-past-ttl",
        }
    }
}

/// What the nemesis reports once its schedule is over.
#[derive(Debug, Default)]
pub(crate) struct NemesisLog {
    pub(crate) faults: usize,
    pub(crate) unhealthy: Vec<(Nanos, Nanos)>,
    pub(crate) majority_down: Vec<(Nanos, Nanos)>,
}

/// Applies a scenario's faults until `stop`.
pub(crate) struct Nemesis {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) proxies: Vec<Arc<ProxySet>>,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) ttl: Duration,
    pub(crate) rng: StdRng,
    pub(crate) stop: Instant,
    pub(crate) log: NemesisLog,
}

impl Nemesis {
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        proxies: Vec<Arc<ProxySet>>,
        recorder: Arc<Recorder>,
        ttl: Duration,
        seed: u64,
        stop: Instant,
    ) -> Self {
        Nemesis {
            cluster,
            proxies,
            recorder,
            ttl,
            rng: StdRng::seed_from_u64(seed),
            stop,
            log: NemesisLog::default(),
        }
    }

    /// Runs `scenario`'s schedule until the stop time, then heals everything.
    pub(crate) fn run(mut self, scenario: Scenario) -> NemesisLog {
        for _ in 0..MAX_FAULTS {
            if Instant::now() >= self.stop {
                break;
            }
            let more = match scenario {
                Scenario::S0 => self.idle(),
                Scenario::S1 => self.pause_minority(),
                Scenario::S2 => self.kill_minority(),
                Scenario::S3 => self.latency(),
                Scenario::S4 => self.partitions(),
                Scenario::S5 => self.restart_durable(),
                Scenario::S6 => self.delayed_restart(),
                Scenario::S7 => self.majority_down(),
                Scenario::S8 => self.late_replies(),
            };
            if !more {
                break;
            }
        }
        self.heal_all();
        self.log
    }

    /// The restart delay that keeps a node without persistence safe: longer than any key it
    /// held can live (ttl plus drift plus a margin).
    fn safe_restart_delay(&self) -> Duration {
        self.ttl + self.ttl / 100 + Duration::from_millis(250)
    }

    fn n(&self) -> usize {
        self.cluster.len()
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo..=hi))
    }

    /// Sleeps `d` or until the stop time; false once stopped.
    fn wait(&self, d: Duration) -> bool {
        let left = self.stop.saturating_duration_since(Instant::now());
        thread::sleep(d.min(left));
        Instant::now() < self.stop
    }

    fn pick(&mut self, k: usize) -> Vec<usize> {
        let n = self.n();
        let mut nodes = sample(&mut self.rng, n, k.min(n)).into_vec();
        nodes.sort_unstable();
        nodes
    }

    fn fault(&mut self, t_start: Nanos, what: String, client: Option<usize>) {
        self.log.faults += 1;
        self.recorder.push(Record::Fault(Fault {
            t_start,
            t_end: self.recorder.now(),
            what,
            client,
        }));
    }

    fn heal_all(&self) {
        for set in &self.proxies {
            set.heal_all();
        }
        for node in self.cluster.iter() {
            if node.is_paused() {
                let _ = node.resume();
            }
        }
    }

    fn idle(&self) -> bool {
        self.wait(Duration::from_secs(3600))
    }

    fn pause_minority(&mut self) -> bool {
        let gap = self.ms(100, 500);
        if !self.wait(gap) {
            return false;
        }
        let k = self.rng.random_range(1..=2);
        let nodes = self.pick(k);
        let hold = self.ms(100, 1500);
        let t0 = self.recorder.now();
        for &i in &nodes {
            let _ = self.cluster[i].pause();
        }
        self.wait(hold);
        for &i in &nodes {
            let _ = self.cluster[i].resume();
        }
        self.fault(t0, format!("pause {nodes:?} for {hold:?}"), None);
        true
    }

    fn kill_minority(&mut self) -> bool {
        let span = self.stop.saturating_duration_since(Instant::now());
        // One node a fifth of the way in, a second one halfway; never restarted.
        if !self.wait(span / 5) {
            return false;
        }
        let first = self.pick(1)[0];
        let t0 = self.recorder.now();
        let _ = self.cluster[first].kill();
        self.fault(t0, format!("kill [{first}]"), None);
        if !self.wait(span * 3 / 10) {
            return false;
        }
        let second = (first + 1 + self.rng.random_range(0..self.n() - 1)) % self.n();
        let t0 = self.recorder.now();
        let _ = self.cluster[second].kill();
        self.fault(t0, format!("kill [{second}]"), None);
        self.wait(Duration::from_secs(3600))
    }

    fn latency(&mut self) -> bool {
        let gap = self.ms(100, 400);
        if !self.wait(gap) {
            return false;
        }
        let k = self.rng.random_range(1..=2);
        let nodes = self.pick(k);
        let spike = self.rng.random_bool(0.3);
        let (mode, hold) = if spike {
            (
                ProxyMode::delay(Duration::from_millis(1500), Duration::ZERO),
                self.ms(100, 400),
            )
        } else {
            let base = self.ms(0, 10);
            (
                ProxyMode::delay(base, Duration::from_millis(40)),
                self.ms(500, 2000),
            )
        };
        let t0 = self.recorder.now();
        for set in &self.proxies {
            set.set_some(&nodes, mode);
        }
        self.wait(hold);
        for set in &self.proxies {
            set.set_some(&nodes, ProxyMode::Pass);
        }
        self.fault(t0, format!("{mode:?} on {nodes:?} for {hold:?}"), None);
        true
    }

    fn partitions(&mut self) -> bool {
        let gap = self.ms(100, 400);
        if !self.wait(gap) {
            return false;
        }
        let hold = self.ms(300, 2000);
        let t0 = self.recorder.now();
        let mut cuts = Vec::new();
        for c in 0..self.proxies.len() {
            // At most a minority per client: each still reaches some majority.
            let k = self.rng.random_range(0..=(self.n() - 1) / 2);
            let nodes = self.pick(k);
            let mode = match self.rng.random_range(0..3) {
                0 => ProxyMode::Blackhole,
                1 => ProxyMode::Refuse,
                _ => ProxyMode::Reset,
            };
            self.proxies[c].set_some(&nodes, mode);
            cuts.push((c, nodes, mode));
        }
        self.wait(hold);
        for (c, nodes, mode) in &cuts {
            // A healed blackhole either delivers what it held or drops the connection.
            if *mode == ProxyMode::Blackhole && self.rng.random_bool(0.5) {
                for &i in nodes {
                    self.proxies[*c][i].reset_connections();
                }
            }
            self.proxies[*c].set_some(nodes, ProxyMode::Pass);
        }
        let what = cuts
            .iter()
            .filter(|(_, nodes, _)| !nodes.is_empty())
            .map(|(c, nodes, mode)| format!("client {c}: {mode:?} {nodes:?}"))
            .collect::<Vec<_>>()
            .join("; ");
        self.fault(t0, format!("partition for {hold:?}: {what}"), None);
        true
    }

    fn restart_durable(&mut self) -> bool {
        let gap = self.ms(200, 800);
        if !self.wait(gap) {
            return false;
        }
        let k = match self.rng.random_range(0..10) {
            0..5 => 1,
            5..8 => 2,
            _ => 3,
        };
        let nodes = self.pick(k);
        let t0 = self.recorder.now();
        for &i in &nodes {
            let _ = self.cluster[i].kill();
        }
        let down = self.recorder.now();
        let up = self.recorder.now();
        for &i in &nodes {
            let _ = self.cluster[i].start_again();
        }
        if 2 * k > self.n() {
            self.log.majority_down.push((down, up));
            let grace = self.recorder.now() + crate::history::nanos(self.ttl);
            self.log.unhealthy.push((t0, grace));
        }
        self.fault(
            t0,
            format!("kill -9 + immediate restart (AOF always) of {nodes:?}"),
            None,
        );
        true
    }

    fn delayed_restart(&mut self) -> bool {
        let gap = self.ms(200, 800);
        if !self.wait(gap) {
            return false;
        }
        let k = self.rng.random_range(1..=2);
        let nodes = self.pick(k);
        let delay = self.safe_restart_delay() + self.ms(0, 300);
        let t0 = self.recorder.now();
        for &i in &nodes {
            let _ = self.cluster[i].kill();
        }
        // The full delay even past the stop time: restarting early would be U1.
        thread::sleep(delay);
        for &i in &nodes {
            let _ = self.cluster[i].start_again();
        }
        self.fault(
            t0,
            format!("kill -9 {nodes:?}, empty restart after {delay:?}"),
            None,
        );
        true
    }

    fn majority_down(&mut self) -> bool {
        let gap = self.ms(400, 1000);
        if !self.wait(gap) {
            return false;
        }
        let majority = self.n() / 2 + 1;
        let nodes = self.pick(majority);
        let kill = self.rng.random_bool(0.5);
        let hold = self.ms(700, 1500).max(self.safe_restart_delay());
        let t0 = self.recorder.now();
        for &i in &nodes {
            let _ = if kill {
                self.cluster[i].kill()
            } else {
                self.cluster[i].pause()
            };
        }
        let down = self.recorder.now();
        // The full hold even past the stop time: a killed node must stay down that long.
        thread::sleep(hold);
        let up = self.recorder.now();
        for &i in &nodes {
            let _ = if kill {
                self.cluster[i].start_again()
            } else {
                self.cluster[i].resume()
            };
        }
        self.log.majority_down.push((down, up));
        // Resumed nodes run the SETs queued while paused: those ghost keys block for a ttl.
        let grace = self.recorder.now() + crate::history::nanos(self.ttl * 2);
        self.log.unhealthy.push((t0, grace));
        let how = if kill { "kill -9" } else { "pause" };
        self.fault(t0, format!("{how} majority {nodes:?} for {hold:?}"), None);
        true
    }

    fn late_replies(&mut self) -> bool {
        let gap = self.ms(300, 800);
        if !self.wait(gap) {
            return false;
        }
        let c = self.rng.random_range(0..self.proxies.len());
        let hold = self.ms(500, 1500);
        let delay = self.ttl + Duration::from_millis(300);
        self.proxies[c].set_all(ProxyMode::delay_replies(delay, Duration::from_millis(100)));
        // Taken after every proxy switched: a call invoked from here on gets late replies only.
        let t0 = self.recorder.now();
        self.wait(hold);
        let t1 = self.recorder.now();
        self.proxies[c].heal_all();
        self.recorder.push(Record::Fault(Fault {
            t_start: t0,
            t_end: t1,
            what: format!("replies to client {c} delayed by {delay:?}+jitter for {hold:?}"),
            client: Some(c),
        }));
        self.log.faults += 1;
        true
    }
}
