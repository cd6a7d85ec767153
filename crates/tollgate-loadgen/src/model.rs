//! The traffic model: a deterministic, seeded state machine with no socket and no clock.
//!
//! Time is a [`Duration`] since the start of the run, passed in by the caller. The calling
//! order is quinn's: ask [`Model::poll_timeout`] when the next action is due, wait until
//! then (or not, in a simulation), then call [`Model::poll_action`] with the current time
//! until it returns `None`. [`Model::drain_active`] ends the run with a stop for every call
//! still up.
//!
//! **Invariant:** the actions and their order depend only on the configuration (seed
//! included), never on when the caller polls: every random draw happens at an action's
//! scheduled time, in scheduled order. A caller that polls late gets the same actions, late.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::args::{ACTIVE_CALLS_MAX, Mode};

/// Fraction of registration refreshes that unregister instead (and come back later).
pub const CHURN_FRACTION: f64 = 0.02;
/// Interval between two `subscribers` announcements.
pub const SUBSCRIBERS_INTERVAL: Duration = Duration::from_secs(5);
/// Initial registrations are spread evenly over this long (or half the expiry, if shorter).
pub const REGISTRATION_RAMP: Duration = Duration::from_secs(1);

/// What the model needs, already validated (see `LoadgenArgs`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub mode: Mode,
    pub seed: u64,
    /// Mean arrivals per second (erlang).
    pub cps: f64,
    /// Mean holding time (erlang).
    pub hold: Duration,
    /// Probability that a call is an emergency call, 0..=1.
    pub emergency_fraction: f64,
    /// Calls kept open in flood mode.
    pub flood_window: u32,
    /// Refresh interval of open calls (erlang), if any.
    pub call_refresh: Option<Duration>,
    pub registrations: u32,
    pub contacts_per_aor: u32,
    pub reg_expires_s: u32,
    pub subscribers: Option<u64>,
}

/// One event to send, in the model's terms (numbers, not names: see `ids::Names`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CallStart {
        call: u64,
        emergency: bool,
    },
    CallStop {
        call: u64,
    },
    CallRefresh {
        call: u64,
    },
    Register {
        aor: u32,
        contact: u32,
        expires_s: u32,
    },
    Subscribers {
        count: u64,
    },
}

/// A call's next timer: a refresh, or its stop when `due == stop_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct CallTimer {
    due_ns: u64,
    call: u64,
    stop_at_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Subscribers,
    /// (Re-)register every contact of the AoR.
    Register(u32),
    /// Unregister every contact of the AoR (expires 0).
    Unregister(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    due_ns: u64,
    kind: TimerKind,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    rng: StdRng,
    /// Number of the next call to start (also: calls started so far).
    call_next: u64,
    /// Erlang: when the next call arrives.
    arrival_ns: u64,
    /// Erlang: timers of the calls that are up, earliest first. Bounded by
    /// [`ACTIVE_CALLS_MAX`].
    calls: BinaryHeap<Reverse<CallTimer>>,
    /// Flood: the oldest call still open (open calls are `flood_open_first..call_next`).
    flood_open_first: u64,
    /// Registrations and subscriber announcements, earliest first. At most one timer per AoR
    /// plus one for subscribers.
    timers: BinaryHeap<Reverse<Timer>>,
    /// Erlang/flood: the next AoR whose first registration is still to come.
    aor_initial_next: u32,
    /// Actions already due, from a timer that expands into several (an AoR's contacts).
    /// At most `contacts_per_aor` long.
    pending: VecDeque<Action>,
    /// Erlang arrivals skipped because [`ACTIVE_CALLS_MAX`] calls were up.
    calls_skipped: u64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Model {
    pub fn new(config: ModelConfig) -> Self {
        assert!(config.cps > 0.0 && config.hold > Duration::ZERO);
        assert!((0.0..=1.0).contains(&config.emergency_fraction));
        assert!(config.flood_window > 0 && config.contacts_per_aor > 0);
        assert!(config.reg_expires_s >= 2);
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut timers = BinaryHeap::new();
        if config.subscribers.is_some() {
            timers.push(Reverse(Timer {
                due_ns: 0,
                kind: TimerKind::Subscribers,
            }));
        }
        let arrival_ns = match config.mode {
            Mode::Erlang => exponential_ns(&mut rng, 1.0 / config.cps),
            Mode::Flood => 0,
        };
        Model {
            config,
            rng,
            call_next: 0,
            arrival_ns,
            calls: BinaryHeap::new(),
            flood_open_first: 0,
            timers,
            aor_initial_next: 0,
            pending: VecDeque::new(),
            calls_skipped: 0,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Calls started so far.
    pub fn calls_started(&self) -> u64 {
        self.call_next
    }

    /// Calls up as the model sees them (started, stop not yet emitted).
    pub fn calls_active(&self) -> u64 {
        match self.config.mode {
            Mode::Erlang => self.calls.len() as u64,
            Mode::Flood => self.call_next - self.flood_open_first,
        }
    }

    /// Erlang arrivals skipped because [`ACTIVE_CALLS_MAX`] calls were up.
    pub fn calls_skipped(&self) -> u64 {
        self.calls_skipped
    }

    /// When the next action is due (time since the start of the run). In flood mode calls
    /// are always due, so this is zero.
    pub fn poll_timeout(&self) -> Duration {
        match self.config.mode {
            Mode::Erlang => Duration::from_nanos(self.next_due_ns().0),
            Mode::Flood => Duration::ZERO,
        }
    }

    /// The next action due at or before `now`, if any.
    pub fn poll_action(&mut self, now: Duration) -> Option<Action> {
        if let Some(action) = self.pending.pop_front() {
            return Some(action);
        }
        loop {
            let (due_ns, mut source) = self.next_due_ns();
            if due_ns > ns(now) {
                // Flood calls are always due; timers go first when they are due too.
                if self.config.mode != Mode::Flood {
                    return None;
                }
                source = Source::Flood;
            }
            return Some(match source {
                Source::Pending => unreachable!("pending is empty"),
                Source::Timer => {
                    let Reverse(timer) = self.timers.pop().expect("a timer is due");
                    self.fire_timer(timer)
                }
                Source::InitialRegistration => {
                    let aor = self.aor_initial_next;
                    self.aor_initial_next += 1;
                    self.fire_timer(Timer {
                        due_ns,
                        kind: TimerKind::Register(aor),
                    })
                }
                Source::Call => self.fire_call(),
                Source::Arrival => match self.arrive() {
                    Some(action) => action,
                    // Skipped at the limit: look again (the next arrival may be due too).
                    None => continue,
                },
                Source::Flood => self.flood_step(),
            });
        }
    }

    /// Ends the model: a `CallStop` for every call still up, in call order.
    pub fn drain_active(&mut self) -> Vec<Action> {
        let mut calls: Vec<u64> = match self.config.mode {
            Mode::Erlang => self.calls.drain().map(|Reverse(t)| t.call).collect(),
            Mode::Flood => (self.flood_open_first..self.call_next).collect(),
        };
        self.flood_open_first = self.call_next;
        calls.sort_unstable();
        // A flood stop already queued in `pending` is for a call no longer in the range.
        let mut stops: Vec<Action> = self
            .pending
            .drain(..)
            .filter(|a| matches!(a, Action::CallStop { .. }))
            .collect();
        stops.extend(calls.into_iter().map(|call| Action::CallStop { call }));
        stops
    }

    fn next_due_ns(&self) -> (u64, Source) {
        if !self.pending.is_empty() {
            return (0, Source::Pending);
        }
        let mut best = (u64::MAX, Source::Arrival);
        let mut consider = |due: Option<u64>, source| {
            if let Some(due) = due
                && due < best.0
            {
                best = (due, source);
            }
        };
        consider(self.timers.peek().map(|Reverse(t)| t.due_ns), Source::Timer);
        if self.aor_initial_next < self.config.registrations {
            consider(
                Some(self.initial_registration_ns(self.aor_initial_next)),
                Source::InitialRegistration,
            );
        }
        if self.config.mode == Mode::Erlang {
            consider(self.calls.peek().map(|Reverse(t)| t.due_ns), Source::Call);
            consider(Some(self.arrival_ns), Source::Arrival);
        }
        best
    }

    fn initial_registration_ns(&self, aor: u32) -> u64 {
        let half_expiry = Duration::from_secs(u64::from(self.config.reg_expires_s)) / 2;
        let ramp_ns = ns(REGISTRATION_RAMP.min(half_expiry));
        (u128::from(ramp_ns) * u128::from(aor) / u128::from(self.config.registrations)) as u64
    }

    fn fire_timer(&mut self, timer: Timer) -> Action {
        let expires_s = self.config.reg_expires_s;
        let expiry_ns = u64::from(expires_s) * 1_000_000_000;
        match timer.kind {
            TimerKind::Subscribers => {
                let due_ns = timer.due_ns + ns(SUBSCRIBERS_INTERVAL);
                self.timers.push(Reverse(Timer {
                    due_ns,
                    kind: TimerKind::Subscribers,
                }));
                Action::Subscribers {
                    count: self.config.subscribers.expect("configured"),
                }
            }
            TimerKind::Register(aor) => {
                // Refresh at 45–55% of the expiry; a few AoRs unregister instead.
                let refresh_ns = (expiry_ns as f64 * self.rng.gen_range(0.45..0.55)) as u64;
                let kind = if self.rng.r#gen::<f64>() < CHURN_FRACTION {
                    TimerKind::Unregister(aor)
                } else {
                    TimerKind::Register(aor)
                };
                self.timers.push(Reverse(Timer {
                    due_ns: timer.due_ns + refresh_ns,
                    kind,
                }));
                self.expand_contacts(aor, expires_s)
            }
            TimerKind::Unregister(aor) => {
                // Offline for 25–75% of the expiry, then register again.
                let offline_ns = (expiry_ns as f64 * self.rng.gen_range(0.25..0.75)) as u64;
                let kind = TimerKind::Register(aor);
                self.timers.push(Reverse(Timer {
                    due_ns: timer.due_ns + offline_ns,
                    kind,
                }));
                self.expand_contacts(aor, 0)
            }
        }
    }

    /// Returns the `reg` of the AoR's first contact and queues the others.
    fn expand_contacts(&mut self, aor: u32, expires_s: u32) -> Action {
        debug_assert!(self.pending.is_empty());
        for contact in 1..self.config.contacts_per_aor {
            self.pending.push_back(Action::Register {
                aor,
                contact,
                expires_s,
            });
        }
        Action::Register {
            aor,
            contact: 0,
            expires_s,
        }
    }

    fn arrive(&mut self) -> Option<Action> {
        let due_ns = self.arrival_ns;
        self.arrival_ns =
            due_ns.saturating_add(exponential_ns(&mut self.rng, 1.0 / self.config.cps));
        let emergency = self.rng.r#gen::<f64>() < self.config.emergency_fraction;
        let hold_ns = exponential_ns(&mut self.rng, self.config.hold.as_secs_f64());
        if self.calls.len() >= ACTIVE_CALLS_MAX {
            self.calls_skipped += 1;
            return None;
        }
        let call = self.call_next;
        self.call_next += 1;
        let stop_at_ns = due_ns.saturating_add(hold_ns.max(1));
        let next_ns = match self.config.call_refresh {
            Some(interval) => stop_at_ns.min(due_ns.saturating_add(ns(interval))),
            None => stop_at_ns,
        };
        self.calls.push(Reverse(CallTimer {
            due_ns: next_ns,
            call,
            stop_at_ns,
        }));
        Some(Action::CallStart { call, emergency })
    }

    fn fire_call(&mut self) -> Action {
        let Reverse(timer) = self.calls.pop().expect("a call timer is due");
        if timer.due_ns >= timer.stop_at_ns {
            return Action::CallStop { call: timer.call };
        }
        let interval_ns = ns(self
            .config
            .call_refresh
            .expect("refresh timers need an interval"));
        let next_ns = timer
            .stop_at_ns
            .min(timer.due_ns.saturating_add(interval_ns));
        self.calls.push(Reverse(CallTimer {
            due_ns: next_ns,
            ..timer
        }));
        Action::CallRefresh { call: timer.call }
    }

    /// Start a call; once the window is full, each start is followed by the stop of the
    /// oldest open call.
    fn flood_step(&mut self) -> Action {
        let call = self.call_next;
        self.call_next += 1;
        let emergency = self.config.emergency_fraction > 0.0
            && self.rng.r#gen::<f64>() < self.config.emergency_fraction;
        if self.call_next - self.flood_open_first > u64::from(self.config.flood_window) {
            self.pending.push_back(Action::CallStop {
                call: self.flood_open_first,
            });
            self.flood_open_first += 1;
        }
        Action::CallStart { call, emergency }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Pending,
    Timer,
    InitialRegistration,
    Call,
    Arrival,
    Flood,
}

/// An exponentially distributed duration with the given mean, in nanoseconds.
fn exponential_ns(rng: &mut StdRng, mean_s: f64) -> u64 {
    let u: f64 = rng.r#gen(); // [0, 1)
    let seconds = -(1.0 - u).ln() * mean_s;
    (seconds * 1e9).min(u64::MAX as f64 / 2.0) as u64
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn erlang(cps: f64, hold_s: f64) -> ModelConfig {
        ModelConfig {
            mode: Mode::Erlang,
            seed: 1,
            cps,
            hold: Duration::from_secs_f64(hold_s),
            emergency_fraction: 0.0,
            flood_window: 1000,
            call_refresh: None,
            registrations: 0,
            contacts_per_aor: 1,
            reg_expires_s: 3600,
            subscribers: None,
        }
    }

    /// Drives the model with a simulated clock that jumps to each timeout, up to `end`.
    /// Returns each action with the time it was emitted.
    fn simulate(model: &mut Model, end: Duration) -> Vec<(Duration, Action)> {
        let mut out = Vec::new();
        loop {
            let now = model.poll_timeout();
            if now >= end {
                return out;
            }
            while let Some(action) = model.poll_action(now) {
                out.push((now, action));
            }
        }
    }

    #[test]
    fn arrival_rate_and_holding_time_match_the_configured_means() {
        let (cps, hold_s, run_s) = (50.0, 20.0, 2000.0);
        let mut model = Model::new(erlang(cps, hold_s));
        let actions = simulate(&mut model, Duration::from_secs_f64(run_s));
        let mut started = HashMap::new();
        let mut holds = Vec::new();
        for (at, action) in &actions {
            match *action {
                Action::CallStart { call, .. } => {
                    started.insert(call, *at);
                }
                Action::CallStop { call } => holds.push((*at - started[&call]).as_secs_f64()),
                other => panic!("unexpected {other:?}"),
            }
        }
        let rate = started.len() as f64 / run_s;
        assert!((rate / cps - 1.0).abs() < 0.02, "rate {rate}");
        let mean_hold = holds.iter().sum::<f64>() / holds.len() as f64;
        assert!(
            (mean_hold / hold_s - 1.0).abs() < 0.03,
            "mean hold {mean_hold}"
        );
        // Little's law: cps × hold calls up in steady state.
        let active = model.calls_active() as f64;
        assert!(
            (active / (cps * hold_s) - 1.0).abs() < 0.15,
            "active {active}"
        );
        assert_eq!(
            model.calls_active(),
            started.len() as u64 - holds.len() as u64
        );
    }

    #[test]
    fn inter_arrival_times_are_exponential() {
        // For an exponential distribution the standard deviation equals the mean.
        let mut model = Model::new(erlang(1000.0, 1.0));
        let starts: Vec<f64> = simulate(&mut model, Duration::from_secs(50))
            .into_iter()
            .filter(|(_, a)| matches!(a, Action::CallStart { .. }))
            .map(|(at, _)| at.as_secs_f64())
            .collect();
        let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((mean * 1000.0 - 1.0).abs() < 0.03, "mean gap {mean}");
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.05,
            "cv {}",
            var.sqrt() / mean
        );
    }

    #[test]
    fn same_seed_same_actions_whatever_the_polling() {
        let mut config = erlang(200.0, 2.0);
        config.registrations = 50;
        config.reg_expires_s = 4;
        config.subscribers = Some(9);
        config.call_refresh = Some(Duration::from_millis(500));
        config.emergency_fraction = 0.1;
        let exact: Vec<Action> = simulate(&mut Model::new(config.clone()), Duration::from_secs(20))
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        // A caller that polls only every 70 ms gets the same actions in the same order.
        let mut model = Model::new(config.clone());
        let mut coarse = Vec::new();
        let end = Duration::from_secs(20);
        let mut now = Duration::ZERO;
        while now < end + Duration::from_millis(70) {
            while model.poll_timeout() < end
                && let Some(action) = model.poll_action(now)
            {
                coarse.push(action);
            }
            now += Duration::from_millis(70);
        }
        let first_difference = exact.iter().zip(&coarse).position(|(a, b)| a != b);
        assert_eq!(first_difference, None);
        assert_eq!(exact.len(), coarse.len());
        config.seed = 2;
        let other: Vec<Action> = simulate(&mut Model::new(config), Duration::from_secs(20))
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        assert_ne!(exact, other);
    }

    #[test]
    fn registrations_ramp_refresh_and_churn() {
        let mut config = erlang(1.0, 1.0);
        config.registrations = 1000;
        config.contacts_per_aor = 2;
        config.reg_expires_s = 10;
        let actions = simulate(&mut Model::new(config), Duration::from_secs(100));
        let mut last_reg: HashMap<(u32, u32), (Duration, u32)> = HashMap::new();
        let (mut unregisters, mut refreshes) = (0, 0);
        for (at, action) in actions {
            let Action::Register {
                aor,
                contact,
                expires_s,
            } = action
            else {
                continue;
            };
            assert!(aor < 1000 && contact < 2);
            if let Some((prev_at, prev_expires)) = last_reg.get(&(aor, contact)) {
                if *prev_expires > 0 {
                    // Never lets a binding expire: refreshed or removed at about half expiry.
                    let gap = (at - *prev_at).as_secs_f64();
                    assert!((4.4..=5.6).contains(&gap), "gap {gap}");
                }
                if expires_s == 0 {
                    unregisters += 1;
                } else {
                    refreshes += 1;
                }
            } else {
                assert!(at < REGISTRATION_RAMP, "initial registration at {at:?}");
                assert_eq!(expires_s, 10);
            }
            last_reg.insert((aor, contact), (at, expires_s));
        }
        assert_eq!(last_reg.len(), 2000);
        // ~20 refresh rounds × 1000 AoRs × 2 contacts, 2% of them unregistering.
        let churn = unregisters as f64 / (unregisters + refreshes) as f64;
        assert!((0.01..0.03).contains(&churn), "churn {churn}");
    }

    #[test]
    fn flood_keeps_a_window_of_open_calls() {
        let mut config = erlang(1.0, 1.0);
        config.mode = Mode::Flood;
        config.flood_window = 3;
        let mut model = Model::new(config);
        let actions: Vec<Action> = std::iter::from_fn(|| model.poll_action(Duration::ZERO))
            .take(9)
            .collect();
        use Action::*;
        let start = |call| CallStart {
            call,
            emergency: false,
        };
        assert_eq!(
            actions,
            [
                start(0),
                start(1),
                start(2),
                start(3),
                CallStop { call: 0 },
                start(4),
                CallStop { call: 1 },
                start(5),
                CallStop { call: 2 }
            ]
        );
        assert_eq!(model.calls_active(), 3);
        assert_eq!(
            model.drain_active(),
            [
                CallStop { call: 3 },
                CallStop { call: 4 },
                CallStop { call: 5 }
            ]
        );
        assert_eq!(model.calls_active(), 0);
    }

    #[test]
    fn flood_serves_due_timers_between_calls() {
        let mut config = erlang(1.0, 1.0);
        config.mode = Mode::Flood;
        config.subscribers = Some(5);
        let mut model = Model::new(config);
        assert_eq!(
            model.poll_action(Duration::ZERO),
            Some(Action::Subscribers { count: 5 })
        );
        assert!(matches!(
            model.poll_action(Duration::ZERO),
            Some(Action::CallStart { .. })
        ));
        assert!(matches!(
            model.poll_action(SUBSCRIBERS_INTERVAL),
            Some(Action::Subscribers { .. })
        ));
    }

    #[test]
    fn refreshes_come_at_the_interval_until_the_stop() {
        let mut config = erlang(10.0, 3.0);
        config.call_refresh = Some(Duration::from_secs(1));
        let mut model = Model::new(config);
        let mut last: HashMap<u64, Duration> = HashMap::new();
        let mut refreshes = 0;
        for (at, action) in simulate(&mut model, Duration::from_secs(60)) {
            match action {
                Action::CallStart { call, .. } => assert!(last.insert(call, at).is_none()),
                Action::CallRefresh { call } => {
                    let gap = at - last.insert(call, at).expect("refresh of a call that is up");
                    assert_eq!(gap, Duration::from_secs(1));
                    refreshes += 1;
                }
                Action::CallStop { call } => {
                    assert!(at - last.remove(&call).unwrap() <= Duration::from_secs(1));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(refreshes > 1000, "{refreshes}");
        assert_eq!(model.drain_active().len(), last.len());
    }

    #[test]
    fn emergency_fraction_is_respected() {
        let mut config = erlang(100.0, 1.0);
        config.emergency_fraction = 0.25;
        let starts: Vec<bool> = simulate(&mut Model::new(config), Duration::from_secs(100))
            .into_iter()
            .filter_map(|(_, a)| match a {
                Action::CallStart { emergency, .. } => Some(emergency),
                _ => None,
            })
            .collect();
        let fraction = starts.iter().filter(|e| **e).count() as f64 / starts.len() as f64;
        assert!((fraction - 0.25).abs() < 0.02, "{fraction}");
    }
}
