//! `by_fridge_in_time_order`: per-fridge state advanced one logical time at
//! a time.
//!
//! Most views are plain differential operators. Three need something they
//! cannot express: the logical time itself as data (the id of a restock
//! order is the time it opened), and state that forgets what lies behind a
//! per-fridge event-time horizon (telemetry runs, 7-day sales), which is
//! what keeps memory bounded however long the pipeline runs. This operator
//! gives each fridge a small state machine: updates are exchanged by
//! fridge, held until the input frontier passes their time, then applied
//! time by time, in time order, consolidated and sorted, so the output
//! changes depend only on the input changes and their times: replaying the
//! log reproduces them exactly.
//!
//! A view may also read a small table every fridge shares (the price list):
//! its changes are broadcast to every worker and applied, at each logical
//! time, before the fridges' own updates of that time.
//!
//! A checkpoint does not stop the operator while it encodes every fridge:
//! its state at the checkpoint's time is taken copy-on-write ([`Taking`]).
//! A fridge is encoded just before its first change after that time, and
//! the rest a slice at a time between the operator's other work, so the
//! views keep answering while a large state is written out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use differential_dataflow::collection::{AsCollection, VecCollection};
use differential_dataflow::consolidation::consolidate;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{Data, ExchangeData};
use serde::Serialize;
use serde::de::DeserializeOwned;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, InputCapability};

use crate::Time;
use crate::checkpoint::{Checkpoints, OperatorSnapshot, encode};

/// A table every fridge of a [`by_fridge_in_time_order_with`] operator
/// reads, kept whole on every worker.
pub trait Shared: Default + Serialize + DeserializeOwned + 'static {
    /// A change to the table.
    type Change: ExchangeData;

    /// Applies the consolidated changes of one logical time.
    fn update(&mut self, changes: &[(Self::Change, isize)]);
}

/// No shared table.
impl Shared for () {
    type Change = ();

    fn update(&mut self, _changes: &[((), isize)]) {}
}

/// A fridge's state in a [`by_fridge_in_time_order`] operator.
pub trait FridgeState: Serialize + DeserializeOwned + 'static {
    /// What the operator consumes, per fridge.
    type Input: ExchangeData;
    /// The changes it produces.
    type Output: Data;
    /// The table every fridge reads; `()` for none.
    type Shared: Shared;

    /// Applies the consolidated changes of one logical time (sorted by
    /// input) and pushes the resulting output changes.
    fn apply(
        &mut self,
        fridge: &str,
        time: Time,
        inputs: &[(Self::Input, isize)],
        shared: &Self::Shared,
        out: &mut Vec<(Self::Output, isize)>,
    );

    /// Takes from a freshly made state what a checkpoint does not hold
    /// (settings that are not data, such as a policy), after a restore.
    fn restored(&mut self, _fresh: &Self) {}

    /// Reacts to `changes` of the shared table, already applied to
    /// `shared`, at `time` (before this time's own inputs).
    fn reshare(
        &mut self,
        _fridge: &str,
        _time: Time,
        _changes: &[(<Self::Shared as Shared>::Change, isize)],
        _shared: &Self::Shared,
        _out: &mut Vec<(Self::Output, isize)>,
    ) {
    }

    /// Records held, for the bounded-state measurements.
    fn held(&self) -> usize;
}

/// A shared count of records held in state, summed over operators and
/// workers. Cloning shares the count.
#[derive(Clone, Debug, Default)]
pub struct HeldRecords(Arc<AtomicI64>);

impl HeldRecords {
    /// The current total.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts, from now on, the records held in every arrangement that
    /// `worker` builds after this call (from differential's own logging:
    /// batches created, merged and dropped).
    pub fn track_arrangements(&self, worker: &mut timely::worker::Worker) {
        use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
        let held = self.clone();
        if let Some(mut registry) = worker.log_register() {
            registry.insert::<DifferentialEventBuilder, _>(
                "differential/arrange",
                move |_time, events: &mut Option<Vec<(std::time::Duration, DifferentialEvent)>>| {
                    for (_, event) in events.iter().flatten() {
                        let delta = match event {
                            DifferentialEvent::Batch(batch) => batch.length as i64,
                            DifferentialEvent::Merge(merge) => merge
                                .complete
                                .map_or(0, |done| done as i64 - merge.length1 as i64 - merge.length2 as i64),
                            DifferentialEvent::Drop(drop) => -(drop.length as i64),
                            _ => 0,
                        };
                        held.add(delta);
                    }
                },
            );
        }
    }

    fn add(&self, delta: i64) {
        if delta != 0 {
            self.0.fetch_add(delta, Ordering::Relaxed);
        }
    }
}

/// What every per-fridge operator is handed: where it counts the records
/// it holds, and the checkpoints it takes part in.
#[derive(Clone, Debug, Default)]
pub struct OperatorHooks {
    /// The count of records held.
    pub held: HeldRecords,
    /// Checkpoint requests and the state to start from.
    pub checkpoints: Checkpoints,
}

/// The updates of one logical time, held until both input frontiers pass it:
/// the fridges' updates and the shared table's changes.
struct Pending<I, C> {
    capability: Capability<Time>,
    updates: Vec<((String, I), isize)>,
    shared: Vec<(C, isize)>,
}

/// The pending updates of `time`, holding a capability for it.
fn hold<'a, I, C>(
    pending: &'a mut BTreeMap<Time, Pending<I, C>>,
    capability: &InputCapability<Time>,
    time: Time,
) -> &'a mut Pending<I, C> {
    pending.entry(time).or_insert_with(|| Pending {
        capability: capability.delayed(&time, 0),
        updates: Vec::new(),
        shared: Vec::new(),
    })
}

/// Encoding one checkpoint's fridges takes at most this long per
/// activation; the operator asks to run again for the rest.
const ENCODE_SLICE: std::time::Duration = std::time::Duration::from_micros(500);

/// A checkpoint being taken copy-on-write: the operator's state at `time`,
/// of which the fridges in `left` are not yet encoded (and have not changed
/// since `time`).
struct Taking {
    time: Time,
    shared: Vec<u8>,
    encoded: Vec<(String, Vec<u8>)>,
    /// Fridges still to encode, in the order the slices take them ...
    order: Vec<String>,
    /// ... and as a set, to look a fridge up before it changes.
    left: HashSet<String>,
}

impl Taking {
    /// Starts a checkpoint at `time` of `fridges` and `table` as they are now.
    fn start<S: Serialize, T: Serialize>(time: Time, fridges: &HashMap<String, S>, table: &T) -> Taking {
        let order: Vec<String> = fridges.keys().cloned().collect();
        Taking {
            time,
            shared: encode(table),
            encoded: Vec::with_capacity(order.len()),
            left: order.iter().cloned().collect(),
            order,
        }
    }

    /// Encodes `fridge` if its state at `time` is not encoded yet: called
    /// just before the state changes.
    fn before_change<S: Serialize>(&mut self, fridge: &str, state: &S) {
        if self.left.remove(fridge) {
            self.encoded.push((fridge.to_owned(), encode(state)));
        }
    }

    /// Encodes fridges until `until` (every one left, with `None`); says
    /// whether the checkpoint is whole.
    fn encode_until<S: Serialize>(&mut self, fridges: &HashMap<String, S>, until: Option<std::time::Instant>) -> bool {
        while let Some(fridge) = self.order.pop() {
            if self.left.remove(&fridge)
                && let Some(state) = fridges.get(&fridge)
            {
                self.encoded.push((fridge, encode(state)));
                if until.is_some_and(|until| std::time::Instant::now() >= until) {
                    break;
                }
            }
        }
        self.left.is_empty()
    }

    /// The whole snapshot, once [`Taking::encode_until`] said so.
    fn snapshot(self, operator: &str, worker: usize) -> OperatorSnapshot {
        OperatorSnapshot {
            time: self.time,
            operator: operator.to_owned(),
            worker,
            shared: self.shared,
            fridges: self.encoded,
        }
    }
}

/// The horizon rule every per-fridge operator applies: an event more than
/// `horizon_us` behind `latest` (the newest event time of the kind the
/// operator reads that its fridge had sent before the event's commit) is
/// beyond the horizon and not applied; one exactly the horizon behind still
/// is. Events of one commit never push each other out, whatever their order.
pub fn beyond_horizon(at: i64, latest: i64, horizon_us: i64) -> bool {
    at < latest.saturating_sub(horizon_us)
}

/// Runs `S` per fridge over `input`, whose records are `(fridge_id, input)`.
///
/// `id` names the operator in timely's graph and keys its state in
/// checkpoints: it must be unique within the dataflow and stay the same
/// for as long as checkpoints taken with it are to be restored. The ids
/// are part of the checkpoint fingerprint, so a checkpoint of a dataflow
/// with other operators is refused rather than restored into empty state.
pub fn by_fridge_in_time_order<'s, S: FridgeState<Shared = ()>>(
    input: VecCollection<'s, Time, (String, S::Input)>,
    id: &'static str,
    new_state: impl Fn() -> S + 'static,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, S::Output> {
    let none = timely::dataflow::operators::generic::operator::empty(input.inner.scope()).as_collection();
    by_fridge_in_time_order_with(input, none, id, new_state, hooks)
}

/// [`by_fridge_in_time_order`] with a shared table: `shared`'s changes
/// reach every worker, and at each logical time they are applied (and every
/// fridge told of them) before the fridges' own updates of that time.
pub fn by_fridge_in_time_order_with<'s, S: FridgeState>(
    input: VecCollection<'s, Time, (String, S::Input)>,
    shared: VecCollection<'s, Time, <S::Shared as Shared>::Change>,
    id: &'static str,
    new_state: impl Fn() -> S + 'static,
    hooks: &OperatorHooks,
) -> VecCollection<'s, Time, S::Output> {
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::vec::Broadcast;

    type Update<S> = ((String, <S as FridgeState>::Input), Time, isize);
    let exchange = Exchange::new(|((fridge, _), _, _): &Update<S>| fridge.hashed());
    let (worker, peers) = (input.inner.scope().index(), input.inner.scope().peers());
    let (held, checkpoints) = (hooks.held.clone(), hooks.checkpoints.clone());
    checkpoints.register(id, worker, peers);
    let operator = id.to_owned();
    let scope = input.inner.scope();
    input
        .inner
        .binary_frontier(shared.inner.broadcast(), exchange, Pipeline, id, move |_capability, info| {
            let activator = scope.activator_for(info.address);
            let mut pending: BTreeMap<Time, Pending<S::Input, <S::Shared as Shared>::Change>> = BTreeMap::new();
            let (mut fridges, mut table): (HashMap<String, S>, S::Shared) =
                checkpoints.restore(&operator, worker, peers).unwrap_or_else(|error| {
                    checkpoints.fail(error);
                    Default::default()
                });
            if !fridges.is_empty() {
                let fresh = new_state();
                for state in fridges.values_mut() {
                    state.restored(&fresh);
                }
            }
            held.add(fridges.values().map(|state| state.held() as i64).sum());
            // The last checkpoint started (or started from), and the one
            // being taken.
            let mut taken = (checkpoints.start() > 0).then(|| checkpoints.start());
            let mut taking: Option<Taking> = None;
            // Starts a checkpoint at `at`, finishing the one before it first.
            let begin = {
                let (checkpoints, operator) = (checkpoints.clone(), operator.clone());
                move |taking: &mut Option<Taking>, at: Time, fridges: &HashMap<String, S>, table: &S::Shared| {
                    if let Some(mut older) = taking.take() {
                        older.encode_until(fridges, None);
                        checkpoints.deliver(older.snapshot(&operator, worker));
                    }
                    *taking = Some(Taking::start(at, fridges, table));
                }
            };
            let mut out = Vec::new();
            move |(input, frontier), (shared_input, shared_frontier), output| {
                input.for_each(|capability, data| {
                    for ((fridge, value), time, diff) in data.drain(..) {
                        hold(&mut pending, &capability, time).updates.push(((fridge, value), diff));
                    }
                });
                shared_input.for_each(|capability, data| {
                    for (change, time, diff) in data.drain(..) {
                        hold(&mut pending, &capability, time).shared.push((change, diff));
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) || shared_frontier.less_equal(entry.key()) {
                        break;
                    }
                    // Checkpoints requested before this time see none of it.
                    while let Some(at) = checkpoints.next_after(taken).filter(|at| at <= entry.key()) {
                        begin(&mut taking, at, &fridges, &table);
                        taken = Some(at);
                    }
                    let (time, Pending { capability, mut updates, shared: mut changes }) = entry.remove_entry();
                    let mut session = output.session(&capability);
                    let track = |state: &mut S, apply: &mut dyn FnMut(&mut S)| {
                        let before = state.held() as i64;
                        apply(state);
                        held.add(state.held() as i64 - before);
                    };
                    consolidate(&mut changes);
                    if !changes.is_empty() {
                        // Every fridge may change: the checkpoint takes them all first.
                        if let Some(taking) = taking.as_mut() {
                            taking.encode_until(&fridges, None);
                        }
                        table.update(&changes);
                        for (fridge, state) in fridges.iter_mut() {
                            track(state, &mut |state| state.reshare(fridge, time, &changes, &table, &mut out));
                        }
                    }
                    consolidate(&mut updates);
                    let mut rest = updates.as_slice();
                    while let Some(((fridge, _), _)) = rest.first() {
                        let len = rest.iter().take_while(|((f, _), _)| f == fridge).count();
                        let inputs: Vec<(S::Input, isize)> =
                            rest[..len].iter().map(|((_, value), diff)| (value.clone(), *diff)).collect();
                        let state = fridges.entry(fridge.clone()).or_insert_with(&new_state);
                        if let Some(taking) = taking.as_mut() {
                            taking.before_change(fridge, state);
                        }
                        track(state, &mut |state| state.apply(fridge, time, &inputs, &table, &mut out));
                        rest = &rest[len..];
                    }
                    for (change, diff) in out.drain(..) {
                        session.give((change, time, diff));
                    }
                }
                // Every time before a requested checkpoint is applied once
                // both frontiers have reached it.
                while let Some(at) = checkpoints.next_after(taken) {
                    if frontier.less_than(&at) || shared_frontier.less_than(&at) {
                        break;
                    }
                    begin(&mut taking, at, &fridges, &table);
                    taken = Some(at);
                }
                // A slice of the checkpoint being taken; all of it once the
                // inputs have ended, since the operator may not run again.
                if let Some(mut current) = taking.take() {
                    let ended = frontier.is_empty() && shared_frontier.is_empty();
                    let until = (!ended).then(|| std::time::Instant::now() + ENCODE_SLICE);
                    if current.encode_until(&fridges, until) {
                        checkpoints.deliver(current.snapshot(&operator, worker));
                    } else {
                        taking = Some(current);
                        activator.activate();
                    }
                }
            }
        })
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint taken copy-on-write holds every fridge as it was at its
    /// time, whether the fridge was encoded before a later change, by a
    /// slice, or at the end, and none that appeared after it.
    #[test]
    fn a_checkpoint_taken_copy_on_write_holds_the_state_at_its_time() {
        let mut fridges: HashMap<String, Vec<i64>> = (0..50).map(|i| (format!("FR-{i:03}"), vec![i, i * 2])).collect();
        let at_time = fridges.clone();
        let mut taking = Taking::start(7, &fridges, &"prices");

        // Changes after the checkpoint's time: each fridge is taken first.
        for i in (0..50).step_by(3) {
            let fridge = format!("FR-{i:03}");
            let state = fridges.get_mut(&fridge).unwrap();
            taking.before_change(&fridge, state);
            state.push(-1);
        }
        fridges.insert("FR-new".into(), vec![99]);
        // A slice that has already run out takes one fridge at most.
        let left = taking.left.len();
        assert!(!taking.encode_until(&fridges, Some(std::time::Instant::now())));
        assert_eq!(taking.left.len(), left - 1);
        // A second change of an encoded fridge does not encode it again.
        let state = fridges.get_mut("FR-000").unwrap();
        taking.before_change("FR-000", state);
        state.push(-2);
        assert!(taking.encode_until(&fridges, None));

        let snapshot = taking.snapshot("op", 1);
        assert_eq!((snapshot.time, snapshot.operator.as_str(), snapshot.worker), (7, "op", 1));
        assert_eq!(snapshot.shared, encode(&"prices"));
        let mut got = snapshot.fridges;
        got.sort();
        let mut expected: Vec<(String, Vec<u8>)> =
            at_time.iter().map(|(fridge, state)| (fridge.clone(), encode(state))).collect();
        expected.sort();
        assert_eq!(got, expected);
    }
}
