//! Named presets (`--scenario`) and the flags that override their numbers, resolved into
//! one [`Spec`], and the plan it implies: which user, room, gateway and schedule each
//! connection gets.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cli::{BenchArgs, Scenario};
use super::BenchError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Spec {
    pub scenario: Scenario,
    pub gateways: Vec<String>,
    pub connections: usize,
    pub rooms: usize,
    /// The first `senders` connections send; all subscribe (unless `subscribe` is off).
    pub senders: usize,
    pub users: usize,
    /// Total sends per second.
    pub rate: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub body_bytes: usize,
    /// Client sockets bound to 127.0.0.2 .. 127.0.0.(1+source_ips); 0: unbound.
    pub source_ips: usize,
    pub subscribe: bool,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            scenario: Scenario::Chatty,
            gateways: Vec::new(),
            connections: 0,
            rooms: 0,
            senders: 0,
            users: 0,
            rate: 0.0,
            duration_s: 0.0,
            warmup_s: 0.0,
            body_bytes: 0,
            source_ips: 0,
            subscribe: true,
        }
    }
}

impl Spec {
    /// The preset's numbers, then every flag given.
    pub fn from_args(a: &BenchArgs) -> Result<Spec, BenchError> {
        // (connections, rooms, senders, rate, duration, warmup, subscribe)
        let (connections, rooms, senders, rate, duration, warmup, subscribe) = match a.scenario {
            Scenario::Fanout => (1001, 1, Some(1), 50.0, 30.0, 5.0, true),
            Scenario::Chatty | Scenario::Mixed => (2000, 200, None, 3000.0, 30.0, 5.0, true),
            Scenario::Connections => (20_000, 200, Some(0), 0.0, 30.0, 0.0, true),
            Scenario::Persist => (500, 100, None, 10_000.0, 5.0, 0.0, false),
        };
        let connections = a.connections.unwrap_or(connections);
        let rooms = a.rooms.unwrap_or(rooms);
        let senders = a.senders.or(senders).unwrap_or(connections);
        let rate = a.rate.unwrap_or(rate);
        let users = a.users.unwrap_or(connections.min(200));
        let source_ips = a.source_ips.unwrap_or(match a.scenario {
            // A source address per 10,000 connections keeps far from the ephemeral
            // port range (about 28,000 ports per source address).
            Scenario::Connections => connections.div_ceil(10_000),
            _ => 0,
        });
        let spec = Spec {
            scenario: a.scenario,
            gateways: a.gateways.clone(),
            connections,
            rooms,
            senders,
            users,
            rate: if senders == 0 { 0.0 } else { rate },
            duration_s: a.duration.unwrap_or(duration),
            warmup_s: a.warmup.unwrap_or(warmup),
            body_bytes: a.body_bytes,
            source_ips,
            subscribe,
        };
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Setup(m.to_owned()));
        if self.gateways.is_empty() {
            return bad("at least one --gateway");
        }
        if self.connections == 0 {
            return bad("--connections must be at least 1");
        }
        if self.rooms == 0 {
            return bad("--rooms must be at least 1");
        }
        if self.users == 0 || self.users > self.connections {
            return bad("--users must be 1 ..= --connections");
        }
        if self.senders > self.connections {
            return bad("--senders must be at most --connections");
        }
        if self.senders > 0 && !(self.rate > 0.0 && self.rate.is_finite()) {
            return bad("--rate must be above 0 when something sends");
        }
        if !(self.duration_s >= 0.0 && self.warmup_s >= 0.0) {
            return bad("--duration and --warmup must not be negative");
        }
        if self.source_ips > 250 {
            return bad("--source-ips: at most 250 (127.0.0.2 ..= 127.0.0.251)");
        }
        Ok(())
    }

    pub fn gateway_of(&self, conn: usize) -> usize {
        conn % self.gateways.len()
    }

    pub fn room_of(&self, conn: usize) -> usize {
        conn % self.rooms
    }

    pub fn user_of(&self, conn: usize) -> usize {
        conn % self.users
    }

    pub fn source_of(&self, conn: usize) -> Option<Ipv4Addr> {
        (self.source_ips > 0).then(|| Ipv4Addr::new(127, 0, 0, 2 + (conn % self.source_ips) as u8))
    }

    /// Sender `conn`'s first send (after the start) and the time between its sends:
    /// send k of sender j is scheduled at (j + k·senders) / rate, so the total is `rate`
    /// evenly spaced.
    pub fn schedule_of(&self, conn: usize) -> Option<(Duration, Duration)> {
        if conn >= self.senders || self.rate <= 0.0 {
            return None;
        }
        Some((
            Duration::from_secs_f64(conn as f64 / self.rate),
            Duration::from_secs_f64(self.senders as f64 / self.rate),
        ))
    }

    /// Which of the connections sharing `conn`'s user and room this one is (0, 1, …): those
    /// are conn + k·lcm(users, rooms). The mixed scenario gives each its own emoji.
    pub fn same_member_slot(&self, conn: usize) -> usize {
        fn gcd(a: usize, b: usize) -> usize {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        let (u, r) = (self.users.max(1), self.rooms.max(1));
        conn / (u / gcd(u, r) * r)
    }

    /// (user, room) pairs the plan needs: each user joins the rooms of its connections.
    pub fn memberships(&self) -> Vec<(usize, usize)> {
        let mut pairs: Vec<(usize, usize)> = (0..self.connections)
            .map(|c| (self.user_of(c), self.room_of(c)))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn spec(args: &[&str]) -> Spec {
        let a = BenchArgs::try_parse_from(["chat-bench"].iter().chain(args)).unwrap();
        Spec::from_args(&a).unwrap()
    }

    #[test]
    fn presets_and_overrides() {
        let f = spec(&["--scenario", "fanout"]);
        assert_eq!(
            (f.connections, f.rooms, f.senders, f.rate),
            (1001, 1, 1, 50.0)
        );
        let c = spec(&[
            "--scenario",
            "chatty",
            "--rate",
            "100",
            "--connections",
            "20",
        ]);
        assert_eq!(
            (c.connections, c.senders, c.users, c.rate),
            (20, 20, 20, 100.0)
        );
        let k = spec(&["--scenario", "connections"]);
        assert_eq!((k.senders, k.rate, k.source_ips), (0, 0.0, 2));
        assert_eq!(k.source_of(3), Some(Ipv4Addr::new(127, 0, 0, 3)));
        assert!(!spec(&["--scenario", "persist"]).subscribe);
        let m = spec(&["--scenario", "mixed"]);
        assert_eq!(
            (m.connections, m.rooms, m.senders, m.users, m.rate),
            (2000, 200, 2000, 200, 3000.0)
        );
    }

    #[test]
    fn the_schedule_spreads_the_total_rate_evenly() {
        let s = spec(&["--connections", "4", "--rooms", "2", "--rate", "100"]);
        let firsts: Vec<Duration> = (0..4).map(|c| s.schedule_of(c).unwrap().0).collect();
        assert_eq!(firsts[1] - firsts[0], Duration::from_millis(10));
        assert_eq!(s.schedule_of(0).unwrap().1, Duration::from_millis(40));
        // Users 0..4, each in the room of its connection.
        assert_eq!(s.memberships(), vec![(0, 0), (1, 1), (2, 0), (3, 1)]);
        let s = spec(&["--connections", "10", "--rooms", "5", "--users", "2"]);
        assert_eq!(s.memberships().len(), 10);
        // Connections 0 and 10 would share user 0 and room 0 (lcm 10): slots 0 and 1.
        assert_eq!(s.same_member_slot(3), 0);
        assert_eq!(s.same_member_slot(13), 1);
        let c = spec(&["--scenario", "mixed"]);
        assert_eq!(c.same_member_slot(0), 0);
        assert_eq!(c.same_member_slot(1999), 9);
    }
}
