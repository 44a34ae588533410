//! The checker: a pure function from a history to the properties it violates.
//!
//! Window of a granted acquisition: `[t_ok(acquire), min(final deadline, t_invoke(release))]`,
//! where the final deadline is the one the client saw when it invoked the release (so it includes
//! background auto-extensions) or, without a release, the last one recorded.
//! The releasing side records its invoke before sending anything and the acquiring side records
//! its return after its last reply, so scheduler noise only ever shrinks windows: P1 needs no
//! tolerance.
//!
//! - **P1** granted windows of one resource never overlap.
//! - **P2** no overstated validity: `deadline - (ttl - drift)` is the library's `T1`, taken after
//!   the call was invoked and before its first byte left, so it must lie within
//!   `[t_invoke, t_return]` of that acquisition (or extension); an extension succeeds only if it
//!   was invoked before the old deadline.
//! - **P3** fencing tokens are unique per resource and increase in real-time order
//!   (`a` returned before `b` was invoked) and in window order (`a`'s window ended before `b`'s
//!   began).
//! - **P4** the fenced store loses no update: accepted tokens never decrease, no accepted write
//!   overwrites another accepted write made after its read, and the final value counts every
//!   accepted write.
//! - **P5** the plain store loses no update made inside granted windows. A lost update where a
//!   write happened after its holder's deadline is reported apart, as a *stale write*: that is
//!   what an unfenced lock permits (Kleppmann's paused holder), not a library bug.
//! - **P6** no call exceeds its time bound; a resource is granted again within `progress_gap`
//!   whenever a majority is healthy; nothing is granted while a majority is down.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::history::{Acquire, Nanos, Outcome, Record, Write};

/// What the checker is told about the run besides the history.
#[derive(Debug, Clone, Default)]
pub(crate) struct CheckConfig {
    /// Whether every grant must carry a fencing token.
    pub(crate) fenced: bool,
    /// Longest acceptable duration of an acquire (all retries included), extend and release.
    pub(crate) acquire_bound: Nanos,
    pub(crate) extend_bound: Nanos,
    pub(crate) release_bound: Nanos,
    /// Intervals during which a majority is healthy for every client: each resource must be
    /// held at some point in every stretch of `progress_gap` inside them.
    pub(crate) healthy: Vec<(Nanos, Nanos)>,
    pub(crate) progress_gap: Nanos,
    /// Intervals during which a majority is down: no acquisition invoked and returned inside
    /// one may succeed.
    pub(crate) majority_down: Vec<(Nanos, Nanos)>,
}

/// The properties, as named in DESIGN.md §6 and correctness.md §7.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Property {
    /// P1: overlapping granted windows.
    Overlap,
    /// P2: a deadline later than the send time allows.
    Validity,
    /// P3: fencing tokens duplicated, missing or out of order.
    Fencing,
    /// P4: the fenced store lost an update or accepted a stale token.
    FencedStore,
    /// P5: the plain store lost an update made inside granted windows.
    LostUpdate,
    /// P5 (expected without fencing): the plain store lost an update to a holder writing after
    /// its deadline.
    StaleWrite,
    /// P6: a call took longer than its bound, or never returned.
    Hang,
    /// P6: no grant for too long while a majority was healthy.
    Progress,
    /// P6: a grant while a majority was down.
    GrantWithoutMajority,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self {
            Property::Overlap => "P1 overlap",
            Property::Validity => "P2 validity",
            Property::Fencing => "P3 fencing",
            Property::FencedStore => "P4 fenced store",
            Property::LostUpdate => "P5 lost update",
            Property::StaleWrite => "P5 stale write",
            Property::Hang => "P6 hang",
            Property::Progress => "P6 progress",
            Property::GrantWithoutMajority => "P6 grant without majority",
        };
        f.write_str(label)
    }
}

/// Every property checked in safe scenarios (stale writes are counted, not failed: the plain
/// store is unfenced by design).
pub(crate) const SAFE: &[Property] = &[
    Property::Overlap,
    Property::Validity,
    Property::Fencing,
    Property::FencedStore,
    Property::LostUpdate,
    Property::Hang,
    Property::Progress,
    Property::GrantWithoutMajority,
];

/// One violated property, with what shows it.
#[derive(Debug, Clone)]
pub(crate) struct Violation {
    pub(crate) property: Property,
    pub(crate) detail: String,
}

/// Counts over the history, for the run summary.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    pub(crate) attempts: usize,
    pub(crate) grants: usize,
    pub(crate) contended: usize,
    pub(crate) unavailable: usize,
    pub(crate) expired: usize,
    pub(crate) failed: usize,
    pub(crate) extends_ok: usize,
    pub(crate) extends: usize,
    pub(crate) releases: usize,
    pub(crate) plain_writes: usize,
    pub(crate) fenced_accepted: usize,
    pub(crate) fenced_rejected: usize,
    pub(crate) faults: usize,
    pub(crate) max_acquire_ms: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "acquisitions={} of {} attempts (contended={} unavailable={} expired={} failed={}) \
             extends={}/{} releases={} plain_writes={} fenced_writes={} fenced_rejected={} \
             faults={} max_acquire_ms={}",
            self.grants,
            self.attempts,
            self.contended,
            self.unavailable,
            self.expired,
            self.failed,
            self.extends_ok,
            self.extends,
            self.releases,
            self.plain_writes,
            self.fenced_accepted,
            self.fenced_rejected,
            self.faults,
            self.max_acquire_ms
        )
    }
}

/// What the checker found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) violations: Vec<Violation>,
    pub(crate) stats: Stats,
}

impl Report {
    /// The violations of `property`.
    pub(crate) fn of(&self, property: Property) -> Vec<&Violation> {
        self.violations
            .iter()
            .filter(|v| v.property == property)
            .collect()
    }

    /// Whether `property` was violated.
    pub(crate) fn has(&self, property: Property) -> bool {
        !self.of(property).is_empty()
    }

    /// The violations of any of `properties`.
    pub(crate) fn among(&self, properties: &[Property]) -> Vec<&Violation> {
        self.violations
            .iter()
            .filter(|v| properties.contains(&v.property))
            .collect()
    }

    /// Violation counts per property, for messages.
    pub(crate) fn summary(&self) -> String {
        let mut counts: BTreeMap<Property, usize> = BTreeMap::new();
        for v in &self.violations {
            *counts.entry(v.property).or_default() += 1;
        }
        if counts.is_empty() {
            return "none".to_owned();
        }
        counts
            .iter()
            .map(|(p, n)| format!("{p}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A granted acquisition and its window.
#[derive(Debug, Clone)]
struct Window<'a> {
    acq: &'a Acquire,
    start: Nanos,
    end: Nanos,
}

/// Checks `history` against every property. Pure: same history, same report.
pub(crate) fn check(history: &[Record], config: &CheckConfig) -> Report {
    let mut report = Report::default();
    let mut acquires: Vec<&Acquire> = Vec::new();
    // Per acquisition: the latest deadline the client knew of, and its release invoke time.
    let mut last_deadline: HashMap<u64, (Nanos, Nanos)> = HashMap::new();
    let mut release_at: HashMap<u64, (Nanos, Option<Nanos>)> = HashMap::new();
    let mut plain: Vec<&Write> = Vec::new();
    let mut fenced: Vec<&Write> = Vec::new();
    let mut finals = Vec::new();
    let stats = &mut report.stats;
    let violations = &mut report.violations;
    for record in history {
        match record {
            Record::Acquire(a) => {
                stats.attempts += 1;
                stats.max_acquire_ms = stats
                    .max_acquire_ms
                    .max((a.t_return.saturating_sub(a.t_invoke)) / 1_000_000);
                match a.outcome {
                    Outcome::Ok => stats.grants += 1,
                    Outcome::Contended => stats.contended += 1,
                    Outcome::Unavailable => stats.unavailable += 1,
                    Outcome::Expired => stats.expired += 1,
                    Outcome::Failed | Outcome::Hang => stats.failed += 1,
                }
                check_duration(
                    violations,
                    "acquire",
                    a.acq,
                    a.t_invoke,
                    a.t_return,
                    a.outcome,
                    config.acquire_bound,
                );
                if a.outcome == Outcome::Ok {
                    match a.deadline {
                        Some(deadline) => {
                            check_anchor(
                                violations, "acquire", a.acq, deadline, a.lease, a.t_invoke,
                                a.t_return,
                            );
                            last_deadline.insert(a.acq, (a.t_return, deadline));
                        }
                        None => violations.push(Violation {
                            property: Property::Validity,
                            detail: format!("acq {} granted without a deadline", a.acq),
                        }),
                    }
                    if config.fenced && a.token.is_none() {
                        violations.push(Violation {
                            property: Property::Fencing,
                            detail: format!("acq {} granted without a fencing token", a.acq),
                        });
                    }
                    acquires.push(a);
                }
            }
            Record::Extend(e) => {
                stats.extends += 1;
                check_duration(
                    violations,
                    "extend",
                    e.acq,
                    e.t_invoke,
                    e.t_return,
                    e.outcome,
                    config.extend_bound,
                );
                if e.outcome == Outcome::Ok {
                    stats.extends_ok += 1;
                    check_anchor(
                        violations,
                        "extend",
                        e.acq,
                        e.deadline_after,
                        e.lease,
                        e.t_invoke,
                        e.t_return,
                    );
                    if e.t_invoke >= e.old_deadline {
                        violations.push(Violation {
                            property: Property::Validity,
                            detail: format!(
                                "acq {}: extension invoked at {} after the deadline {} succeeded (resurrection)",
                                e.acq, e.t_invoke, e.old_deadline
                            ),
                        });
                    }
                }
                let entry = last_deadline.entry(e.acq).or_insert((0, e.deadline_after));
                if e.t_return >= entry.0 {
                    *entry = (e.t_return, e.deadline_after);
                }
            }
            Record::Release(r) => {
                stats.releases += 1;
                check_duration(
                    violations,
                    "release",
                    r.acq,
                    r.t_invoke,
                    r.t_return,
                    r.outcome,
                    config.release_bound,
                );
                if let Some(deadline) = r.deadline {
                    // Background extensions leave no record, but any deadline is some
                    // `T1' + lease` with `T1'` in the past.
                    if deadline > r.t_invoke.saturating_add(r.lease) {
                        violations.push(Violation {
                            property: Property::Validity,
                            detail: format!(
                                "acq {}: deadline {deadline} at release exceeds the release \
                                 invoke {} plus the lease {}",
                                r.acq, r.t_invoke, r.lease
                            ),
                        });
                    }
                }
                release_at.insert(r.acq, (r.t_invoke, r.deadline));
            }
            Record::PlainWrite(w) => {
                stats.plain_writes += 1;
                plain.push(w);
            }
            Record::FencedWrite(w) => {
                if w.accepted {
                    stats.fenced_accepted += 1;
                } else {
                    stats.fenced_rejected += 1;
                }
                fenced.push(w);
            }
            Record::Final(f) => finals.push(f),
            Record::Fault(_) => stats.faults += 1,
        }
    }

    let windows: Vec<Window<'_>> = acquires
        .iter()
        .filter_map(|a| {
            let known = last_deadline.get(&a.acq)?.1;
            let end = match release_at.get(&a.acq) {
                // The deadline seen at release covers background extensions too.
                Some((t_invoke, deadline)) => deadline.unwrap_or(known).min(*t_invoke),
                None => known,
            };
            Some(Window {
                acq: a,
                start: a.t_return,
                end,
            })
        })
        .collect();
    let mut by_resource: BTreeMap<&str, Vec<Window<'_>>> = BTreeMap::new();
    for w in &windows {
        by_resource
            .entry(&w.acq.resource)
            .or_default()
            .push(w.clone());
    }
    for windows in by_resource.values_mut() {
        windows.sort_by_key(|w| (w.start, w.acq.acq));
        check_overlap(violations, windows);
        check_tokens(violations, windows);
    }
    let window_of: HashMap<u64, (Nanos, Nanos)> = windows
        .iter()
        .map(|w| (w.acq.acq, (w.start, w.end)))
        .collect();
    check_plain(violations, &plain, &window_of);
    check_fenced(violations, &fenced);
    for f in finals.iter().filter(|f| f.fenced) {
        let accepted = fenced
            .iter()
            .filter(|w| w.accepted && w.resource == f.resource)
            .count() as u64;
        if f.value != accepted {
            violations.push(Violation {
                property: Property::FencedStore,
                detail: format!(
                    "fenced counter {} ends at {} after {} accepted increments",
                    f.resource, f.value, accepted
                ),
            });
        }
    }
    check_progress(violations, &by_resource, &acquires, config);
    report
}

fn check_duration(
    violations: &mut Vec<Violation>,
    op: &str,
    acq: u64,
    t_invoke: Nanos,
    t_return: Nanos,
    outcome: Outcome,
    bound: Nanos,
) {
    let took = t_return.saturating_sub(t_invoke);
    if outcome == Outcome::Hang || (bound > 0 && took > bound) {
        violations.push(Violation {
            property: Property::Hang,
            detail: format!(
                "{op} of acq {acq} took {} ms ({outcome:?}), bound {} ms",
                took / 1_000_000,
                bound / 1_000_000
            ),
        });
    }
}

/// P2: the `T1` implied by a deadline lies within the call.
fn check_anchor(
    violations: &mut Vec<Violation>,
    op: &str,
    acq: u64,
    deadline: Nanos,
    lease: Nanos,
    t_invoke: Nanos,
    t_return: Nanos,
) {
    let t1 = deadline.checked_sub(lease);
    if t1.is_none_or(|t1| t1 < t_invoke || t1 > t_return) {
        violations.push(Violation {
            property: Property::Validity,
            detail: format!(
                "{op} of acq {acq}: deadline {deadline} implies T1 = deadline - lease ({lease}) \
                 outside the call [{t_invoke}, {t_return}]"
            ),
        });
    }
}

/// P1 for one resource's windows, sorted by start.
fn check_overlap(violations: &mut Vec<Violation>, windows: &[Window<'_>]) {
    let mut latest: Option<&Window<'_>> = None;
    for w in windows {
        if let Some(prev) = latest
            && w.start < prev.end
        {
            violations.push(Violation {
                property: Property::Overlap,
                detail: format!(
                    "{}: acq {} (client {}) granted at {} while acq {} (client {}) held it \
                     over [{}, {}]",
                    w.acq.resource,
                    w.acq.acq,
                    w.acq.client,
                    w.start,
                    prev.acq.acq,
                    prev.acq.client,
                    prev.start,
                    prev.end
                ),
            });
        }
        if latest.is_none_or(|prev| w.end > prev.end) {
            latest = Some(w);
        }
    }
}

/// P3 for one resource's windows: unique tokens, real-time order, window order.
fn check_tokens(violations: &mut Vec<Violation>, windows: &[Window<'_>]) {
    let tokened: Vec<(&Window<'_>, u64)> = windows
        .iter()
        .filter_map(|w| w.acq.token.map(|t| (w, t)))
        .collect();
    let mut seen: HashMap<u64, u64> = HashMap::new();
    for (w, token) in &tokened {
        if let Some(other) = seen.insert(*token, w.acq.acq) {
            violations.push(Violation {
                property: Property::Fencing,
                detail: format!(
                    "{}: token {token} issued to acq {other} and acq {}",
                    w.acq.resource, w.acq.acq
                ),
            });
        }
    }
    // `a` before `b` (by `done(a) < begin(b)`) must have a smaller token: sweep `b` by `begin`
    // while folding in every `a` done before it, keeping the largest token seen.
    let mut order =
        |done: &dyn Fn(&Window<'_>) -> Nanos, begin: &dyn Fn(&Window<'_>) -> Nanos, what: &str| {
            let mut by_done: Vec<&(&Window<'_>, u64)> = tokened.iter().collect();
            by_done.sort_by_key(|(w, _)| done(w));
            let mut by_begin: Vec<&(&Window<'_>, u64)> = tokened.iter().collect();
            by_begin.sort_by_key(|(w, _)| begin(w));
            let mut i = 0;
            let mut max: Option<(u64, &Window<'_>)> = None;
            for (b, token) in by_begin {
                while i < by_done.len() && done(by_done[i].0) < begin(b) {
                    let (a, t) = by_done[i];
                    if max.is_none_or(|(m, _)| *t > m) {
                        max = Some((*t, a));
                    }
                    i += 1;
                }
                if let Some((m, a)) = max
                    && m >= *token
                {
                    violations.push(Violation {
                        property: Property::Fencing,
                        detail: format!(
                            "{}: acq {} (token {m}) {what} acq {} (token {token})",
                            b.acq.resource, a.acq.acq, b.acq.acq
                        ),
                    });
                }
            }
        };
    order(
        &|w| w.acq.t_return,
        &|w| w.acq.t_invoke,
        "returned before the invoke of",
    );
    order(
        &|w| w.end,
        &|w| w.start,
        "ended its window before the window of",
    );
}

/// Lost updates: a write whose read came before another write that landed before it.
/// Returns the pairs (overwriting write, lost write); `writes` must be applied writes only.
fn lost_updates<'a>(writes: &[&'a Write]) -> Vec<(&'a Write, &'a Write)> {
    let mut by_resource: BTreeMap<&str, Vec<&'a Write>> = BTreeMap::new();
    for w in writes {
        by_resource.entry(&w.resource).or_default().push(w);
    }
    let mut lost = Vec::new();
    for writes in by_resource.values_mut() {
        writes.sort_by_key(|w| w.t_write);
        for pair in writes.windows(2) {
            let (before, w) = (pair[0], pair[1]);
            // `before` is the latest write ahead of `w`; `w` read before it landed.
            if before.t_write > w.t_read {
                lost.push((w, before));
            }
        }
    }
    lost
}

fn check_plain(
    violations: &mut Vec<Violation>,
    plain: &[&Write],
    window_of: &HashMap<u64, (Nanos, Nanos)>,
) {
    let inside = |w: &Write| {
        window_of
            .get(&w.acq)
            .is_some_and(|(start, end)| w.t_read >= *start && w.t_write <= *end)
    };
    for (w, lost) in lost_updates(plain) {
        let stale = !inside(w) || !inside(lost);
        violations.push(Violation {
            property: if stale {
                Property::StaleWrite
            } else {
                Property::LostUpdate
            },
            detail: format!(
                "plain {}: acq {} (client {}) read {} at {} and wrote {} at {}, overwriting acq {} \
                 (client {}) which wrote {} at {}{}",
                w.resource,
                w.acq,
                w.client,
                w.read,
                w.t_read,
                w.wrote,
                w.t_write,
                lost.acq,
                lost.client,
                lost.wrote,
                lost.t_write,
                if stale {
                    " (a write outside its window)"
                } else {
                    ""
                }
            ),
        });
    }
}

fn check_fenced(violations: &mut Vec<Violation>, fenced: &[&Write]) {
    let accepted: Vec<&Write> = fenced.iter().copied().filter(|w| w.accepted).collect();
    for (w, lost) in lost_updates(&accepted) {
        violations.push(Violation {
            property: Property::FencedStore,
            detail: format!(
                "fenced {}: acq {} (token {:?}) overwrote the write of acq {} (token {:?}) made \
                 after its read",
                w.resource, w.acq, w.token, lost.acq, lost.token
            ),
        });
    }
    let mut by_resource: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
    for w in accepted {
        by_resource.entry(&w.resource).or_default().push(w);
    }
    for writes in by_resource.values_mut() {
        writes.sort_by_key(|w| w.t_write);
        for pair in writes.windows(2) {
            if pair[1].token < pair[0].token {
                violations.push(Violation {
                    property: Property::FencedStore,
                    detail: format!(
                        "fenced {}: token {:?} accepted after token {:?}",
                        pair[1].resource, pair[1].token, pair[0].token
                    ),
                });
            }
        }
    }
}

/// P6: progress in healthy intervals, no grant while the majority is down.
fn check_progress(
    violations: &mut Vec<Violation>,
    by_resource: &BTreeMap<&str, Vec<Window<'_>>>,
    acquires: &[&Acquire],
    config: &CheckConfig,
) {
    for a in acquires {
        if let Some((d0, d1)) = config
            .majority_down
            .iter()
            .find(|(d0, d1)| a.t_invoke >= *d0 && a.t_return <= *d1)
        {
            violations.push(Violation {
                property: Property::GrantWithoutMajority,
                detail: format!(
                    "acq {} on {} granted at {} while a majority was down over [{d0}, {d1}]",
                    a.acq, a.resource, a.t_return
                ),
            });
        }
    }
    if config.progress_gap == 0 {
        return;
    }
    let mut resources: Vec<&str> = acquires.iter().map(|a| a.resource.as_str()).collect();
    resources.extend(by_resource.keys());
    resources.sort_unstable();
    resources.dedup();
    let empty = Vec::new();
    for resource in resources {
        let windows = by_resource.get(resource).unwrap_or(&empty);
        for &(h0, h1) in &config.healthy {
            // Walk the union of windows across [h0, h1], measuring uncovered stretches.
            let mut covered_to = h0;
            let mut longest = (0, h0);
            for w in windows.iter().filter(|w| w.end > h0 && w.start < h1) {
                if w.start > covered_to && w.start - covered_to > longest.0 {
                    longest = (w.start - covered_to, covered_to);
                }
                covered_to = covered_to.max(w.end);
            }
            if h1 > covered_to && h1 - covered_to > longest.0 {
                longest = (h1 - covered_to, covered_to);
            }
            if longest.0 > config.progress_gap {
                violations.push(Violation {
                    property: Property::Progress,
                    detail: format!(
                        "{resource}: no grant for {} ms from {} while a majority was healthy \
                         (allowed {} ms)",
                        longest.0 / 1_000_000,
                        longest.1,
                        config.progress_gap / 1_000_000
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Hand-made histories, good and bad: a checker that cannot see a violation proves nothing.

    use super::*;
    use crate::history::{Extend, Final, Release};

    const MS: Nanos = 1_000_000;
    const LEASE: Nanos = 490 * MS;

    fn grant(
        acq: u64,
        client: usize,
        t_invoke: Nanos,
        t_return: Nanos,
        token: Option<u64>,
    ) -> Record {
        Record::Acquire(Acquire {
            acq,
            client,
            resource: "r".to_owned(),
            t_invoke,
            t_return,
            outcome: Outcome::Ok,
            lease: LEASE,
            // T1 a millisecond after the invoke.
            deadline: Some(t_invoke + MS + LEASE),
            token,
            error: None,
        })
    }

    fn release(acq: u64, t_invoke: Nanos) -> Record {
        Record::Release(Release {
            acq,
            client: 0,
            resource: "r".to_owned(),
            t_invoke,
            t_return: t_invoke + 2 * MS,
            outcome: Outcome::Ok,
            deadline: None,
            lease: LEASE,
            error: None,
        })
    }

    fn write(
        acq: u64,
        token: Option<u64>,
        t_read: Nanos,
        read: u64,
        t_write: Nanos,
        accepted: bool,
    ) -> Write {
        Write {
            acq,
            client: acq as usize,
            resource: "r".to_owned(),
            token,
            t_read,
            read,
            t_write,
            wrote: read + 1,
            accepted,
        }
    }

    fn config() -> CheckConfig {
        CheckConfig {
            fenced: true,
            acquire_bound: 100 * MS,
            extend_bound: 100 * MS,
            release_bound: 100 * MS,
            ..CheckConfig::default()
        }
    }

    /// Two holders one after the other, each writing both stores inside its window.
    fn good() -> Vec<Record> {
        vec![
            grant(1, 1, 0, 5 * MS, Some(1)),
            Record::PlainWrite(write(1, None, 10 * MS, 0, 20 * MS, true)),
            Record::FencedWrite(write(1, Some(1), 21 * MS, 0, 30 * MS, true)),
            release(1, 40 * MS),
            grant(2, 2, 30 * MS, 45 * MS, Some(2)),
            Record::PlainWrite(write(2, None, 50 * MS, 1, 60 * MS, true)),
            Record::FencedWrite(write(2, Some(2), 61 * MS, 1, 70 * MS, true)),
            release(2, 80 * MS),
            Record::Final(Final {
                resource: "r".to_owned(),
                fenced: true,
                value: 2,
            }),
        ]
    }

    #[test]
    fn a_good_history_passes() {
        let report = check(&good(), &config());
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        assert_eq!(report.stats.grants, 2);
        assert_eq!(report.summary(), "none");
    }

    #[test]
    fn overlapping_windows_are_p1() {
        let mut history = good();
        // Acq 2 granted at 35 ms, before acq 1 released at 40 ms.
        history[4] = grant(2, 2, 30 * MS, 35 * MS, Some(2));
        let report = check(&history, &config());
        assert!(report.has(Property::Overlap), "{report:?}");
        assert!(report.of(Property::Overlap)[0].detail.contains("acq 2"));
    }

    #[test]
    fn a_window_ends_at_its_deadline_without_release() {
        // Acq 1 is never released: its window ends at its deadline (~491 ms).
        let history = vec![
            grant(1, 1, 0, 5 * MS, None),
            grant(2, 2, 400 * MS, 420 * MS, None),
        ];
        let report = check(&history, &CheckConfig::default());
        assert!(report.has(Property::Overlap));
        let history = vec![
            grant(1, 1, 0, 5 * MS, None),
            grant(2, 2, 480 * MS, 500 * MS, None),
        ];
        assert!(
            check(&history, &CheckConfig::default())
                .violations
                .is_empty()
        );
    }

    #[test]
    fn an_extension_moves_the_window_end() {
        let extend = Record::Extend(Extend {
            acq: 1,
            client: 1,
            resource: "r".to_owned(),
            t_invoke: 300 * MS,
            t_return: 310 * MS,
            outcome: Outcome::Ok,
            lease: LEASE,
            old_deadline: MS + LEASE,
            deadline_after: 301 * MS + LEASE,
            error: None,
        });
        let history = vec![
            grant(1, 1, 0, 5 * MS, None),
            extend,
            grant(2, 2, 480 * MS, 500 * MS, None),
        ];
        let report = check(&history, &CheckConfig::default());
        assert!(report.has(Property::Overlap), "{report:?}");
    }

    #[test]
    fn background_extensions_count_through_the_deadline_seen_at_release() {
        let auto_extended = |deadline: Nanos| {
            Record::Release(Release {
                acq: 1,
                client: 1,
                resource: "r".to_owned(),
                t_invoke: 700 * MS,
                t_return: 705 * MS,
                outcome: Outcome::Ok,
                deadline: Some(deadline),
                lease: LEASE,
                error: None,
            })
        };
        // Held until the release at 700 ms thanks to the watchdog: a grant at 650 ms overlaps.
        let history = vec![
            grant(1, 1, 0, 5 * MS, None),
            grant(2, 2, 640 * MS, 650 * MS, None),
            auto_extended(900 * MS),
        ];
        let report = check(&history, &CheckConfig::default());
        assert!(report.has(Property::Overlap), "{report:?}");
        assert!(!report.has(Property::Validity), "{report:?}");
        // A deadline further than a lease past the release invoke was never anchored before it.
        let history = vec![grant(1, 1, 0, 5 * MS, None), auto_extended(1200 * MS)];
        let report = check(&history, &CheckConfig::default());
        assert!(report.has(Property::Validity), "{report:?}");
    }

    #[test]
    fn overstated_deadlines_and_resurrections_are_p2() {
        let mut history = good();
        if let Record::Acquire(a) = &mut history[0] {
            // A deadline implying T1 after the call returned.
            a.deadline = Some(a.t_return + MS + LEASE);
        }
        assert!(check(&history, &config()).has(Property::Validity));

        let late = Record::Extend(Extend {
            acq: 1,
            client: 1,
            resource: "r".to_owned(),
            t_invoke: 600 * MS,
            t_return: 605 * MS,
            outcome: Outcome::Ok,
            lease: LEASE,
            old_deadline: MS + LEASE,
            deadline_after: 601 * MS + LEASE,
            error: None,
        });
        let history = vec![grant(1, 1, 0, 5 * MS, None), late];
        let report = check(&history, &CheckConfig::default());
        assert!(
            report.of(Property::Validity)[0]
                .detail
                .contains("resurrection")
        );
    }

    #[test]
    fn duplicate_missing_and_backward_tokens_are_p3() {
        let mut history = good();
        history[4] = grant(2, 2, 30 * MS, 45 * MS, Some(1));
        let report = check(&history, &config());
        assert!(
            report
                .of(Property::Fencing)
                .iter()
                .any(|v| v.detail.contains("issued to"))
        );

        // Acq 2 invoked after acq 1 returned, with a smaller token.
        let history = vec![
            grant(1, 1, 0, 5 * MS, Some(6)),
            release(1, 10 * MS),
            grant(2, 2, 20 * MS, 25 * MS, Some(1)),
        ];
        let report = check(&history, &config());
        assert!(
            report
                .of(Property::Fencing)
                .iter()
                .any(|v| v.detail.contains("returned before"))
        );

        let history = vec![grant(1, 1, 0, 5 * MS, None)];
        assert!(check(&history, &config()).has(Property::Fencing));
    }

    #[test]
    fn window_order_applies_to_concurrent_attempts() {
        // Acq 2 was invoked before acq 1 returned, but its window began after acq 1's ended.
        let history = vec![
            grant(1, 1, 0, 5 * MS, Some(6)),
            release(1, 10 * MS),
            grant(2, 2, MS, 30 * MS, Some(3)),
        ];
        let report = check(&history, &config());
        let fencing = report.of(Property::Fencing);
        assert_eq!(fencing.len(), 1, "{fencing:?}");
        assert!(fencing[0].detail.contains("ended its window"));
    }

    #[test]
    fn plain_lost_updates_inside_windows_are_p5_and_stale_ones_are_told_apart() {
        // Acq 1 reads at 10 ms, acq 2 writes at 15 ms, acq 1 writes at 20 ms: 2's update is lost.
        let history = vec![
            grant(1, 1, 0, 5 * MS, None),
            grant(2, 2, 0, 6 * MS, None),
            Record::PlainWrite(write(2, None, 8 * MS, 0, 15 * MS, true)),
            Record::PlainWrite(write(1, None, 10 * MS, 0, 20 * MS, true)),
        ];
        let report = check(&history, &CheckConfig::default());
        assert!(report.has(Property::LostUpdate));
        assert!(report.has(Property::Overlap));

        // The same interleaving, but acq 1 wrote after its deadline: a stale write, no overlap.
        let history = vec![
            grant(1, 1, 0, 5 * MS, None),
            Record::PlainWrite(write(1, None, 10 * MS, 0, 900 * MS, true)),
            grant(2, 2, 600 * MS, 610 * MS, None),
            Record::PlainWrite(write(2, None, 620 * MS, 0, 630 * MS, true)),
            release(2, 700 * MS),
        ];
        let report = check(&history, &CheckConfig::default());
        assert!(report.has(Property::StaleWrite), "{report:?}");
        assert!(!report.has(Property::LostUpdate));
        assert!(!report.has(Property::Overlap));
    }

    #[test]
    fn fenced_store_anomalies_are_p4() {
        let mut history = good();
        // A stale token accepted after a newer one.
        history[6] = Record::FencedWrite(write(2, Some(0), 61 * MS, 1, 70 * MS, true));
        assert!(check(&history, &config()).has(Property::FencedStore));

        // A final value that misses an accepted increment.
        let mut history = good();
        history[8] = Record::Final(Final {
            resource: "r".to_owned(),
            fenced: true,
            value: 1,
        });
        assert!(check(&history, &config()).has(Property::FencedStore));

        // Rejected writes are fine.
        let mut history = good();
        history.push(Record::FencedWrite(write(
            1,
            Some(1),
            85 * MS,
            2,
            86 * MS,
            false,
        )));
        let report = check(&history, &config());
        assert!(report.violations.is_empty(), "{report:?}");
        assert_eq!(report.stats.fenced_rejected, 1);
    }

    #[test]
    fn slow_calls_and_hangs_are_p6() {
        let mut history = good();
        if let Record::Release(r) = &mut history[3] {
            r.t_return = r.t_invoke + 500 * MS;
        }
        assert!(check(&history, &config()).has(Property::Hang));
        let mut history = good();
        if let Record::Acquire(a) = &mut history[0] {
            a.outcome = Outcome::Hang;
        }
        assert!(check(&history, &config()).has(Property::Hang));
    }

    #[test]
    fn progress_and_majority_down_are_p6() {
        let mut cfg = config();
        cfg.healthy = vec![(0, 100 * MS)];
        cfg.progress_gap = 30 * MS;
        // Held over [5, 40] and [45, 80]: gaps of 5, 5 and 20 ms.
        assert!(check(&good(), &cfg).violations.is_empty());
        cfg.healthy = vec![(0, 200 * MS)];
        let report = check(&good(), &cfg);
        assert!(report.has(Property::Progress), "{report:?}");

        let mut cfg = config();
        cfg.majority_down = vec![(25 * MS, 50 * MS)];
        let report = check(&good(), &cfg);
        assert!(report.has(Property::GrantWithoutMajority), "{report:?}");
        assert!(report.summary().contains("P6 grant without majority: 1"));
    }
}
