//! Runs a view over events held in memory, the way the server runs it over
//! the log: each arrival batch at its own logical time, spread over several
//! workers. Used by the equivalence tests and the benches.

use std::collections::BTreeMap;
use std::sync::{Arc, mpsc};

use differential_dataflow::ExchangeData;
use differential_dataflow::collection::VecCollection;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::input::Input;

use crate::views::{ViewBatch, ViewConfig};
use crate::{Event, Time};

/// A view under test: a function from the event collection to its output.
pub trait ViewFn<D: 'static>:
    Fn(VecCollection<'_, Time, Event>) -> VecCollection<'_, Time, D> + Send + Sync + 'static
{
}
impl<D: 'static, F> ViewFn<D> for F where
    F: Fn(VecCollection<'_, Time, Event>) -> VecCollection<'_, Time, D> + Send + Sync + 'static
{
}

/// Feeds `arrivals` (each a batch of events arriving at one logical time, in
/// increasing time order) into `view` on `workers` worker threads and returns
/// every output change, consolidated and sorted by `(time, data)`.
pub fn run_view<D, V>(workers: usize, arrivals: Vec<(Time, Vec<Event>)>, view: V) -> Vec<(D, Time, isize)>
where
    D: ExchangeData + Hashable + Send,
    V: ViewFn<D>,
{
    let arrivals = Arc::new(arrivals);
    let (sender, receiver) = mpsc::channel();
    let sender = std::sync::Mutex::new(sender);
    let view = Arc::new(view);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let sender = sender.lock().expect("no worker panics while holding the sender").clone();
        let view = Arc::clone(&view);
        let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let (probe, _) = view(events)
                .consolidate()
                .inspect(move |change| {
                    let _ = sender.send(change.clone());
                })
                .probe();
            (input, probe)
        });
        let end = feed(index, peers, &arrivals, &mut input);
        worker.step_while(|| probe.less_than(&end));
    })
    .expect("timely starts its worker threads");
    drop(guards);
    consolidate(receiver.into_iter().collect())
}

/// Feeds `arrivals` into every view (see [`crate::views::all`]) and returns
/// every batch of output changes, in no particular order. Changes are not
/// consolidated; the changelogs consolidate them when they write.
pub fn run_views(workers: usize, arrivals: Vec<(Time, Vec<Event>)>, config: ViewConfig) -> Vec<ViewBatch> {
    let arrivals = Arc::new(arrivals);
    let (sender, receiver) = mpsc::channel();
    let sender = std::sync::Mutex::new(sender);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let sender = sender.lock().expect("no worker panics while holding the sender").clone();
        let config = config.clone();
        let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let probe = crate::views::all(events, &config).deliver(move |batch| {
                let _ = sender.send(batch);
            });
            (input, probe)
        });
        let end = feed(worker.index(), worker.peers(), &arrivals, &mut input);
        worker.step_while(|| probe.less_than(&end));
    })
    .expect("timely starts its worker threads");
    drop(guards);
    receiver.into_iter().collect()
}

/// Feeds this worker's share of `arrivals` and closes the input; returns
/// the time before which everything has been fed.
fn feed(
    index: usize,
    peers: usize,
    arrivals: &[(Time, Vec<Event>)],
    input: &mut differential_dataflow::input::InputSession<Time, Event, isize>,
) -> Time {
    let mut position = 0usize;
    for (time, batch) in arrivals {
        input.advance_to(*time);
        for event in batch {
            if position % peers == index {
                input.insert(event.clone());
            }
            position += 1;
        }
    }
    let end = arrivals.last().map_or(1, |(time, _)| time + 1);
    input.advance_to(end);
    input.flush();
    end
}

/// Sums the diffs of equal `(data, time)` pairs, drops zeros, sorts by time.
pub fn consolidate<D: Ord>(changes: Vec<(D, Time, isize)>) -> Vec<(D, Time, isize)> {
    let mut sums: BTreeMap<(Time, D), isize> = BTreeMap::new();
    for (data, time, diff) in changes {
        *sums.entry((time, data)).or_insert(0) += diff;
    }
    sums.into_iter().filter(|(_, diff)| *diff != 0).map(|((time, data), diff)| (data, time, diff)).collect()
}

/// The state after every change: each record with its final multiplicity.
pub fn final_state<D: Ord + Clone>(changes: &[(D, Time, isize)]) -> BTreeMap<D, isize> {
    let mut state = BTreeMap::new();
    for (data, _, diff) in changes {
        *state.entry(data.clone()).or_insert(0) += diff;
    }
    state.retain(|_, diff| *diff != 0);
    state
}
