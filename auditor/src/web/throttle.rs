//! Login throttling: after `web-login-max-failures` failed logins for one user name, or from one
//! client address, within the sliding `web-login-failure-window`, further attempts for that
//! name or from that address are refused (HTTP 429 with Retry-After) before argon2 runs, until
//! the window has passed. A successful login clears the name's count (not the address's: one
//! valid account must not reset an address that is guessing other users' passwords).
//!
//! Counted in memory, per process, bounded: each of the two tables (names, addresses) tracks at
//! most [`MAX_TRACKED`] keys; when a new key would pass that, keys without failures in the
//! window go first, then the least recently failed ones. User names are kept as their SHA-256
//! (a name can be as long as the form allows); an IPv6 client counts as its /64, which one
//! host usually holds whole.
//!
//! Attempts in flight count as failures until they end, so a burst of parallel requests cannot
//! get more than the allowed number of guesses past the check.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Keys tracked at most per table (user names; client addresses).
pub const MAX_TRACKED: usize = 10_000;

/// Why an attempt was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// When the next attempt may succeed the check.
    pub retry_after: Duration,
    /// The user name's count refused it (else the client's).
    pub by_user: bool,
}

#[derive(Debug, Default)]
struct Entry {
    /// The most recent failures, at most `max_failures`, oldest first.
    failures: VecDeque<Instant>,
    /// Attempts being checked right now.
    pending: u32,
    /// The last failure or attempt (for eviction).
    touched: Option<Instant>,
}

impl Entry {
    fn forget_before(&mut self, cutoff: Option<Instant>) {
        if let Some(cutoff) = cutoff {
            while self.failures.front().is_some_and(|t| *t <= cutoff) {
                self.failures.pop_front();
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.pending == 0 && self.failures.is_empty()
    }
}

#[derive(Debug)]
struct Table<K> {
    entries: HashMap<K, Entry>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// The entry of `key`, made room for if it is new.
    fn entry(&mut self, key: &K, cutoff: Option<Instant>) -> &mut Entry {
        if !self.entries.contains_key(key) && self.entries.len() >= self.cap {
            self.make_room(cutoff);
        }
        self.entries.entry(key.clone()).or_default()
    }

    /// Drops the keys without failures in the window; if that is not enough, the least recently
    /// touched ones, down to 90 % of the cap (so that this runs once per many new keys).
    fn make_room(&mut self, cutoff: Option<Instant>) {
        self.entries.retain(|_, entry| {
            entry.forget_before(cutoff);
            !entry.is_idle()
        });
        let target = self.cap - self.cap / 10 - 1;
        if self.entries.len() <= target {
            return;
        }
        let mut by_age: Vec<(Option<Instant>, K)> = self
            .entries
            .iter()
            .map(|(key, entry)| (entry.touched, key.clone()))
            .collect();
        by_age.sort_unstable_by_key(|(touched, _)| *touched);
        let excess = self.entries.len() - target;
        for (_, key) in by_age.into_iter().take(excess) {
            self.entries.remove(&key);
        }
    }

    fn prune(&mut self, cutoff: Option<Instant>) {
        self.entries.retain(|_, entry| {
            entry.forget_before(cutoff);
            !entry.is_idle()
        });
    }
}

#[derive(Debug)]
struct State {
    users: Table<[u8; 32]>,
    clients: Table<IpAddr>,
}

/// The failure counts of one web server.
#[derive(Debug)]
pub struct LoginThrottle {
    max_failures: usize,
    window: Duration,
    state: Mutex<State>,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self::with_cap(max_failures, window, MAX_TRACKED)
    }

    /// With another bound on the keys tracked per table.
    pub fn with_cap(max_failures: u32, window: Duration, cap: usize) -> Self {
        Self {
            max_failures: usize::try_from(max_failures.max(1)).unwrap_or(usize::MAX),
            window,
            state: Mutex::new(State {
                users: Table::new(cap),
                clients: Table::new(cap),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // the tables stay consistent whatever panicked while holding the lock
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cutoff(&self, now: Instant) -> Option<Instant> {
        now.checked_sub(self.window)
    }

    /// Admits an attempt for `user` from `client`, or says when to come back. The attempt
    /// counts as a failure until [`Attempt::succeeded`] or [`Attempt::failed`] (or its drop).
    ///
    /// # Errors
    /// The user name or the client has had its failures within the window.
    pub fn begin(&self, user: &str, client: IpAddr, now: Instant) -> Result<Attempt<'_>, Refused> {
        let user = user_key(user);
        let client = client_key(client);
        let cutoff = self.cutoff(now);
        let mut state = self.state();
        let user_wait = self.wait(state.users.entry(&user, cutoff), now, cutoff);
        let client_wait = self.wait(state.clients.entry(&client, cutoff), now, cutoff);
        if user_wait.is_some() || client_wait.is_some() {
            let by_user = user_wait >= client_wait;
            let retry_after = user_wait.max(client_wait).unwrap_or(self.window);
            // keys met only by this refusal are not kept
            remove_if_idle(&mut state.users.entries, &user);
            remove_if_idle(&mut state.clients.entries, &client);
            return Err(Refused {
                retry_after,
                by_user,
            });
        }
        let state = &mut *state;
        for entry in [
            state.users.entry(&user, cutoff),
            state.clients.entry(&client, cutoff),
        ] {
            entry.pending = entry.pending.saturating_add(1);
            entry.touched = Some(now);
        }
        Ok(Attempt {
            throttle: self,
            user,
            client,
            done: false,
        })
    }

    /// How long until `entry` admits an attempt; `None`: now.
    fn wait(&self, entry: &mut Entry, now: Instant, cutoff: Option<Instant>) -> Option<Duration> {
        entry.forget_before(cutoff);
        let pending = usize::try_from(entry.pending).unwrap_or(usize::MAX);
        if entry.failures.len().saturating_add(pending) < self.max_failures {
            return None;
        }
        if entry.failures.len() < self.max_failures {
            // attempts in flight fill the count: they end within moments
            return Some(Duration::from_secs(1));
        }
        // the oldest of the last max_failures failures leaves the window first
        let oldest = entry.failures.front().copied().unwrap_or(now);
        Some(
            (oldest + self.window)
                .saturating_duration_since(now)
                .max(Duration::from_secs(1)),
        )
    }

    fn finish(&self, user: &[u8; 32], client: &IpAddr, failed: bool, now: Instant) {
        let cutoff = self.cutoff(now);
        let mut state = self.state();
        let max = self.max_failures;
        let end = |entry: &mut Entry, fail: bool| {
            entry.pending = entry.pending.saturating_sub(1);
            if fail {
                entry.failures.push_back(now);
                while entry.failures.len() > max {
                    entry.failures.pop_front();
                }
                entry.touched = Some(now);
            }
        };
        // an entry evicted meanwhile is made again for a failure; a success needs none
        if failed {
            end(state.users.entry(user, cutoff), true);
            end(state.clients.entry(client, cutoff), true);
        } else {
            if let Some(entry) = state.users.entries.get_mut(user) {
                end(entry, false);
                entry.failures.clear();
            }
            if let Some(entry) = state.clients.entries.get_mut(client) {
                end(entry, false);
            }
        }
        remove_if_idle(&mut state.users.entries, user);
        remove_if_idle(&mut state.clients.entries, client);
    }

    /// Forgets failures older than the window and keys left with nothing.
    pub fn prune(&self, now: Instant) {
        let cutoff = self.cutoff(now);
        let mut state = self.state();
        state.users.prune(cutoff);
        state.clients.prune(cutoff);
    }

    /// Keys tracked: (user names, client addresses).
    pub fn tracked(&self) -> (usize, usize) {
        let state = self.state();
        (state.users.entries.len(), state.clients.entries.len())
    }

    /// Failures in the window counted for `user` (tests and diagnostics).
    pub fn failures_of_user(&self, user: &str, now: Instant) -> usize {
        let cutoff = self.cutoff(now);
        let mut state = self.state();
        state
            .users
            .entries
            .get_mut(&user_key(user))
            .map_or(0, |entry| {
                entry.forget_before(cutoff);
                entry.failures.len()
            })
    }
}

fn remove_if_idle<K: Hash + Eq>(entries: &mut HashMap<K, Entry>, key: &K) {
    if entries.get(key).is_some_and(Entry::is_idle) {
        entries.remove(key);
    }
}

/// An admitted login attempt; counts as a failure until it is resolved.
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    user: [u8; 32],
    client: IpAddr,
    done: bool,
}

impl Attempt<'_> {
    /// The password was right: the user name's failures are forgotten.
    pub fn succeeded(mut self) {
        self.done = true;
        self.throttle
            .finish(&self.user, &self.client, false, Instant::now());
    }

    /// The password (or the name) was wrong.
    pub fn failed(mut self) {
        self.done = true;
        self.throttle
            .finish(&self.user, &self.client, true, Instant::now());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        // dropped unresolved (the request was cancelled): count it as a failure
        if !self.done {
            self.throttle
                .finish(&self.user, &self.client, true, Instant::now());
        }
    }
}

fn user_key(user: &str) -> [u8; 32] {
    Sha256::digest(user.as_bytes()).into()
}

/// The address as counted: IPv4 (also IPv4-mapped IPv6) as is, IPv6 as its /64.
pub fn client_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1_u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const WINDOW: Duration = Duration::from_secs(900);

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn fail(throttle: &LoginThrottle, user: &str, client: IpAddr, now: Instant) {
        let attempt = throttle.begin(user, client, now).unwrap();
        throttle.finish(&attempt.user, &attempt.client, true, now);
        std::mem::forget(attempt);
    }

    #[test]
    fn the_sixth_attempt_for_a_user_is_refused_until_the_window_passes() {
        let throttle = LoginThrottle::new(5, WINDOW);
        let start = Instant::now();
        for n in 0..5 {
            // each from another address: the name's count alone refuses
            let client = ip(&format!("192.0.2.{n}"));
            fail(&throttle, "pm", client, start + Duration::from_secs(n));
        }
        let later = start + Duration::from_secs(60);
        let refused = throttle.begin("pm", ip("198.51.100.1"), later).unwrap_err();
        assert!(refused.by_user);
        assert_eq!(refused.retry_after, Duration::from_secs(840));
        // another name from those addresses is still admitted
        throttle
            .begin("other", ip("192.0.2.0"), later)
            .unwrap()
            .succeeded();
        // the oldest failure leaves the window: one more attempt
        let after = start + WINDOW + Duration::from_millis(1);
        let attempt = throttle.begin("pm", ip("198.51.100.1"), after).unwrap();
        attempt.succeeded();
        assert_eq!(throttle.failures_of_user("pm", after), 0);
    }

    #[test]
    fn one_address_trying_many_names_is_refused() {
        let throttle = LoginThrottle::new(5, WINDOW);
        let now = Instant::now();
        let client = ip("2001:db8:1:2::7");
        for n in 0..5 {
            fail(&throttle, &format!("user{n}"), client, now);
        }
        // the same /64, another name
        let refused = throttle
            .begin("someone", ip("2001:db8:1:2:ffff::1"), now)
            .unwrap_err();
        assert!(!refused.by_user);
        assert_eq!(refused.retry_after, WINDOW);
        // another /64 is not affected
        throttle
            .begin("someone", ip("2001:db8:1:3::1"), now)
            .unwrap()
            .succeeded();
        // a success does not clear the address's count
        let refused = throttle.begin("user0", client, now).unwrap_err();
        assert!(!refused.by_user);
    }

    #[test]
    fn attempts_in_flight_count_so_a_burst_gets_no_more_guesses() {
        let throttle = LoginThrottle::new(5, WINDOW);
        let now = Instant::now();
        let client = ip("192.0.2.1");
        let admitted: Vec<Attempt<'_>> = (0..20)
            .filter_map(|_| throttle.begin("pm", client, now).ok())
            .collect();
        assert_eq!(admitted.len(), 5);
        // dropped unresolved: counted as failures
        drop(admitted);
        assert_eq!(throttle.failures_of_user("pm", now), 5);
        assert!(throttle.begin("pm", client, now).is_err());
    }

    #[test]
    fn a_success_clears_the_user_count() {
        let throttle = LoginThrottle::new(5, WINDOW);
        let now = Instant::now();
        for n in 0..4 {
            fail(&throttle, "pm", ip(&format!("192.0.2.{n}")), now);
        }
        throttle
            .begin("pm", ip("198.51.100.9"), now)
            .unwrap()
            .succeeded();
        assert_eq!(throttle.failures_of_user("pm", now), 0);
        for n in 0..4 {
            fail(&throttle, "pm", ip(&format!("203.0.113.{n}")), now);
        }
        assert!(throttle.begin("pm", ip("198.51.100.9"), now).is_ok());
    }

    #[test]
    fn the_tracked_keys_stay_under_the_cap_and_the_oldest_go() {
        let cap = 100;
        let throttle = LoginThrottle::with_cap(5, WINDOW, cap);
        let start = Instant::now();
        // a flood of random names from many addresses, all within the window
        for n in 0..5_000_u32 {
            let now = start + Duration::from_millis(u64::from(n));
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000_u32 + n));
            fail(&throttle, &format!("random-{n}"), client, now);
            let (users, clients) = throttle.tracked();
            assert!(users <= cap && clients <= cap, "{users} {clients} at {n}");
        }
        let now = start + Duration::from_secs(5);
        // the newest names are still counted, the first ones were evicted
        assert_eq!(throttle.failures_of_user("random-4999", now), 1);
        assert_eq!(throttle.failures_of_user("random-0", now), 0);
        // once the window passed, pruning empties the tables
        throttle.prune(start + WINDOW + Duration::from_secs(10));
        assert_eq!(throttle.tracked(), (0, 0));
    }

    #[test]
    fn ipv4_mapped_and_ipv6_prefixes_are_keyed_alike() {
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("2001:db8::1")), ip("2001:db8::"));
        assert_eq!(client_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }
}
