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
//!
//! Checkpoints: whenever the ingest time of the records read enters a new
//! interval, or a commit starts a given number of records after the last
//! request (and once more when the workers stop), the sources ask for a
//! checkpoint at that record's time. Every source sees the same records,
//! so they agree on the times without talking; worker 0's also tells the
//! sink the offset of that record, where a restart resumes reading.

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

/// Records a source reads before yielding to the other operators.
const READ_BATCH: usize = 8192;

/// What the workers send to the view sink.
pub enum ViewMessage {
    /// Changes to one view.
    Changes(ViewBatch),
    /// Every change before this time has been sent.
    Frontier(Time),
    /// The dataflow has stopped; every change before this time has been sent.
    Closed(Time),
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
    /// Dropped last: waits for the workers to exit.
    _guards: timely::communication::WorkerGuards<()>,
}

impl Workers {
    /// Starts `threads` workers reading the log from `resume.offset`, with
    /// the views' state of `views.hooks.checkpoints`.
    pub fn start(
        threads: usize,
        views: ViewConfig,
        readers: Arc<dyn OpenReader>,
        sink: SyncSender<ViewMessage>,
        resume: Resume,
    ) -> Result<Workers, RuntimeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let read_upto = Arc::new(AtomicU64::new(0));
        // Open every reader now, so that a broken log is reported here.
        let mut opened = Vec::with_capacity(threads);
        for _ in 0..threads {
            opened.push(std::sync::Mutex::new(Some(readers.open(resume.offset)?)));
        }
        let (built, built_answers) = std::sync::mpsc::channel::<Option<String>>();
        let built = std::sync::Mutex::new(built);
        let opened = Arc::new(opened);
        let sink = std::sync::Mutex::new(sink);
        let flag = Arc::clone(&stop);
        let sources = Arc::new(std::sync::Mutex::new(Vec::new()));
        let source_list = Arc::clone(&sources);
        let config = timely::Config {
            communication: timely::CommunicationConfig::Process(threads.max(1)),
            worker: WorkerConfig::default(),
        };
        let guards = timely::execute(config, move |worker| {
            let index = worker.index();
            let reader = opened[index]
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
            let checkpoints = views.hooks.checkpoints.clone();
            let source = Source {
                readers,
                stop,
                read_upto: read_upto_source,
                sources: source_list,
                checkpoints: checkpoints.clone(),
                every_ms: resume.checkpoint_every_ms.max(1),
                every_records: resume.checkpoint_every_records.max(1),
                offsets: (index == 0).then(|| sink.clone()),
            };
            let probe = worker.dataflow::<Time, _, _>(move |scope| {
                let events = log_source(scope, source, reader);
                coldstream_pipelines::views::all(events, &views).deliver(move |batch| {
                    let _ = changes.send(ViewMessage::Changes(batch));
                })
            });
            // A state that does not decode closes the sources before they read.
            let _ = built.lock().expect("no worker panics while reporting").send(checkpoints.failure());
            let mut reported = None;
            while !probe.done() {
                worker.step_or_park(Some(Duration::from_millis(100)));
                if index == 0 {
                    let frontier = probe.with_frontier(|f| f.first().copied());
                    if frontier != reported
                        && let Some(time) = frontier
                    {
                        let _ = sink.send(ViewMessage::Frontier(time));
                        reported = frontier;
                    }
                }
            }
            if index == 0 {
                let _ = sink.send(ViewMessage::Closed(read_upto.load(Ordering::Acquire)));
            }
        })
        .map_err(RuntimeError::Start)?;
        let workers = Workers { stop, sources, _guards: guards };
        for _ in 0..threads {
            if let Ok(Some(failure)) = built_answers.recv() {
                workers.stop();
                return Err(RuntimeError::Restore(failure));
            }
        }
        Ok(workers)
    }

    /// Reads the log to its durable end, finishes every view and waits for
    /// the workers to exit.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(sources) = self.sources.lock() {
            for source in sources.iter() {
                let _ = source.activate();
            }
        }
        // The guards, dropped after this, wait for the workers to exit.
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
    /// Worker 0's: where checkpoint offsets are reported.
    offsets: Option<SyncSender<ViewMessage>>,
}

/// The log as a collection of accepted events, each at its ingest time.
fn log_source<'s>(
    scope: Scope<'s, Time>,
    source_state: Source,
    mut reader: Box<dyn LogReader>,
) -> VecCollection<'s, Time, Event> {
    let Source { readers, stop, read_upto, sources, checkpoints, every_ms, every_records, offsets } = source_state;
    let index = scope.index() as u64;
    let peers = scope.peers() as u64;
    source(scope, "EventLog", move |mut capability, info| {
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        sources.lock().expect("no worker panics while registering").push(activator.clone());
        readers.subscribe(Box::new(move || {
            let _ = activator.activate();
        }));
        let self_activator = scope.activator_for(info.address);
        capability.downgrade(&checkpoints.start());
        let mut capability = Some(capability);
        let mut records = Vec::with_capacity(READ_BATCH);
        let mut last_time: Option<Time> = None;
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
        move |output| {
            if restore_failed() {
                capability = None;
            }
            let Some(cap) = capability.as_mut() else { return };
            records.clear();
            let read = match reader.read(READ_BATCH, &mut records) {
                Ok(read) => read,
                Err(error) => {
                    tracing::error!(%error, "reading the event log; retrying");
                    self_activator.activate_after(Duration::from_secs(1));
                    return;
                }
            };
            for (offset, record) in records.drain(..) {
                if last_time != Some(record.ingest_ms) {
                    // A record with a new time starts a commit.
                    let new_interval = last_time.is_some_and(|last| record.ingest_ms / every_ms > last / every_ms);
                    if last_time.is_some() && (new_interval || offset - requested_at >= every_records) {
                        checkpoint(record.ingest_ms, offset);
                        requested_at = offset;
                    }
                    cap.downgrade(&record.ingest_ms);
                    last_time = Some(record.ingest_ms);
                }
                if offset % peers != index {
                    continue;
                }
                let ingest_ms = record.ingest_ms;
                match record.decode() {
                    Ok(Entry::Accepted(event)) => output.session(&*cap).give((event, ingest_ms, 1isize)),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(offset, %error, "skipping a log record"),
                }
            }
            if read == READ_BATCH {
                // More may be waiting at this very time; look again soon.
                self_activator.activate();
            } else {
                // At a commit boundary: later records have later times.
                if let Some(time) = last_time {
                    cap.downgrade(&(time + 1));
                    if index == 0 {
                        read_upto.store(time + 1, Ordering::Release);
                    }
                }
                if stop.load(Ordering::SeqCst) {
                    // A last checkpoint, so that a clean restart replays nothing.
                    if let Some(time) = last_time {
                        checkpoint(time + 1, reader.position());
                    }
                    capability = None;
                }
            }
        }
    })
    .as_collection()
}
