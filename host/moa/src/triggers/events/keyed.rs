//! Per-key order inside one ordered source (a Kafka partition, a log partition, a stream): a key's
//! messages are delivered one at a time in offset order while other keys' messages go on beside
//! them, so a message that keeps failing holds up only its own key. The source commits only up to
//! the highest offset below every unfinished message ([`KeyedLanes::finish`] says which).

use super::{Event, Lane};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// How many keys of one source may have a delivery in flight at once.
pub const MAX_KEYS_IN_FLIGHT: usize = 64;

/// The keys in flight of one source, the messages waiting behind them, and the offsets not finished.
#[derive(Default)]
pub struct KeyedLanes {
    /// One entry per key with a delivery in flight: the messages of that key waiting behind it.
    /// Key-less messages share the `None` lane (kept in order among themselves).
    waiting: HashMap<Option<Vec<u8>>, VecDeque<Event>>,
    /// Offsets admitted and not finished (in flight or waiting).
    unfinished: BTreeSet<u64>,
    /// The lowest and the highest offset admitted so far.
    lowest: Option<u64>,
    highest: Option<u64>,
    /// The last offset [`Self::finish`] reported as committable.
    committed: Option<u64>,
    /// Warm instances of finished deliveries, for the next ones.
    idle: Vec<Lane>,
}

impl KeyedLanes {
    /// Takes a new message (offsets increase); returns it when its key is free, so the caller
    /// starts it now; otherwise it waits behind its key's delivery.
    pub fn admit(&mut self, event: Event) -> Option<Event> {
        self.unfinished.insert(event.offset);
        self.lowest = Some(self.lowest.map_or(event.offset, |l| l.min(event.offset)));
        self.highest = Some(self.highest.map_or(event.offset, |h| h.max(event.offset)));
        match self.waiting.get_mut(&event.key) {
            Some(queue) => {
                queue.push_back(event);
                None
            }
            None => {
                self.waiting.insert(event.key.clone(), VecDeque::new());
                Some(event)
            }
        }
    }

    /// `event` was handled or dead-lettered: returns its key's next message to start, if one
    /// waits, and the offset the source may now commit up to (inclusive), when that moved.
    pub fn finish(&mut self, event: &Event) -> (Option<Event>, Option<u64>) {
        self.unfinished.remove(&event.offset);
        let next = match self.waiting.get_mut(&event.key) {
            Some(queue) => match queue.pop_front() {
                Some(next) => Some(next),
                None => {
                    self.waiting.remove(&event.key);
                    None
                }
            },
            None => None,
        };
        // Every admitted offset up to the one before the lowest unfinished is done.
        let committable = match self.unfinished.first() {
            Some(&unfinished) => unfinished
                .checked_sub(1)
                .filter(|&c| self.lowest.is_some_and(|l| c >= l)),
            None => self.highest,
        };
        let moved = match (committable, self.committed) {
            (Some(new), Some(old)) => new > old,
            (Some(_), None) => true,
            _ => false,
        };
        if moved {
            self.committed = committable;
            (next, committable)
        } else {
            (next, None)
        }
    }

    /// Keys with a delivery in flight.
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// Messages admitted and not finished (in flight or waiting behind their key).
    pub fn unfinished(&self) -> usize {
        self.unfinished.len()
    }

    /// Whether nothing is in flight or waiting.
    pub fn is_idle(&self) -> bool {
        self.unfinished.is_empty()
    }

    /// A lane for a delivery about to start (with a warm instance when one is idle).
    pub fn lane(&mut self) -> Lane {
        self.idle.pop().unwrap_or_default()
    }

    /// Gives back a finished delivery's lane. One warm instance is kept per source, as before
    /// deliveries of different keys ran side by side: idle instances hold slots of the instance
    /// pool that HTTP requests need too.
    pub fn give_back(&mut self, lane: Lane) {
        if lane.warm.is_some() && self.idle.is_empty() {
            self.idle.push(lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(offset: u64, key: &str) -> Event {
        Event {
            topic: "t".into(),
            partition: 0,
            offset,
            id: format!("t/0/{offset}"),
            key: Some(key.as_bytes().to_vec()),
            payload: Vec::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_key_waits_for_itself_and_other_keys_go_on() {
        let mut lanes = KeyedLanes::default();
        let a0 = lanes.admit(event(0, "a")).expect("a is free");
        assert!(
            lanes.admit(event(1, "a")).is_none(),
            "a waits behind offset 0"
        );
        let b2 = lanes.admit(event(2, "b")).expect("b is free");
        assert_eq!(lanes.in_flight(), 2);
        // b finishes first: nothing is committable while offset 0 is unfinished.
        let (next, commit) = lanes.finish(&b2);
        assert!(next.is_none());
        assert_eq!(commit, None);
        // a's first finishes: its second starts; offset 0 is committable (1 is unfinished).
        let (next, commit) = lanes.finish(&a0);
        let a1 = next.expect("a's next message");
        assert_eq!(a1.offset, 1);
        assert_eq!(commit, Some(0));
        let (next, commit) = lanes.finish(&a1);
        assert!(next.is_none());
        assert_eq!(commit, Some(2), "everything admitted is finished");
        assert!(lanes.is_idle());
        assert_eq!(lanes.in_flight(), 0);
    }

    #[test]
    fn a_stuck_key_holds_the_commit_point_but_not_other_keys() {
        let mut lanes = KeyedLanes::default();
        let stuck = lanes.admit(event(10, "stuck")).expect("free");
        let mut commits = Vec::new();
        for offset in 11..20 {
            let other = lanes
                .admit(event(offset, &format!("k{offset}")))
                .expect("free");
            let (_, commit) = lanes.finish(&other);
            commits.extend(commit);
        }
        assert!(
            commits.is_empty(),
            "nothing past the stuck message is committed"
        );
        let (_, commit) = lanes.finish(&stuck);
        assert_eq!(commit, Some(19));
    }
}
