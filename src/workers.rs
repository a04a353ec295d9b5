//! Timely workers that read the event log and maintain the views.
//!
//! Workers are OS threads. Each reads the whole log through its own reader
//! (cheap: frames are only checked, not decoded) and decodes every
//! `peers`-th record; the views then exchange records by key, so a fridge's
//! state lives on one worker. A record's logical time is its ingest time.
//! The source advances its capability to `last + 1` whenever it has read
//! up to a commit boundary, since every later commit has a later time.
//!
//! A log commit wakes the source operators through an activator; the view
//! changes go to the view sink over a bounded channel, followed by the
//! frontier reported by worker 0, so the sink knows when a time is final.
//! Commits that land within [`PACE`] of the last one a source read are read
//! together, [`PACE`] after it: every commit keeps its own logical time,
//! but the dataflow takes one step, and the sinks one frontier, for them
//! all, instead of one per commit.
//!
//! On several processes (timely's cluster mode, [`Cluster`]) every worker
//! of every process reads the log the same way: the records a process
//! decodes are those of its workers, and the views' exchanges send each
//! fridge to its one worker in the cluster, so a process's sinks receive
//! the changes of its own fridges. Each process's first worker reports to
//! that process's sink. Before the workers start, the processes agree on
//! the checkpoint they all resume from ([`agree`]). On a log a process
//! reads a share of ([`coldstream_sources::log::Share`], the partitions of
//! a Fluvio topic), its workers read only that share, and decode every
//! `threads`-th of its records; a source moves its capability on to the
//! least time its reader says a later record can have
//! ([`LogReader::floor`]), so that a share without records does not hold
//! the cluster back.
//!
//! Checkpoints: whenever the ingest time of the records read enters a new
//! interval, or a commit starts a given number of records after the last
//! request (and once more when the workers stop), the sources ask for a
//! checkpoint at that record's time. Every source sees the same records,
//! so they agree on the times without talking; worker 0's also tells the
//! sink the offset of that record, where a restart resumes reading. On
//! shares, which see different records, a source asks at the start of
//! each interval its capability moves into, the same times in every
//! process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use coldstream_pipelines::checkpoint::{Checkpoints, OperatorSnapshot};
use coldstream_pipelines::views::{ViewBatch, ViewConfig};
use coldstream_pipelines::{Event, Time};
use coldstream_sources::log::{Entry, LogReader, OpenReader};
use differential_dataflow::AsCollection;
use differential_dataflow::collection::VecCollection;
use timely::WorkerConfig;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::operator::source;
use timely::scheduling::SyncActivator;

use crate::supervise::Failures;

/// Records a source reads before yielding to the other operators.
const READ_BATCH: usize = 8192;

/// Records a source reads ahead of what every view has finished, at most:
/// beyond it the source waits and the backlog stays in the log, on disk,
/// instead of in the dataflow's queues. (One commit larger than this is
/// still read whole.)
const MAX_READ_AHEAD: u64 = 131_072;

/// After a source has read up to a commit boundary, how long it lets the
/// next commits gather before it reads them. At moderate rates the log
/// commits every millisecond or so, a few events each; read one by one,
/// each commit costs a dataflow step on every worker (progress exchanged,
/// every operator scheduled) and a frontier for the sinks (an outbox
/// fsync among them). A view answers at most this much later.
pub const PACE: Duration = Duration::from_millis(5);

/// What the workers send to the view sink.
pub enum ViewMessage {
    /// Changes to one view.
    Changes(ViewBatch),
    /// Every change before this time has been sent.
    Frontier(Time),
    /// The dataflow has stopped; every change before this time has been sent.
    Closed(Time),
    /// The workers are gone without finishing (a lost process of the
    /// cluster): write what the last frontier made final, and stop.
    Abandoned,
    /// A checkpoint was requested at `time`; the log resumes at `offset`.
    CheckpointAt {
        /// The checkpoint's logical time.
        time: Time,
        /// The offset of the first record at or after `time`.
        offset: u64,
    },
    /// One operator's state for a checkpoint.
    Snapshot(OperatorSnapshot),
}

/// The processes the workers run on: one (the default), or a timely
/// cluster connected over TCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Processes in the cluster.
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// Every process's `host:port`, in process order (empty for one process).
    pub addresses: Vec<String>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster { processes: 1, process: 0, addresses: Vec::new() }
    }
}

impl Cluster {
    /// Whether there is more than one process.
    pub fn is_multi(&self) -> bool {
        self.processes > 1
    }

    /// The index of this process's first worker, with `threads` each.
    pub fn first_worker(&self, threads: usize) -> usize {
        self.process * threads
    }

    fn config(&self, threads: usize) -> timely::Config {
        let communication = if self.is_multi() {
            timely::CommunicationConfig::Cluster {
                threads,
                process: self.process,
                addresses: self.addresses.clone(),
                report: false,
                zerocopy: false,
            }
        } else {
            timely::CommunicationConfig::Process(threads)
        };
        timely::Config { communication, worker: WorkerConfig::default() }
    }
}

/// What one process brings to the agreement on where to resume.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Offer {
    process: usize,
    threads: usize,
    /// The times of the checkpoints it holds.
    times: Vec<Time>,
}

/// Agrees with every other process of `cluster` on the checkpoint to
/// resume from: the newest time at which every process holds one (`None`:
/// start from the log's beginning). Each process offers the times of the
/// checkpoints it keeps; they meet in a short timely computation of their
/// own before the workers start, which also checks that every process runs
/// as many workers. One process agrees with itself at once.
pub fn agree(cluster: &Cluster, threads: usize, times: Vec<Time>) -> Result<Option<Time>, RuntimeError> {
    if !cluster.is_multi() {
        return Ok(times.into_iter().max());
    }
    use timely::dataflow::operators::vec::Broadcast;
    use timely::dataflow::operators::{Input, Inspect, Probe};
    let offers = Arc::new(std::sync::Mutex::new(Vec::<Offer>::new()));
    let gathered = Arc::clone(&offers);
    let mine = Offer { process: cluster.process, threads, times };
    let guards = timely::execute(cluster.config(1), move |worker| {
        let mut input = timely::dataflow::InputHandle::new();
        let probe = timely::dataflow::ProbeHandle::new();
        let gathered = Arc::clone(&gathered);
        worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .container::<Vec<Offer>>()
                .broadcast()
                .inspect(move |offer| gathered.lock().expect("no worker panics while gathering").push(offer.clone()))
                .probe_with(&probe);
        });
        input.send(mine.clone());
        input.close();
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(50)));
        }
    })
    .map_err(RuntimeError::Start)?;
    for outcome in guards.join() {
        outcome.map_err(|panic| RuntimeError::Start(format!("agreeing with the cluster: {panic}")))?;
    }
    let offers = offers.lock().expect("the agreement has ended").clone();
    if offers.len() != cluster.processes {
        return Err(RuntimeError::Start(format!(
            "heard from {} of {} processes while agreeing where to resume",
            offers.len(),
            cluster.processes
        )));
    }
    if let Some(other) = offers.iter().find(|o| o.threads != threads) {
        return Err(RuntimeError::Start(format!(
            "process {} runs {} workers and this one {threads}: every process of a cluster needs the same `workers`",
            other.process, other.threads
        )));
    }
    let mut common: Option<std::collections::BTreeSet<Time>> = None;
    for offer in &offers {
        let times: std::collections::BTreeSet<Time> = offer.times.iter().copied().collect();
        common = Some(match common {
            None => times,
            Some(common) => common.intersection(&times).copied().collect(),
        });
    }
    Ok(common.and_then(|times| times.last().copied()))
}

/// Where the workers start and how often they checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct Resume {
    /// The log offset to read from (the checkpoint's, or 0).
    pub offset: u64,
    /// A checkpoint is requested whenever the ingest time enters a new
    /// interval of this many milliseconds...
    pub checkpoint_every_ms: u64,
    /// ... or a commit starts this many records after the last request.
    pub checkpoint_every_records: u64,
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Timely could not start its threads.
    #[error("starting the timely workers: {0}")]
    Start(String),
    /// The log could not be opened for reading.
    #[error("opening a log reader: {0}")]
    Log(#[from] coldstream_sources::log::LogError),
    /// The checkpointed state could not be used.
    #[error("{0}; move the checkpoints/ folder aside to replay the whole log, or run `coldstream rebuild`")]
    Restore(String),
}

/// The running workers.
pub struct Workers {
    stop: Arc<AtomicBool>,
    sources: Arc<std::sync::Mutex<Vec<SyncActivator>>>,
    /// Waited on at stop for the workers to exit.
    guards: Option<timely::communication::WorkerGuards<()>>,
    /// How long a stop waits for the other processes of a cluster to stop
    /// too (`None`: one process, which always finishes).
    patience: Option<Duration>,
    /// How far the process's first worker has read the log.
    read: Arc<ReadProgress>,
}

/// How far the first worker of a process has read the log, and where each
/// logical time it read and the views have not finished starts: how many
/// records the views are behind.
#[derive(Debug, Default)]
pub struct ReadProgress {
    read: AtomicU64,
    /// `(time, first offset)` of the times read and not yet finished, in order.
    starts: std::sync::Mutex<std::collections::VecDeque<(Time, u64)>>,
}

impl ReadProgress {
    fn starts(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(Time, u64)>> {
        self.starts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The offset up to which the worker has read.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Acquire)
    }

    /// The first offset whose time is at or after `frontier` (the views'
    /// frontier): every record before it is final in every view.
    pub fn final_before(&self, frontier: Time) -> u64 {
        let starts = self.starts();
        starts.iter().find(|(time, _)| *time >= frontier).map_or_else(|| self.read(), |(_, offset)| *offset)
    }
}

/// How the workers ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every view finished: the sinks have every change.
    Finished,
    /// Workers panicked (a lost process of the cluster among the causes).
    Panicked(String),
    /// The other processes of the cluster did not stop in time.
    Abandoned,
}

/// How long a process of a cluster waits at stop for the others.
const CLUSTER_STOP_PATIENCE: Duration = Duration::from_secs(30);

impl Workers {
    /// How far the workers have read the log.
    pub fn read_progress(&self) -> Arc<ReadProgress> {
        Arc::clone(&self.read)
    }

    /// Starts `threads` workers reading the log from `resume.offset`, with
    /// the views' state of `views.hooks.checkpoints`.
    pub fn start(
        threads: usize,
        cluster: &Cluster,
        views: ViewConfig,
        readers: Arc<dyn OpenReader>,
        sink: SyncSender<ViewMessage>,
        resume: Resume,
        failures: &Failures,
    ) -> Result<Workers, RuntimeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let read_upto = Arc::new(AtomicU64::new(0));
        let read = Arc::new(ReadProgress { read: AtomicU64::new(resume.offset), ..ReadProgress::default() });
        let read_source = Arc::clone(&read);
        // Open every reader now, so that a broken log is reported here.
        // A checkpoint's offset is where its time starts.
        let start = views.hooks.checkpoints.start();
        let mut opened = Vec::with_capacity(threads);
        for _ in 0..threads {
            let reader =
                if start > 0 { readers.open_at_time(resume.offset, start)? } else { readers.open(resume.offset)? };
            opened.push(std::sync::Mutex::new(Some(reader)));
        }
        let (built, built_answers) = std::sync::mpsc::channel::<Option<String>>();
        let built = std::sync::Mutex::new(built);
        let opened = Arc::new(opened);
        let sink = std::sync::Mutex::new(sink);
        let flag = Arc::clone(&stop);
        let sources = Arc::new(std::sync::Mutex::new(Vec::new()));
        let source_list = Arc::clone(&sources);
        let threads = threads.max(1);
        let first = cluster.first_worker(threads);
        let failures = failures.clone();
        let guards = timely::execute(cluster.config(threads), move |worker| {
            let index = worker.index();
            let local = index - first;
            // A worker that panics (a lost peer process among them) is
            // reported, so that the process stops instead of hanging.
            let _lost = Lost(failures.clone(), index);
            let reader = opened[local]
                .lock()
                .expect("no worker panics while taking its reader")
                .take()
                .expect("each worker takes its own reader once");
            let sink = sink.lock().expect("no worker panics while cloning the sink").clone();
            let readers = Arc::clone(&readers);
            let stop = Arc::clone(&flag);
            let read_upto_source = Arc::clone(&read_upto);
            let source_list = Arc::clone(&source_list);
            let changes = sink.clone();
            let views = views.clone();
            let finished = Arc::new(AtomicU64::new(0));
            let checkpoints = views.hooks.checkpoints.clone();
            let source = Source {
                readers,
                stop,
                read_upto: read_upto_source,
                sources: source_list,
                checkpoints: checkpoints.clone(),
                every_ms: resume.checkpoint_every_ms.max(1),
                every_records: resume.checkpoint_every_records.max(1),
                offsets: (local == 0).then(|| sink.clone()),
                reports: local == 0,
                read: Arc::clone(&read_source),
                finished: Arc::clone(&finished),
                threads: threads as u64,
            };
            let probe = worker.dataflow::<Time, _, _>(move |scope| {
                let events = log_source(scope, source, reader);
                coldstream_pipelines::views::from_log(events, &views).deliver(move |batch| {
                    let _ = changes.send(ViewMessage::Changes(batch));
                })
            });
            // A state that does not decode closes the sources before they read.
            let _ = built.lock().expect("no worker panics while reporting").send(checkpoints.failure());
            let mut reported = None;
            while !probe.done() {
                worker.step_or_park(Some(Duration::from_millis(100)));
                let frontier = probe.with_frontier(|f| f.first().copied());
                finished.store(frontier.unwrap_or(Time::MAX), Ordering::Release);
                if local == 0
                    && frontier != reported
                    && let Some(time) = frontier
                {
                    let _ = sink.send(ViewMessage::Frontier(time));
                    reported = frontier;
                }
            }
            if local == 0 {
                let _ = sink.send(ViewMessage::Closed(read_upto.load(Ordering::Acquire)));
            }
        })
        .map_err(RuntimeError::Start)?;
        let patience = cluster.is_multi().then_some(CLUSTER_STOP_PATIENCE);
        let workers = Workers { stop, sources, guards: Some(guards), patience, read };
        for _ in 0..threads {
            if let Ok(Some(failure)) = built_answers.recv() {
                workers.stop();
                return Err(RuntimeError::Restore(failure));
            }
        }
        Ok(workers)
    }

    /// Reads the log to its durable end, finishes every view and waits for
    /// the workers to exit. In a cluster, the views finish only once every
    /// process stops: after waiting 30 s for the others, this returns
    /// `false` and leaves the workers behind (the process is exiting; the
    /// cluster resumes from its previous checkpoint).
    pub fn stop(mut self) -> Stopped {
        self.halt()
    }

    fn halt(&mut self) -> Stopped {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(sources) = self.sources.lock() {
            for source in sources.iter() {
                let _ = source.activate();
            }
        }
        let Some(guards) = self.guards.take() else { return Stopped::Finished };
        let (joined, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let panics: Vec<String> = guards.join().into_iter().filter_map(Result::err).collect();
            let _ = joined.send(panics);
        });
        let answer = match self.patience {
            Some(patience) => done.recv_timeout(patience).ok(),
            None => done.recv().ok(),
        };
        match answer {
            None => Stopped::Abandoned,
            Some(panics) if panics.is_empty() => Stopped::Finished,
            Some(panics) => Stopped::Panicked(panics.join("; ")),
        }
    }
}

/// Records, as its worker unwinds from a panic, that the worker stopped.
struct Lost(Failures, usize);

impl Drop for Lost {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(
                "timely workers",
                format!(
                    "worker {} panicked (a process of the cluster was lost, or the worker failed); restart every process of the cluster to resume from its checkpoints",
                    self.1
                ),
            );
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What a worker's log source needs besides its reader.
struct Source {
    readers: Arc<dyn OpenReader>,
    stop: Arc<AtomicBool>,
    read_upto: Arc<AtomicU64>,
    sources: Arc<std::sync::Mutex<Vec<SyncActivator>>>,
    checkpoints: Checkpoints,
    every_ms: u64,
    every_records: u64,
    /// The process's first worker's: where checkpoint offsets are reported.
    offsets: Option<SyncSender<ViewMessage>>,
    /// Whether this is the process's first worker, which reports how far it read.
    reports: bool,
    /// Where it reports how far it has read.
    read: Arc<ReadProgress>,
    /// The views' frontier: every time before it is finished.
    finished: Arc<AtomicU64>,
    /// This process's workers, which share its reader's records when it
    /// reads a share of the log's partitions.
    threads: u64,
}

/// The log as a collection of accepted events, each with its offset and
/// at its ingest time.
fn log_source<'s>(
    scope: Scope<'s, Time>,
    source_state: Source,
    mut reader: Box<dyn LogReader>,
) -> VecCollection<'s, Time, (u64, Event)> {
    let Source {
        readers,
        stop,
        read_upto,
        sources,
        checkpoints,
        every_ms,
        every_records,
        offsets,
        reports,
        read: reading,
        finished,
        threads,
    } = source_state;
    // A share of the partitions is read by this process's workers alone,
    // and they agree on checkpoints with the other processes by time.
    let share = readers.share().is_some();
    let (index, peers) =
        if share { (scope.index() as u64 % threads, threads) } else { (scope.index() as u64, scope.peers() as u64) };
    source(scope, "EventLog", move |mut capability, info| {
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        sources.lock().expect("no worker panics while registering").push(activator.clone());
        // Whether a commit wakes the source: not while it waits out its pace.
        let armed = Arc::new(AtomicBool::new(true));
        let wakes = Arc::clone(&armed);
        readers.subscribe(Box::new(move || {
            if wakes.swap(false, Ordering::AcqRel) {
                let _ = activator.activate();
            }
        }));
        let self_activator = scope.activator_for(info.address);
        // Until when the source lets commits gather (it has asked to be
        // woken then).
        let mut paced_until: Option<std::time::Instant> = None;
        capability.downgrade(&checkpoints.start());
        // The least time a record still to read can have: the capability's.
        let mut bound = checkpoints.start();
        let mut capability = Some(capability);
        let mut records = Vec::with_capacity(READ_BATCH);
        // The events of the commit being read, given to the views together:
        // a session per event would send each in a container of its own.
        let mut commit = Vec::new();
        let mut last_time: Option<Time> = None;
        // The first offset of each time read and not yet finished.
        let mut unfinished: std::collections::VecDeque<(Time, u64)> = std::collections::VecDeque::new();
        let mut requested_at = reader.position();
        let restore_failed = {
            let checkpoints = checkpoints.clone();
            move || checkpoints.failure().is_some()
        };
        let checkpoint = move |time: Time, offset: u64| {
            checkpoints.request(time);
            if let Some(offsets) = &offsets {
                let _ = offsets.send(ViewMessage::CheckpointAt { time, offset });
            }
        };
        // On a share, the capability moving from `bound` to `to` into a new
        // interval asks for a checkpoint at the interval's start, which every
        // process's share passes: the processes take checkpoints at the same
        // times without talking. `offset` is the first record still to read.
        let crossing =
            move |bound: Time, to: Time| (share && to / every_ms > bound / every_ms).then(|| to / every_ms * every_ms);
        move |output| {
            if restore_failed() {
                capability = None;
            }
            let Some(cap) = capability.as_mut() else { return };
            // Looked at before reading: a stop seen here was asked after
            // everything acknowledged before it became durable, so this read
            // covers it. A stop asked during the read is seen next time.
            let stopping = stop.load(Ordering::SeqCst);
            if paced_until.is_some_and(|until| std::time::Instant::now() < until) && !stopping {
                return;
            }
            paced_until = None;
            // Woken by the next commit, unless what this reads starts a pace.
            armed.store(true, Ordering::Release);
            let frontier = finished.load(Ordering::Acquire);
            while unfinished.front().is_some_and(|(time, _)| *time < frontier) {
                unfinished.pop_front();
            }
            if reports {
                let mut starts = reading.starts();
                while starts.front().is_some_and(|(time, _)| *time < frontier) {
                    starts.pop_front();
                }
            }
            if let Some(&(oldest, offset)) = unfinished.front()
                && Some(oldest) != last_time
                && reader.position().saturating_sub(offset) >= MAX_READ_AHEAD
            {
                // Far enough ahead of the views: look again once they move.
                self_activator.activate_after(Duration::from_millis(1));
                return;
            }
            records.clear();
            let read = match reader.read_some(READ_BATCH, &|offset| offset % peers == index, &mut records) {
                Ok(read) => read,
                Err(error) => {
                    tracing::error!(%error, "reading the event log; retrying");
                    self_activator.activate_after(Duration::from_secs(1));
                    return;
                }
            };
            for (offset, record) in records.drain(..) {
                if last_time != Some(record.ingest_ms) {
                    // One container per commit, sent before the capability moves on.
                    output.session(&*cap).give_iterator(commit.drain(..));
                    // A record with a new time starts a commit.
                    let new_interval = last_time.is_some_and(|last| record.ingest_ms / every_ms > last / every_ms);
                    if let Some(at) = crossing(bound, record.ingest_ms) {
                        checkpoint(at, offset);
                    } else if !share && last_time.is_some() && (new_interval || offset - requested_at >= every_records)
                    {
                        checkpoint(record.ingest_ms, offset);
                        requested_at = offset;
                    }
                    cap.downgrade(&record.ingest_ms);
                    bound = record.ingest_ms;
                    last_time = Some(record.ingest_ms);
                    unfinished.push_back((record.ingest_ms, offset));
                    if reports {
                        reading.starts().push_back((record.ingest_ms, offset));
                    }
                }
                if offset % peers != index {
                    continue;
                }
                let ingest_ms = record.ingest_ms;
                match record.decode() {
                    Ok(Entry::Accepted(event)) => commit.push(((offset, event), ingest_ms, 1isize)),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(offset, %error, "skipping a log record"),
                }
            }
            output.session(&*cap).give_iterator(commit.drain(..));
            if reports {
                reading.read.store(reader.position(), Ordering::Release);
            }
            if read == READ_BATCH {
                // More may be waiting at this very time; look again soon.
                self_activator.activate();
            } else {
                if read > 0 {
                    // Let the next commits gather; a commit that lands
                    // meanwhile need not wake the source.
                    armed.store(false, Ordering::Release);
                    paced_until = Some(std::time::Instant::now() + PACE);
                    self_activator.activate_after(PACE);
                }
                // At a commit boundary: later records have later times, and
                // on a log with progress markers perhaps later still.
                let after = last_time.map(|time| time + 1).max(reader.floor()).filter(|&after| after > bound);
                if let Some(after) = after {
                    if let Some(at) = crossing(bound, after) {
                        checkpoint(at, reader.position());
                    }
                    cap.downgrade(&after);
                    bound = after;
                    if reports {
                        read_upto.store(after, Ordering::Release);
                    }
                }
                if stopping {
                    // A last checkpoint, so that a clean restart replays
                    // nothing (on a share, the processes' last times may
                    // differ, and the cluster resumes where they agree).
                    if last_time.is_some() {
                        checkpoint(bound, reader.position());
                    }
                    capability = None;
                }
            }
        }
    })
    .as_collection()
}
