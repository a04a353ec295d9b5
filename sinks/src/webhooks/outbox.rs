//! The outbox: every message not yet acknowledged, on disk.
//!
//! One append-only file, `webhooks/outbox.log`, of frames `[length u32 LE]
//! [crc32c u32 LE][JSON record]`, fsynced after every append. A record
//! enqueues a message, marks one done (delivered or dead-lettered), or
//! states up to which logical time the view changes have been turned into
//! messages. On open, the file is replayed (a torn or corrupt tail, left by
//! a crash mid-write, is cut off), and what was enqueued and not done is
//! pending again, in its original order. Once most of the file is done it
//! is rewritten with only the pending messages (written aside, fsynced,
//! renamed over).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coldstream_pipelines::Time;
use serde::{Deserialize, Serialize};

use super::events::{Endpoint, Message};

/// A line of the outbox file.
#[derive(Debug, Deserialize)]
enum Record {
    Enqueued(Message),
    Done(String),
    Covered(Time),
}

/// A line of the outbox file, as written: the same JSON as [`Record`],
/// from borrowed parts.
#[derive(Serialize)]
enum RecordRef<'a> {
    Enqueued(&'a Message),
    Done(&'a str),
    Covered(Time),
}

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
#[error("webhook outbox {path}: {source}")]
pub struct OutboxError {
    /// The file (or folder) that failed.
    pub(crate) path: String,
    #[source]
    pub(crate) source: std::io::Error,
}

/// The outbox of one data directory.
pub struct Outbox {
    path: PathBuf,
    file: BufWriter<File>,
    /// Enqueued, in order; those in `done` are done but not yet at the front.
    /// Each is shared with its endpoint's dispatcher.
    pending: VecDeque<Arc<Message>>,
    /// The ids in `pending`, with the endpoint and fridge of each.
    ids: HashMap<String, (Endpoint, String)>,
    /// Ids in `pending` that are done: always a subset of `ids`.
    done: HashSet<String>,
    /// Messages pending (not done) per endpoint and fridge.
    per_fridge: HashMap<(Endpoint, String), usize>,
    /// Records in the file that are done (what a rewrite would drop).
    dead_records: usize,
    covered: Time,
    /// Messages this process marked done unsent, superseded by a later one.
    superseded: u64,
}

impl Outbox {
    /// Opens (or creates) `dir/outbox.log` and replays it.
    pub fn open(dir: &Path) -> Result<Outbox, OutboxError> {
        let path = dir.join("outbox.log");
        let error = |source| OutboxError { path: path.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(error)?;
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(error)?;
        }
        let (records, valid) = frames(&bytes);
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), cut = bytes.len() - valid, "cutting a torn tail off the webhook outbox");
            let file = OpenOptions::new().write(true).open(&path).map_err(error)?;
            file.set_len(valid as u64).and_then(|_| file.sync_all()).map_err(error)?;
        }
        let mut pending = Vec::new();
        let mut done = HashSet::new();
        let mut covered = 0;
        for record in records {
            match record {
                Record::Enqueued(message) => pending.push(Arc::new(message)),
                Record::Done(id) => {
                    done.insert(id);
                }
                Record::Covered(time) => covered = covered.max(time),
            }
        }
        let dead_records = pending.iter().filter(|m| done.contains(&m.id)).count() + done.len();
        let pending: VecDeque<Arc<Message>> = pending.into_iter().filter(|m| !done.contains(&m.id)).collect();
        // From here on `done` holds only ids still in `pending`.
        let done = HashSet::new();
        let ids = pending.iter().map(|m| (m.id.clone(), (m.endpoint, fridge_of(&m.key).to_owned()))).collect();
        let per_fridge = count_per_fridge(&pending);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(error)?;
        let mut outbox = Outbox {
            path,
            file: BufWriter::new(file),
            pending,
            ids,
            done,
            per_fridge,
            dead_records,
            covered,
            superseded: 0,
        };
        outbox.compact_if_worth_it()?;
        Ok(outbox)
    }

    /// Up to which logical time view changes are in the outbox: changes at
    /// earlier times must not be enqueued again.
    pub fn covered(&self) -> Time {
        self.covered
    }

    /// Messages enqueued and not yet done, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Arc<Message>> {
        self.pending.iter().filter(|m| !self.done.contains(&m.id))
    }

    /// Counts `n` messages done without being sent: a later message of
    /// their key superseded them.
    pub fn count_superseded(&mut self, n: u64) {
        self.superseded += n;
    }

    /// Messages this process skipped because a later one superseded them.
    pub fn superseded(&self) -> u64 {
        self.superseded
    }

    /// How many messages are pending.
    pub fn pending_len(&self) -> usize {
        self.pending.len() - self.done.len()
    }

    /// How many messages for `endpoint` are pending.
    pub fn pending_for(&self, endpoint: Endpoint) -> usize {
        self.per_fridge.iter().filter(|((e, _), _)| *e == endpoint).map(|(_, n)| n).sum()
    }

    /// How many messages for `endpoint` about `fridge` are pending.
    pub fn pending_of(&self, endpoint: Endpoint, fridge: &str) -> usize {
        self.per_fridge.get(&(endpoint, fridge.to_owned())).copied().unwrap_or(0)
    }

    /// Durably enqueues `messages` and records that changes before
    /// `covered` are all in.
    pub fn enqueue(&mut self, messages: &[Arc<Message>], covered: Time) -> Result<(), OutboxError> {
        for message in messages {
            self.write(&RecordRef::Enqueued(message))?;
        }
        if covered > self.covered {
            self.write(&RecordRef::Covered(covered))?;
            self.covered = covered;
        }
        self.sync()?;
        for message in messages {
            let key = (message.endpoint, fridge_of(&message.key).to_owned());
            *self.per_fridge.entry(key.clone()).or_insert(0) += 1;
            self.ids.insert(message.id.clone(), key);
            self.pending.push_back(Arc::clone(message));
        }
        Ok(())
    }

    /// Durably marks messages done (delivered or dead-lettered). An id that
    /// is not pending (done already: a dispatcher that was seeded from the
    /// outbox and also handed the message may report it twice) is no change.
    pub fn done(&mut self, ids: &[String]) -> Result<(), OutboxError> {
        let mut marked = 0;
        for id in ids {
            if !self.ids.contains_key(id) || self.done.contains(id) {
                continue;
            }
            self.write(&RecordRef::Done(id))?;
            self.done.insert(id.clone());
            marked += 1;
            if let Some(key) = self.ids.get(id)
                && let Some(count) = self.per_fridge.get_mut(key)
            {
                *count -= 1;
                if *count == 0 {
                    self.per_fridge.remove(key);
                }
            }
        }
        self.sync()?;
        self.dead_records += 2 * marked;
        while self.pending.front().is_some_and(|m| self.done.contains(&m.id)) {
            if let Some(message) = self.pending.pop_front() {
                self.done.remove(&message.id);
                self.ids.remove(&message.id);
            }
        }
        self.compact_if_worth_it()
    }

    fn write(&mut self, record: &RecordRef<'_>) -> Result<(), OutboxError> {
        let json = serde_json::to_vec(record).expect("outbox records serialize");
        let mut frame = Vec::with_capacity(json.len() + 8);
        frame.extend_from_slice(&(json.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        frame.extend_from_slice(&json);
        self.file.write_all(&frame).map_err(|source| self.error(source))
    }

    fn sync(&mut self) -> Result<(), OutboxError> {
        self.file.flush().and_then(|_| self.file.get_ref().sync_data()).map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> OutboxError {
        OutboxError { path: self.path.display().to_string(), source }
    }

    /// Rewrites the file with only what is pending once most of it is done.
    fn compact_if_worth_it(&mut self) -> Result<(), OutboxError> {
        if self.dead_records < 10_000 || self.dead_records < 4 * self.pending_len() {
            return Ok(());
        }
        let aside = self.path.with_extension("log.tmp");
        let error = |source| OutboxError { path: aside.display().to_string(), source };
        let mut out = BufWriter::new(File::create(&aside).map_err(error)?);
        let live: Vec<Arc<Message>> = self.pending().cloned().collect();
        let mut frames = Vec::new();
        for record in live.iter().map(|m| RecordRef::Enqueued(m)).chain([RecordRef::Covered(self.covered)]) {
            let json = serde_json::to_vec(&record).expect("outbox records serialize");
            frames.extend_from_slice(&(json.len() as u32).to_le_bytes());
            frames.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
            frames.extend_from_slice(&json);
        }
        out.write_all(&frames).and_then(|_| out.flush()).map_err(error)?;
        out.get_ref().sync_all().map_err(error)?;
        std::fs::rename(&aside, &self.path).map_err(error)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(error)?;
        }
        let file = OpenOptions::new().append(true).open(&self.path).map_err(|source| self.error(source))?;
        self.file = BufWriter::new(file);
        self.ids = live.iter().map(|m| (m.id.clone(), (m.endpoint, fridge_of(&m.key).to_owned()))).collect();
        self.pending = live.into();
        self.per_fridge = count_per_fridge(&self.pending);
        self.done.clear();
        self.dead_records = 0;
        Ok(())
    }
}

/// The fridge a message is about: its key's first part.
pub fn fridge_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(fridge, _)| fridge)
}

fn count_per_fridge(pending: &VecDeque<Arc<Message>>) -> HashMap<(Endpoint, String), usize> {
    let mut counts = HashMap::new();
    for message in pending {
        *counts.entry((message.endpoint, fridge_of(&message.key).to_owned())).or_insert(0) += 1;
    }
    counts
}

/// The records of a file and the length of its valid prefix.
fn frames(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(body) = bytes.get(at + 8..at + 8 + len) else { break };
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(record) = serde_json::from_slice(body) else { break };
        records.push(record);
        at += 8 + len;
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::events::Endpoint;

    fn message(n: u64) -> Arc<Message> {
        Arc::new(Message {
            id: format!("msg_{n}"),
            endpoint: Endpoint::Alerts,
            key: format!("k{}", n % 3),
            kind: "inventory.negative".into(),
            time: n,
            body: format!("{{\"n\":{n}}}"),
        })
    }

    #[test]
    fn pending_messages_survive_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        outbox.enqueue(&(1..=5).map(message).collect::<Vec<_>>(), 10).unwrap();
        outbox.done(&["msg_1".into(), "msg_3".into()]).unwrap();
        drop(outbox);
        // A crash in the middle of the next append leaves half a frame.
        let path = dir.path().join("outbox.log");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(file);

        let outbox = Outbox::open(dir.path()).unwrap();
        let ids: Vec<&str> = outbox.pending().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["msg_2", "msg_4", "msg_5"]);
        assert_eq!(outbox.covered(), 10);
        assert_eq!(outbox.pending_len(), 3);
    }

    #[test]
    fn marking_a_message_done_twice_or_one_never_enqueued_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        outbox.enqueue(&(1..=3).map(message).collect::<Vec<_>>(), 3).unwrap();
        outbox.done(&["msg_1".into(), "msg_1".into()]).unwrap();
        outbox.done(&["msg_1".into(), "msg_9".into()]).unwrap();
        assert_eq!(outbox.pending_len(), 2);
        outbox.done(&["msg_3".into()]).unwrap();
        outbox.done(&["msg_3".into()]).unwrap();
        assert_eq!(outbox.pending_len(), 1);
        assert_eq!(outbox.pending().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["msg_2"]);
    }

    #[test]
    fn a_mostly_done_file_is_rewritten_with_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        outbox.enqueue(&(0..12_000).map(message).collect::<Vec<_>>(), 12_000).unwrap();
        let ids: Vec<String> = (0..11_990).map(|n| format!("msg_{n}")).collect();
        outbox.done(&ids).unwrap();
        let size = std::fs::metadata(dir.path().join("outbox.log")).unwrap().len();
        assert!(size < 10_000, "{size} bytes after compaction");
        drop(outbox);
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.pending_len(), 10);
        assert_eq!(outbox.covered(), 12_000);
    }
}
