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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use coldstream_pipelines::views::{ViewBatch, ViewConfig};
use coldstream_pipelines::{Event, Time};
use coldstream_sources::log::{LogReader, OpenReader};
use coldstream_sources::proto::{LogEntry, log_entry::Entry};
use differential_dataflow::AsCollection;
use differential_dataflow::collection::VecCollection;
use prost::Message;
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
}

/// The running workers.
pub struct Workers {
    stop: Arc<AtomicBool>,
    sources: Arc<std::sync::Mutex<Vec<SyncActivator>>>,
    guards: timely::communication::WorkerGuards<()>,
}

impl Workers {
    /// Starts `threads` workers reading the log from its start.
    pub fn start(
        threads: usize,
        views: ViewConfig,
        readers: Arc<dyn OpenReader>,
        sink: SyncSender<ViewMessage>,
    ) -> Result<Workers, RuntimeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let read_upto = Arc::new(AtomicU64::new(0));
        // Open every reader now, so that a broken log is reported here.
        let mut opened = Vec::with_capacity(threads);
        for _ in 0..threads {
            opened.push(std::sync::Mutex::new(Some(readers.open(0)?)));
        }
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
            let probe = worker.dataflow::<Time, _, _>(move |scope| {
                let events = log_source(scope, readers, reader, stop, read_upto_source, source_list);
                coldstream_pipelines::views::all(events, &views).deliver(move |batch| {
                    let _ = changes.send(ViewMessage::Changes(batch));
                })
            });
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
        Ok(Workers { stop, sources, guards })
    }

    /// Reads the log to its durable end, finishes every view and waits for
    /// the workers to exit.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for source in self.sources.lock().expect("no worker panics while registering").iter() {
            let _ = source.activate();
        }
        drop(self.guards);
    }
}

/// The log as a collection of accepted events, each at its ingest time.
fn log_source<'s>(
    scope: Scope<'s, Time>,
    readers: Arc<dyn OpenReader>,
    mut reader: Box<dyn LogReader>,
    stop: Arc<AtomicBool>,
    read_upto: Arc<AtomicU64>,
    sources: Arc<std::sync::Mutex<Vec<SyncActivator>>>,
) -> VecCollection<'s, Time, Event> {
    let index = scope.index() as u64;
    let peers = scope.peers() as u64;
    source(scope, "EventLog", move |capability, info| {
        let activator = scope.worker().sync_activator_for(info.address.to_vec());
        sources.lock().expect("no worker panics while registering").push(activator.clone());
        readers.subscribe(Box::new(move || {
            let _ = activator.activate();
        }));
        let self_activator = scope.activator_for(info.address);
        let mut capability = Some(capability);
        let mut records = Vec::with_capacity(READ_BATCH);
        let mut last_time: Option<Time> = None;
        move |output| {
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
                    cap.downgrade(&record.ingest_ms);
                    last_time = Some(record.ingest_ms);
                }
                if offset % peers != index {
                    continue;
                }
                match LogEntry::decode(record.payload.as_slice()) {
                    Ok(LogEntry { entry: Some(Entry::Accepted(wire)) }) => match coldstream_sources::convert::decode(&wire) {
                        Ok(event) => output.session(&*cap).give((event, record.ingest_ms, 1isize)),
                        Err(rejection) => {
                            tracing::warn!(offset, reason = %rejection.message, "skipping an undecodable event in the log")
                        }
                    },
                    Ok(_) => {}
                    Err(error) => tracing::warn!(offset, %error, "skipping an undecodable log record"),
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
                    capability = None;
                }
            }
        }
    })
    .as_collection()
}
