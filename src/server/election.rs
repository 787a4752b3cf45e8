//! Who leads, among servers that share an etcd (issue 22): a sans-io core.
//! Time and etcd's answers are its inputs; what to ask etcd and how this
//! server's role changed are its outputs. The loop hands the asks to its
//! etcd helper thread and feeds the answers back.
//!
//! The leader holds a key bound to a lease. Its fence is that key's
//! creation revision: every write it makes is guarded by it, so a deposed
//! leader's writes are refused by etcd. It also steps down by itself: a
//! lease outlives the moment its last renewal was *sent* by at least its
//! TTL, so a leader that has not had a renewal answered stops acting
//! `MARGIN` of the TTL before that, which is before any other server can
//! have won the key (and a paused leader's first act on waking is to
//! notice it). A standby reads the key every third of the TTL and, when it
//! is free, campaigns with a lease of its own.

use std::time::{Duration, Instant};

/// This server's part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not leading; the leader's name as last read, if any.
    Standby { leader: Option<String> },
    /// Leading, with writes fenced by `fence`, until `valid_until`.
    Leading { lease: i64, fence: i64 },
}

/// What the loop must have the helper ask etcd. One at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// A new lease of `ttl_secs`.
    Grant {
        ttl_secs: i64,
    },
    /// Create the leader key, holding this server's name, bound to
    /// `lease`, if it does not exist; then read it.
    Campaign {
        lease: i64,
    },
    KeepAlive {
        lease: i64,
    },
    /// Read the leader key.
    ReadLeader,
    /// End `lease` (and with it the key, if this server held it).
    Resign {
        lease: i64,
    },
}

/// The leader key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    /// Its creation revision: the leader's fence.
    pub fence: i64,
    /// The lease it is bound to.
    pub lease: i64,
}

/// What etcd answered; `Err` when it could not be asked (no quorum,
/// unreachable): the text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Granted(Result<i64, String>),
    /// The key as it is after the campaign.
    Campaigned(Result<Option<Holder>, String>),
    /// The lease's remaining seconds; 0 when it is gone.
    KeptAlive(Result<i64, String>),
    Leader(Result<Option<Holder>, String>),
    Resigned,
}

/// How the role changed, for the loop (and its log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Lead from now on: fence every write with `fence`.
    Lead { fence: i64 },
    /// Stop dispatching and acknowledging at once, and why.
    StepDown { why: String },
    /// Another server leads (or none does, for now).
    LeaderIs(Option<String>),
}

/// The part of the TTL before a renewal's validity ends at which a leader
/// without an answered renewal steps down.
const MARGIN: f64 = 0.25;

pub struct Election {
    me: String,
    ttl: Duration,
    role: Role,
    /// This server's lease, if it has one, and until when it surely holds
    /// (from the sending of its last answered grant or renewal).
    lease: Option<(i64, Instant)>,
    /// The ask in flight, and when it was sent.
    asked: Option<(Ask, Instant)>,
    /// When to ask next.
    next: Instant,
    /// A lease of an earlier term of ours that still holds the key: to be
    /// ended before campaigning.
    stale: Option<i64>,
    /// May this server lead? Not while its journals miss part of the log.
    eligible: bool,
    /// A lead stepped down from because no renewal was answered in time:
    /// its lease and fence. Renewed after all (etcd was slow or without
    /// quorum, and its key still stands), it leads again with the same
    /// fence: nobody else can have led while the key stood.
    suspended: Option<(i64, i64)>,
}

impl Election {
    pub fn new(me: &str, ttl: Duration, now: Instant) -> Election {
        Election {
            me: me.to_owned(),
            ttl,
            role: Role::Standby { leader: None },
            lease: None,
            asked: None,
            next: now,
            stale: None,
            eligible: true,
            suspended: None,
        }
    }

    /// A server whose journals miss part of the log must not lead: it only
    /// watches who does until it has them again.
    pub fn set_eligible(&mut self, eligible: bool) {
        self.eligible = eligible;
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Does this server lead at `now`? False as soon as its lease may have
    /// lapsed, even before `tick` says so.
    #[cfg(test)]
    pub fn leads(&self, now: Instant) -> bool {
        matches!(self.role, Role::Leading { .. })
            && self
                .lease
                .is_some_and(|(_, until)| now < self.deadline(until))
    }

    fn deadline(&self, valid_until: Instant) -> Instant {
        valid_until
            .checked_sub(self.ttl.mul_f64(MARGIN))
            .unwrap_or(valid_until)
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Instant {
        match (&self.role, self.lease) {
            (Role::Leading { .. }, Some((_, until))) => self.next.min(self.deadline(until)),
            _ => self.next,
        }
    }

    /// Time passes: step down if the lease may lapse, and say what to ask.
    pub fn tick(&mut self, now: Instant) -> (Option<Ask>, Vec<Change>) {
        let mut changes = Vec::new();
        if let (Role::Leading { lease, fence }, Some((_, until))) = (&self.role, self.lease) {
            if now >= self.deadline(until) {
                let held = (*lease, *fence);
                changes.push(self.step_down(format!(
                    "no renewal of the leader's lease was answered in time: it may lapse in etcd within {:.1} s",
                    until.saturating_duration_since(now).as_secs_f64()
                )));
                self.suspended = Some(held);
                self.next = now;
            }
        }
        if self.asked.is_some() || now < self.next {
            return (None, changes);
        }
        let lease_ok = self.lease.filter(|(_, until)| now < self.deadline(*until));
        let stale = self.stale.take();
        let ask = match (&self.role, lease_ok, stale) {
            (Role::Leading { lease, .. }, _, _) => Ask::KeepAlive { lease: *lease },
            // Does the lease stepped down from still stand?
            (Role::Standby { .. }, _, _) if self.suspended.is_some() => Ask::KeepAlive {
                lease: self.suspended.map_or(0, |(l, _)| l),
            },
            (Role::Standby { .. }, _, Some(lease)) => Ask::Resign { lease },
            // Someone leads: watch the key; a lease is got only when it is
            // free (a standby renewing one for nothing would load etcd).
            (Role::Standby { leader: Some(_) }, _, None) => Ask::ReadLeader,
            (Role::Standby { leader: None }, _, None) if !self.eligible => Ask::ReadLeader,
            (Role::Standby { leader: None }, Some((lease, _)), None) => Ask::Campaign { lease },
            (Role::Standby { leader: None }, None, None) => Ask::Grant {
                ttl_secs: self.ttl.as_secs().max(1) as i64,
            },
        };
        self.asked = Some((ask.clone(), now));
        (Some(ask), changes)
    }

    fn step_down(&mut self, why: String) -> Change {
        self.role = Role::Standby { leader: None };
        self.lease = None;
        Change::StepDown { why }
    }

    /// An answer to the ask in flight.
    pub fn answer(&mut self, answer: Answer, now: Instant) -> Vec<Change> {
        let Some((ask, sent)) = self.asked.take() else {
            return Vec::new();
        };
        let poll = self.ttl / 3;
        self.next = now + poll;
        let mut changes = Vec::new();
        match (ask, answer) {
            (Ask::KeepAlive { lease }, Answer::KeptAlive(Ok(ttl)))
                if self.suspended.is_some_and(|(l, _)| l == lease) =>
            {
                let fence = self.suspended.take().map_or(0, |(_, f)| f);
                if ttl > 0 {
                    let ttl = Duration::from_secs(ttl as u64).min(self.ttl);
                    self.lease = Some((lease, sent + ttl));
                    self.role = Role::Leading { lease, fence };
                    changes.push(Change::Lead { fence });
                } else {
                    // Gone: its key went with it; campaign anew.
                    self.next = now;
                }
            }
            (Ask::Grant { .. }, Answer::Granted(Ok(id))) => {
                self.lease = Some((id, sent + self.ttl));
                self.next = now; // campaign or read at once
            }
            (Ask::Campaign { lease }, Answer::Campaigned(Ok(Some(h)))) => {
                if h.name == self.me && h.lease == lease {
                    self.role = Role::Leading {
                        lease,
                        fence: h.fence,
                    };
                    changes.push(Change::Lead { fence: h.fence });
                } else if h.name == self.me {
                    // Our own key from an earlier term (this process
                    // stepped down, or one before it died): it lapses with
                    // its lease, which we end now rather than wait.
                    self.role = Role::Standby { leader: None };
                    self.stale = Some(h.lease);
                    self.next = now;
                } else {
                    self.role = Role::Standby {
                        leader: Some(h.name.clone()),
                    };
                    changes.push(Change::LeaderIs(Some(h.name)));
                }
            }
            (Ask::KeepAlive { lease }, Answer::KeptAlive(Ok(ttl))) if ttl > 0 => {
                // Never held longer than asked for, whatever etcd says.
                let ttl = Duration::from_secs(ttl as u64).min(self.ttl);
                self.lease = Some((lease, sent + ttl));
            }
            (Ask::KeepAlive { .. }, Answer::KeptAlive(Ok(_))) => {
                changes.push(self.step_down("the leader's lease expired in etcd".into()));
                self.next = now;
            }
            (Ask::ReadLeader, Answer::Leader(Ok(holder))) => {
                let name = holder.map(|h| h.name);
                if !matches!(&self.role, Role::Standby { leader } if *leader == name) {
                    changes.push(Change::LeaderIs(name.clone()));
                }
                let free = name.is_none();
                self.role = Role::Standby { leader: name };
                if free && self.eligible {
                    self.next = now; // campaign at once
                }
            }
            (Ask::Resign { lease }, _) => {
                if self.lease.is_some_and(|(l, _)| l == lease) {
                    self.lease = None;
                }
                self.next = now;
            }
            // etcd could not be asked: try again at the next poll; a
            // leader steps down in `tick` if its lease may lapse meanwhile.
            (_, _) => {}
        }
        // A standby's lease runs out unless renewed: let it go and get a
        // new one when needed rather than renew it for nothing.
        if matches!(self.role, Role::Standby { .. }) {
            if let Some((_, until)) = self.lease {
                if now >= self.deadline(until) {
                    self.lease = None;
                }
            }
        }
        changes
    }

    /// Leaving: what to ask so that another server may lead at once.
    pub fn resign(&mut self) -> Option<Ask> {
        let suspended = self.suspended.take().map(|(l, _)| l);
        let lease = self.lease.take().map(|(l, _)| l).or(suspended)?;
        self.role = Role::Standby { leader: None };
        Some(Ask::Resign { lease })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// etcd as the election sees it: leases that lapse at their TTL after
    /// their last renewal reached it, one leader key, a revision counter,
    /// and quorum that may be lost.
    struct Model {
        leases: BTreeMap<i64, Instant>,
        key: Option<(String, i64, i64)>, // holder, lease, creation revision
        revision: i64,
        next_lease: i64,
        up: bool,
    }

    impl Model {
        fn new() -> Model {
            Model {
                leases: BTreeMap::new(),
                key: None,
                revision: 1,
                next_lease: 1,
                up: true,
            }
        }

        fn expire(&mut self, now: Instant) {
            self.leases.retain(|_, until| *until > now);
            if let Some((_, lease, _)) = &self.key {
                if !self.leases.contains_key(lease) {
                    self.key = None;
                    self.revision += 1;
                }
            }
        }

        /// `ask` arrives at etcd at `now`, from `me`, whose TTL is `ttl`.
        fn serve(&mut self, ask: &Ask, me: &str, ttl: Duration, now: Instant) -> Answer {
            self.expire(now);
            let down = || "etcd has no quorum".to_string();
            let holder = |m: &Model| {
                m.key.as_ref().map(|(h, lease, rev)| Holder {
                    name: h.clone(),
                    fence: *rev,
                    lease: *lease,
                })
            };
            match ask {
                Ask::Grant { .. } if !self.up => Answer::Granted(Err(down())),
                Ask::Grant { .. } => {
                    let id = self.next_lease;
                    self.next_lease += 1;
                    self.leases.insert(id, now + ttl);
                    Answer::Granted(Ok(id))
                }
                Ask::Campaign { .. } if !self.up => Answer::Campaigned(Err(down())),
                Ask::Campaign { lease } => {
                    if self.key.is_none() && self.leases.contains_key(lease) {
                        self.revision += 1;
                        self.key = Some((me.to_owned(), *lease, self.revision));
                    }
                    Answer::Campaigned(Ok(holder(self)))
                }
                Ask::KeepAlive { .. } if !self.up => Answer::KeptAlive(Err(down())),
                Ask::KeepAlive { lease } => match self.leases.get_mut(lease) {
                    Some(until) => {
                        *until = now + ttl;
                        Answer::KeptAlive(Ok(ttl.as_secs() as i64))
                    }
                    None => Answer::KeptAlive(Ok(0)),
                },
                Ask::ReadLeader if !self.up => Answer::Leader(Err(down())),
                Ask::ReadLeader => Answer::Leader(Ok(holder(self))),
                Ask::Resign { lease } => {
                    self.leases.remove(lease);
                    self.expire(now);
                    Answer::Resigned
                }
            }
        }
    }

    /// Servers that may pause (not ticking, their asks not sent) and etcd
    /// that may lose quorum, over a few minutes of simulated time in 50 ms
    /// steps with each ask taking one step each way: at no instant do two
    /// servers lead, and after each disturbance a leader is back.
    fn run(seed: u64) -> (usize, u32) {
        let ttl = Duration::from_secs(3);
        let t0 = Instant::now();
        let mut rng = seed.max(1);
        let mut draw = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let names = ["s1", "s2", "s3"];
        let mut servers: Vec<Election> = names.iter().map(|n| Election::new(n, ttl, t0)).collect();
        let mut paused_until = [t0; 3];
        // An ask travelling to etcd, then its answer travelling back.
        let mut wire: Vec<Option<(Ask, u32)>> = vec![None, None, None];
        let mut back: Vec<Option<Answer>> = vec![None, None, None];
        let mut etcd = Model::new();
        let mut etcd_back = t0;
        let mut leaderless_steps = 0u32;
        let mut leads_seen = 0;
        let mut trace: Vec<String> = Vec::new();
        for step in 0..4000u32 {
            let now = t0 + Duration::from_millis(50) * step;
            // Disturbances: a pause of a server, or etcd losing quorum.
            match draw(400) {
                0 => {
                    let i = draw(3) as usize;
                    paused_until[i] = now + Duration::from_millis(500 * (1 + draw(12)));
                }
                1 if etcd.up => {
                    etcd.up = false;
                    etcd_back = now + Duration::from_millis(500 * (1 + draw(8)));
                }
                _ => {}
            }
            if !etcd.up && now >= etcd_back {
                etcd.up = true;
            }
            for i in 0..3 {
                if now < paused_until[i] {
                    continue; // a paused process does nothing, sends nothing
                }
                if let Some(a) = back[i].take() {
                    let ch = servers[i].answer(a.clone(), now);
                    trace.push(format!("{:?} {} got {a:?} -> {ch:?}", now - t0, names[i]));
                }
                if let Some((ask, _)) = wire[i].take() {
                    let a = etcd.serve(&ask, names[i], ttl, now);
                    trace.push(format!(
                        "{:?} etcd served {} {ask:?} leases {:?} key {:?}",
                        now - t0,
                        names[i],
                        etcd.leases
                            .iter()
                            .map(|(k, v)| (*k, *v - t0))
                            .collect::<Vec<_>>(),
                        etcd.key
                    ));
                    back[i] = Some(a);
                }
                let (ask, ch) = servers[i].tick(now);
                if ask.is_some() || !ch.is_empty() {
                    trace.push(format!(
                        "{:?} {} tick -> {ask:?} {ch:?} lease {:?}",
                        now - t0,
                        names[i],
                        servers[i].lease.map(|(l, u)| (l, u - t0))
                    ));
                }
                if let Some(ask) = ask {
                    wire[i] = Some((ask, step));
                }
            }
            let leading: Vec<usize> = (0..3).filter(|i| servers[*i].leads(now)).collect();
            assert!(
                leading.len() <= 1,
                "seed {seed}, at {:?}: {leading:?} all lead",
                now - t0
            );
            // Whoever leads holds the key in etcd.
            etcd.expire(now);
            if let [i] = leading[..] {
                leads_seen += 1;
                assert_eq!(
                    etcd.key.as_ref().map(|k| k.0.as_str()),
                    Some(names[i]),
                    "seed {seed}: {} leads without the key\n{}",
                    names[i],
                    trace[trace.len().saturating_sub(25)..].join("\n")
                );
            } else {
                leaderless_steps += 1;
            }
        }
        (leads_seen, leaderless_steps)
    }

    #[test]
    fn never_two_leaders_whatever_pauses_and_quorum_losses_come() {
        let mut led = 0;
        for seed in 1..=200 {
            let (leads, _) = run(seed);
            led += leads;
        }
        // And someone leads most of the time.
        assert!(led > 200 * 4000 / 2, "led {led} steps of {}", 200 * 4000);
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_before_its_lease_can_lapse() {
        let ttl = Duration::from_secs(3);
        let t0 = Instant::now();
        let mut e = Election::new("s1", ttl, t0);
        let (ask, _) = e.tick(t0);
        assert_eq!(ask, Some(Ask::Grant { ttl_secs: 3 }));
        assert!(e.answer(Answer::Granted(Ok(7)), t0).is_empty());
        let (ask, _) = e.tick(t0);
        assert_eq!(ask, Some(Ask::Campaign { lease: 7 }));
        let changes = e.answer(
            Answer::Campaigned(Ok(Some(Holder {
                name: "s1".into(),
                fence: 42,
                lease: 7,
            }))),
            t0,
        );
        assert_eq!(changes, [Change::Lead { fence: 42 }]);
        assert!(e.leads(t0));
        // The loop wakes for the next renewal, and for the margin.
        assert!(e.next_deadline() <= t0 + ttl / 3);
        // Renewals go unanswered from here (etcd lost quorum). It leads
        // up to the margin before its lease (granted at t0, 3 s) could
        // lapse in etcd, never at or past it, and steps down at the first
        // tick there.
        let margin_point = t0 + ttl.mul_f64(1.0 - MARGIN);
        let mut now = t0;
        let mut down = None;
        while down.is_none() {
            now += Duration::from_millis(100);
            assert_eq!(e.leads(now), now < margin_point, "at {:?}", now - t0);
            let (ask, changes) = e.tick(now);
            if let Some(Ask::KeepAlive { .. }) = ask {
                e.answer(Answer::KeptAlive(Err("no quorum".into())), now);
            }
            down = changes
                .into_iter()
                .find(|c| matches!(c, Change::StepDown { .. }));
        }
        assert!(now >= margin_point && now < margin_point + Duration::from_millis(100));
        assert!(!e.leads(now));
        assert_eq!(e.role(), &Role::Standby { leader: None });
        let Some(Change::StepDown { why }) = down else {
            unreachable!()
        };
        assert!(
            why.contains("no renewal of the leader's lease was answered in time"),
            "{why}"
        );
        // Stepped down, it asks after the same lease (never a new one, nor
        // the key's holder) until etcd answers; renewed, it leads again
        // with the same fence. (The step-down's own tick asked already,
        // and was answered with an error: the next ask comes a poll later.)
        now += ttl / 3;
        let (ask, _) = e.tick(now);
        assert_eq!(ask, Some(Ask::KeepAlive { lease: 7 }));
        assert!(e
            .answer(Answer::KeptAlive(Err("no quorum".into())), now)
            .is_empty());
        now += ttl;
        let (ask, _) = e.tick(now);
        assert_eq!(ask, Some(Ask::KeepAlive { lease: 7 }));
        let changes = e.answer(Answer::KeptAlive(Ok(3)), now);
        assert_eq!(changes, [Change::Lead { fence: 42 }]);
        assert!(e.leads(now));
        // Had the lease gone, it would have campaigned anew.
        let mut f = Election::new("s1", ttl, t0);
        f.suspended = Some((7, 42));
        let (ask, _) = f.tick(t0);
        assert_eq!(ask, Some(Ask::KeepAlive { lease: 7 }));
        assert!(f.answer(Answer::KeptAlive(Ok(0)), t0).is_empty());
        assert!(!f.leads(t0));
        let (ask, _) = f.tick(t0);
        assert_eq!(ask, Some(Ask::Grant { ttl_secs: 3 }));
    }

    /// "s1", leading under lease 7 and fence 9 since `t0`.
    fn leading(ttl: Duration, t0: Instant) -> Election {
        let mut e = Election::new("s1", ttl, t0);
        e.tick(t0);
        e.answer(Answer::Granted(Ok(7)), t0);
        e.tick(t0);
        let won = Holder {
            name: "s1".into(),
            fence: 9,
            lease: 7,
        };
        e.answer(Answer::Campaigned(Ok(Some(won))), t0);
        e
    }

    #[test]
    fn a_leader_that_resigns_ends_its_lease_and_leads_no_more() {
        let t0 = Instant::now();
        let mut e = leading(Duration::from_secs(3), t0);
        assert_eq!(e.role(), &Role::Leading { lease: 7, fence: 9 });
        assert_eq!(e.resign(), Some(Ask::Resign { lease: 7 }));
        assert!(!e.leads(t0));
        assert_eq!(e.resign(), None, "nothing left to end");
    }

    #[test]
    fn a_lease_is_never_held_longer_than_asked_whatever_etcd_answers() {
        let ttl = Duration::from_secs(3);
        let t0 = Instant::now();
        let mut e = leading(ttl, t0);
        // A renewal answered with an absurd TTL (a lying or broken peer).
        let at = t0 + ttl / 3;
        assert_eq!(e.tick(at).0, Some(Ask::KeepAlive { lease: 7 }));
        e.answer(Answer::KeptAlive(Ok(i64::MAX)), at);
        assert!(e.leads(at + ttl.mul_f64(1.0 - MARGIN) - Duration::from_millis(1)));
        assert!(!e.leads(at + ttl.mul_f64(1.0 - MARGIN)));
    }
}
