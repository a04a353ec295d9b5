//! Checkpoints of the per-fridge operators.
//!
//! A checkpoint is requested at a logical time `T`: every per-fridge
//! operator, on every worker, hands over the state of each fridge it keeps
//! once it has applied every update before `T` and none at or after it.
//! Since every view's state lives in such operators (the rest of the
//! dataflow is stateless maps and filters), those states together are the
//! whole dataflow's state at `T`, and a dataflow built from them and fed
//! the log from `T` on produces exactly the changes the uninterrupted one
//! would have.
//!
//! Who asks for a checkpoint, where the states go and where they are kept
//! is up to the caller: this module does no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use differential_dataflow::hashable::Hashable;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Time;

/// One operator's state on one worker at a checkpoint time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperatorSnapshot {
    /// Every update before this time is applied, none at or after it.
    pub time: Time,
    /// The operator's stable id (unique within the dataflow).
    pub operator: String,
    /// The worker that kept these fridges.
    pub worker: usize,
    /// The shared table, encoded (the same on every worker).
    pub shared: Vec<u8>,
    /// Every fridge the worker kept, with its encoded state.
    pub fridges: Vec<(String, Vec<u8>)>,
}

/// One operator's state on every worker: the shared table and each
/// fridge's state, encoded.
pub type OperatorState = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// The state of every per-fridge operator at one logical time.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DataflowState {
    /// Every update before this time is in the state.
    pub time: Time,
    /// By operator: the shared table and every fridge's state.
    pub operators: BTreeMap<String, OperatorState>,
}

impl DataflowState {
    /// Gathers the snapshots every worker took at `time`.
    pub fn gather(time: Time, parts: Vec<OperatorSnapshot>) -> DataflowState {
        let mut operators: BTreeMap<String, OperatorState> = BTreeMap::new();
        for part in parts.into_iter().filter(|p| p.time == time) {
            let entry = operators.entry(part.operator).or_default();
            if part.worker == 0 || entry.0.is_empty() {
                entry.0 = part.shared;
            }
            entry.1.extend(part.fridges);
        }
        for (_, fridges) in operators.values_mut() {
            fridges.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        DataflowState { time, operators }
    }

    /// Fridges kept, summed over operators.
    pub fn fridge_states(&self) -> usize {
        self.operators.values().map(|(_, fridges)| fridges.len()).sum()
    }
}

/// A state that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("the checkpointed state of operator {operator} does not decode: {reason}")]
pub struct RestoreError {
    /// The operator.
    pub operator: String,
    /// What is wrong.
    pub reason: String,
}

type Deliver = Box<dyn Fn(OperatorSnapshot) + Send + Sync>;

#[derive(Default)]
struct Inner {
    requests: Mutex<BTreeSet<Time>>,
    /// The restored state's time (0: none).
    start: Time,
    /// What is left of the restored state: each operator on each worker
    /// takes its own fridges' states out, so none stays in memory beside
    /// the operators' own.
    restored: Mutex<Option<DataflowState>>,
    deliver: Option<Deliver>,
    /// The ids of the operators built on this process's first worker, and
    /// the number of this process's workers.
    registered: Mutex<(Vec<String>, usize)>,
    /// This process's workers, in a cluster (`None`: every worker is here).
    local: Option<std::ops::Range<usize>>,
    failed: Mutex<Option<RestoreError>>,
}

/// The checkpoint requests and the state to start from, shared by every
/// per-fridge operator of every worker. The default takes no checkpoints
/// and starts empty.
#[derive(Clone, Default)]
pub struct Checkpoints(Arc<Inner>);

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints")
            .field("enabled", &self.0.deliver.is_some())
            .field("restored_at", &self.0.start)
            .finish()
    }
}

impl Checkpoints {
    /// Checkpoints that start from `restored` (if any) and hand every
    /// operator snapshot to `deliver`.
    pub fn new(restored: Option<DataflowState>, deliver: impl Fn(OperatorSnapshot) + Send + Sync + 'static) -> Self {
        Checkpoints(Arc::new(Inner {
            start: restored.as_ref().map_or(0, |s| s.time),
            restored: Mutex::new(restored),
            deliver: Some(Box::new(deliver)),
            ..Inner::default()
        }))
    }

    /// Checkpoints of the workers `local` of a cluster: this process hands
    /// over (and restores) the state of its own workers' fridges only.
    pub fn on_workers(
        restored: Option<DataflowState>,
        local: std::ops::Range<usize>,
        deliver: impl Fn(OperatorSnapshot) + Send + Sync + 'static,
    ) -> Self {
        Checkpoints(Arc::new(Inner {
            start: restored.as_ref().map_or(0, |s| s.time),
            restored: Mutex::new(restored),
            deliver: Some(Box::new(deliver)),
            local: Some(local),
            ..Inner::default()
        }))
    }

    /// Asks for a checkpoint at `time`. Must be called before the inputs'
    /// frontier passes `time`.
    pub fn request(&self, time: Time) {
        if self.0.deliver.is_some() {
            self.0.requests.lock().expect("checkpoint requests are never poisoned").insert(time);
        }
    }

    /// The time the dataflow starts from: the restored state's, or 0.
    pub fn start(&self) -> Time {
        self.0.start
    }

    /// How many snapshots make one checkpoint (operators × this process's
    /// workers), once its first worker has built its dataflow.
    pub fn expected_snapshots(&self) -> usize {
        let registered = self.0.registered.lock().expect("registrations are never poisoned");
        registered.0.len() * registered.1
    }

    /// The first requested time after `after`.
    pub(crate) fn next_after(&self, after: Option<Time>) -> Option<Time> {
        let requests = self.0.requests.lock().expect("checkpoint requests are never poisoned");
        match after {
            Some(after) => requests.range(after + 1..).next().copied(),
            None => requests.first().copied(),
        }
    }

    pub(crate) fn register(&self, operator: &str, worker: usize, peers: usize) {
        let local = self.0.local.as_ref();
        if worker == local.map_or(0, |local| local.start) {
            let mut registered = self.0.registered.lock().expect("registrations are never poisoned");
            registered.0.push(operator.to_owned());
            registered.1 = local.map_or(peers, |local| local.len());
        }
    }

    /// The ids of the per-fridge operators the first worker has built, sorted.
    pub fn operators(&self) -> Vec<String> {
        let mut ids = self.0.registered.lock().expect("registrations are never poisoned").0.clone();
        ids.sort();
        ids
    }

    /// Why the restored state could not be used, if it could not: the
    /// operators then start empty, and the caller must stop.
    pub fn failure(&self) -> Option<String> {
        self.0.failed.lock().expect("failures are never poisoned").as_ref().map(ToString::to_string)
    }

    pub(crate) fn fail(&self, error: RestoreError) {
        self.0.failed.lock().expect("failures are never poisoned").get_or_insert(error);
    }

    pub(crate) fn deliver(&self, snapshot: OperatorSnapshot) {
        if let Some(deliver) = &self.0.deliver {
            deliver(snapshot);
        }
    }

    /// The restored states of `operator` for the fridges `worker` of
    /// `peers` keeps (the exchange sends fridge `f` to worker
    /// `hash(f) % peers`), and its shared table. They are taken out of the
    /// restored state: each operator of each worker restores once.
    pub(crate) fn restore<S: DeserializeOwned, T: DeserializeOwned + Default>(
        &self,
        operator: &str,
        worker: usize,
        peers: usize,
    ) -> Result<(HashMap<String, S>, T), RestoreError> {
        let (shared, mine) = {
            let mut restored = self.0.restored.lock().expect("the restored state is never poisoned");
            let Some(restored) = restored.as_mut() else {
                return Ok((HashMap::new(), T::default()));
            };
            // Every operator hands over a snapshot, fridges or not: one that
            // is missing was not in the dataflow the checkpoint was taken
            // from, and starting it empty would silently lose what it
            // should hold.
            let Some((shared, fridges)) = restored.operators.get_mut(operator) else {
                return Err(RestoreError {
                    operator: operator.to_owned(),
                    reason: "the checkpoint holds no state for it (it was taken by a dataflow without this operator)"
                        .into(),
                });
            };
            let (mine, theirs): (Vec<_>, Vec<_>) = std::mem::take(fridges)
                .into_iter()
                .partition(|(fridge, _)| (fridge.hashed() % peers as u64) as usize == worker);
            *fridges = theirs;
            (shared.clone(), mine)
        };
        let error = |e: bincode::Error| RestoreError { operator: operator.to_owned(), reason: e.to_string() };
        let table = if shared.is_empty() { T::default() } else { bincode::deserialize(&shared).map_err(error)? };
        let mut states = HashMap::with_capacity(mine.len());
        for (fridge, bytes) in mine {
            let state = bincode::deserialize(&bytes).map_err(error)?;
            states.insert(fridge, state);
        }
        Ok((states, table))
    }
}

/// Encodes a state for a snapshot.
pub(crate) fn encode<S: Serialize>(state: &S) -> Vec<u8> {
    bincode::serialize(state).expect("in-memory states always encode")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_takes_its_own_fridges_out_of_the_restored_state() {
        let fridges: Vec<(String, Vec<u8>)> = (0..40u32).map(|n| (format!("FR-{n:03}"), encode(&n))).collect();
        let state =
            DataflowState { time: 7, operators: [("stock".to_owned(), (encode(&5u8), fridges.clone()))].into() };
        let checkpoints = Checkpoints::new(Some(state), |_| {});
        let mut restored = Vec::new();
        for worker in 0..2 {
            let (states, table) = checkpoints.restore::<u32, u8>("stock", worker, 2).expect("restores");
            assert_eq!(table, 5);
            for (fridge, n) in states {
                assert_eq!((fridge.hashed() % 2) as usize, worker, "{fridge} on the wrong worker");
                restored.push((fridge, n));
            }
        }
        restored.sort();
        let expected: Vec<(String, u32)> = (0..40u32).map(|n| (format!("FR-{n:03}"), n)).collect();
        assert_eq!(restored, expected);
        assert_eq!(checkpoints.start(), 7);
        let left = checkpoints.0.restored.lock().expect("not poisoned");
        assert!(left.as_ref().expect("still there").operators["stock"].1.is_empty(), "no fridge stays behind");
        drop(left);
        let missing = checkpoints.restore::<u32, u8>("sales", 0, 2).expect_err("no such operator");
        assert!(missing.reason.contains("no state for it"), "{missing}");
    }
}
