//! The outbox: every message not yet acknowledged, on disk.
//!
//! One append-only file, `webhooks/outbox.log`, of frames `[length u32 LE]
//! [crc32c u32 LE][JSON record]`. Enqueued messages are fsynced before
//! they count; done marks are handed to the OS at once (a killed process
//! loses none) and reach the disk with the next fsync, so a power loss
//! may lose the last few, and those messages are sent again, with the
//! same ids, after the restart. A record
//! enqueues a message, marks one done (delivered or dead-lettered), or
//! states up to which logical time the view changes have been turned into
//! messages. On open, the file is replayed (a torn or corrupt tail, left by
//! a crash mid-write, is cut off), and what was enqueued and not done is
//! pending again, in its original order. Once most of the file is done it
//! is rewritten with only the pending messages' frames, copied as they are
//! (written aside, fsynced, renamed over).
//!
//! Memory holds a [`Pending`] per message: its id, key, type, time and
//! where its frame is in the file (48 bytes and one string); the body
//! stays on disk and is read back ([`Bodies::read`]) when the message is
//! sent, so a full outbox does not hold the bodies it keeps.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// A message in the outbox, without its body: what the outbox and its
/// endpoint's dispatcher hold while it waits. Shared between the two;
/// the outbox marks it done.
#[derive(Debug)]
pub struct Pending {
    /// The id, the key and the type, one after the other.
    text: Box<str>,
    key_at: u32,
    kind_at: u32,
    /// Who receives it.
    pub endpoint: Endpoint,
    /// The logical time of the change.
    pub time: Time,
    /// Where its frame starts in the file (a compaction moves it; read and
    /// written under the [`Bodies`] lock, with the file it points into).
    at: AtomicU64,
    /// The frame's JSON length.
    len: u32,
    /// Delivered or dead-lettered, durably.
    done: AtomicBool,
}

impl Pending {
    pub(crate) fn new(message: &Message, at: u64, len: u32) -> Pending {
        let text = format!("{}{}{}", message.id, message.key, message.kind).into_boxed_str();
        Pending {
            key_at: message.id.len() as u32,
            kind_at: (message.id.len() + message.key.len()) as u32,
            text,
            endpoint: message.endpoint,
            time: message.time,
            at: AtomicU64::new(at),
            len,
            done: AtomicBool::new(false),
        }
    }

    /// `webhook-id`.
    pub fn id(&self) -> &str {
        &self.text[..self.key_at as usize]
    }

    /// Messages with the same key are delivered in order.
    pub fn key(&self) -> &str {
        &self.text[self.key_at as usize..self.kind_at as usize]
    }

    /// The event type, e.g. `restock.opened`.
    pub fn kind(&self) -> &str {
        &self.text[self.kind_at as usize..]
    }

    /// See [`Message::may_be_superseded`].
    pub fn may_be_superseded(&self) -> bool {
        self.kind() == "restock.updated"
    }

    /// Whether it is done (delivered or dead-lettered, durably).
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// Reads pending messages' bodies back from the outbox file; shared by the
/// dispatchers, which read each message as they send it.
#[derive(Debug)]
pub struct Bodies {
    path: PathBuf,
    /// The file the messages' offsets point into: replaced, with every
    /// offset, when the outbox is rewritten.
    file: Mutex<Arc<File>>,
}

impl Bodies {
    /// The whole message, read from its frame in the file.
    pub fn read(&self, pending: &Pending) -> Result<Message, OutboxError> {
        let frame = self.frame(pending)?;
        let invalid = |what: &str| OutboxError {
            path: self.path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("message {}: {what}", pending.id())),
        };
        let Some(json) = checked(&frame).filter(|json| json.len() == pending.len as usize) else {
            return Err(invalid("its frame in the file does not check"));
        };
        match serde_json::from_slice(json) {
            Ok(Record::Enqueued(message)) if message.id == pending.id() => Ok(message),
            _ => Err(invalid("its frame in the file holds another record")),
        }
    }

    /// The message's frame as it is in the file, header included.
    fn frame(&self, pending: &Pending) -> Result<Vec<u8>, OutboxError> {
        let (file, at) = {
            let file = self.file.lock().expect("outbox file lock");
            (Arc::clone(&file), pending.at.load(Ordering::Relaxed))
        };
        let mut frame = vec![0; 8 + pending.len as usize];
        file.read_exact_at(&mut frame, at)
            .map_err(|source| OutboxError { path: self.path.display().to_string(), source })?;
        Ok(frame)
    }
}

/// The outbox of one data directory.
pub struct Outbox {
    path: PathBuf,
    file: BufWriter<File>,
    /// The file's length, where the next frame goes.
    end: u64,
    bodies: Arc<Bodies>,
    /// Enqueued, in order, each shared with its endpoint's dispatcher;
    /// those marked done are not yet at the front.
    pending: VecDeque<Arc<Pending>>,
    /// How many in `pending` are done.
    done_in_queue: usize,
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
        let total = bytes.len() as u64;
        let (records, valid) = frames(&bytes);
        drop(bytes);
        if valid < total {
            tracing::warn!(path = %path.display(), cut = total - valid, "cutting a torn tail off the webhook outbox");
            let file = OpenOptions::new().write(true).open(&path).map_err(error)?;
            file.set_len(valid).and_then(|_| file.sync_all()).map_err(error)?;
        }
        let mut enqueued = Vec::new();
        let mut done = HashSet::new();
        let mut covered = 0;
        for (record, at, len) in records {
            match record {
                Record::Enqueued(message) => enqueued.push(Pending::new(&message, at, len)),
                Record::Done(id) => {
                    done.insert(id);
                }
                Record::Covered(time) => covered = covered.max(time),
            }
        }
        let dead_records = enqueued.iter().filter(|p| done.contains(p.id())).count() + done.len();
        let pending: VecDeque<Arc<Pending>> =
            enqueued.into_iter().filter(|p| !done.contains(p.id())).map(Arc::new).collect();
        let mut per_fridge = HashMap::new();
        for message in &pending {
            *per_fridge.entry((message.endpoint, fridge_of(message.key()).to_owned())).or_insert(0) += 1;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(error)?;
        let reader = File::open(&path).map_err(error)?;
        let bodies = Arc::new(Bodies { path: path.clone(), file: Mutex::new(Arc::new(reader)) });
        let mut outbox = Outbox {
            path,
            file: BufWriter::new(file),
            end: valid,
            bodies,
            pending,
            done_in_queue: 0,
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
    pub fn pending(&self) -> impl Iterator<Item = &Arc<Pending>> {
        self.pending.iter().filter(|m| !m.is_done())
    }

    /// The pending messages in full, oldest first (their bodies read from
    /// the file).
    pub fn messages(&self) -> Result<Vec<Message>, OutboxError> {
        self.pending().map(|pending| self.bodies.read(pending)).collect()
    }

    /// Where the dispatchers read the bodies of the messages they send.
    pub fn bodies(&self) -> Arc<Bodies> {
        Arc::clone(&self.bodies)
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
        self.pending.len() - self.done_in_queue
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
    /// `covered` are all in; returns them as they now wait, for their
    /// dispatchers.
    pub fn enqueue(&mut self, messages: &[Arc<Message>], covered: Time) -> Result<Vec<Arc<Pending>>, OutboxError> {
        let mut enqueued = Vec::with_capacity(messages.len());
        for message in messages {
            let at = self.end;
            let len = self.write(&RecordRef::Enqueued(message))?;
            enqueued.push(Arc::new(Pending::new(message, at, len)));
        }
        if covered > self.covered {
            self.write(&RecordRef::Covered(covered))?;
            self.covered = covered;
        }
        self.sync()?;
        for pending in &enqueued {
            *self.per_fridge.entry((pending.endpoint, fridge_of(pending.key()).to_owned())).or_insert(0) += 1;
            self.pending.push_back(Arc::clone(pending));
        }
        Ok(enqueued)
    }

    /// Marks messages done (delivered or dead-lettered): written to the
    /// OS, not fsynced (see the module's notes). One that is done already
    /// (a dispatcher that was seeded from the outbox and also handed the
    /// message may report it twice) is no change.
    pub fn done(&mut self, messages: &[Arc<Pending>]) -> Result<(), OutboxError> {
        let mut marked = 0;
        for message in messages {
            if message.done.swap(true, Ordering::AcqRel) {
                continue;
            }
            if let Err(error) = self.write(&RecordRef::Done(message.id())) {
                message.done.store(false, Ordering::Release);
                return Err(error);
            }
            marked += 1;
            let key = (message.endpoint, fridge_of(message.key()).to_owned());
            if let Some(count) = self.per_fridge.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.per_fridge.remove(&key);
                }
            }
        }
        // An fsync here would hold the outbox, and the view sink enqueuing
        // into it, for a disk write that only spares redeliveries after a
        // power loss.
        self.flush()?;
        self.done_in_queue += marked;
        self.dead_records += 2 * marked;
        while self.pending.front().is_some_and(|m| m.is_done()) {
            self.pending.pop_front();
            self.done_in_queue -= 1;
        }
        self.compact_if_worth_it()
    }

    /// Appends one record; returns its JSON length.
    fn write(&mut self, record: &RecordRef<'_>) -> Result<u32, OutboxError> {
        let frame = encode(record);
        self.file.write_all(&frame).map_err(|source| self.error(source))?;
        self.end += frame.len() as u64;
        Ok((frame.len() - 8) as u32)
    }

    /// Hands what is buffered to the OS.
    fn flush(&mut self) -> Result<(), OutboxError> {
        self.file.flush().map_err(|source| self.error(source))
    }

    /// Hands what is buffered to the OS and waits for the disk.
    fn sync(&mut self) -> Result<(), OutboxError> {
        self.flush()?;
        self.file.get_ref().sync_data().map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> OutboxError {
        OutboxError { path: self.path.display().to_string(), source }
    }

    /// Rewrites the file with only what is pending once most of it is done:
    /// each pending message's frame is copied as it is, one at a time.
    fn compact_if_worth_it(&mut self) -> Result<(), OutboxError> {
        if self.dead_records < 10_000 || self.dead_records < 4 * self.pending_len() {
            return Ok(());
        }
        let aside = self.path.with_extension("log.tmp");
        let error = |source| OutboxError { path: aside.display().to_string(), source };
        let mut out = BufWriter::new(File::create(&aside).map_err(error)?);
        self.pending.retain(|m| !m.is_done());
        self.done_in_queue = 0;
        let mut moved = Vec::with_capacity(self.pending.len());
        let mut end = 0;
        for pending in &self.pending {
            let frame = self.bodies.frame(pending)?;
            out.write_all(&frame).map_err(error)?;
            moved.push(end);
            end += frame.len() as u64;
        }
        let covered = encode(&RecordRef::Covered(self.covered));
        out.write_all(&covered).and_then(|_| out.flush()).map_err(error)?;
        end += covered.len() as u64;
        out.get_ref().sync_all().map_err(error)?;
        std::fs::rename(&aside, &self.path).map_err(error)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(error)?;
        }
        let file = OpenOptions::new().append(true).open(&self.path).map_err(|source| self.error(source))?;
        let reader = File::open(&self.path).map_err(|source| self.error(source))?;
        {
            let mut current = self.bodies.file.lock().expect("outbox file lock");
            for (pending, at) in self.pending.iter().zip(moved) {
                pending.at.store(at, Ordering::Relaxed);
            }
            *current = Arc::new(reader);
        }
        self.file = BufWriter::new(file);
        self.end = end;
        self.dead_records = 0;
        Ok(())
    }
}

/// The fridge a message is about: its key's first part.
pub fn fridge_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(fridge, _)| fridge)
}

/// The records of a file, each with where its frame starts and its JSON
/// length, and the length of the file's valid prefix.
fn frames(bytes: &[u8]) -> (Vec<(Record, u64, u32)>, u64) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(json) = checked(&bytes[at..]) {
        let Ok(record) = serde_json::from_slice(json) else { break };
        records.push((record, at as u64, json.len() as u32));
        at += 8 + json.len();
    }
    (records, at as u64)
}

/// A record's frame: its JSON's length and CRC-32C (little-endian u32
/// each), then the JSON.
fn encode(record: &RecordRef<'_>) -> Vec<u8> {
    // The JSON is written in place after room for the header, into a
    // buffer sized for it: no growth copies, no second copy.
    let mut frame = Vec::with_capacity(8 + record.json_len_hint());
    frame.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut frame, record).expect("outbox records serialize");
    let (header, json) = frame.split_at_mut(8);
    header[..4].copy_from_slice(&(json.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32c::crc32c(json).to_le_bytes());
    frame
}

impl RecordRef<'_> {
    /// About the length of the record's JSON: its strings, a quarter more
    /// for the body's escaped quotes, and the field names.
    fn json_len_hint(&self) -> usize {
        match self {
            RecordRef::Enqueued(m) => 128 + m.id.len() + m.key.len() + m.kind.len() + m.body.len() * 5 / 4,
            RecordRef::Done(id) => 16 + id.len(),
            RecordRef::Covered(_) => 32,
        }
    }
}

/// The JSON of the frame `bytes` start with, if it is whole and its CRC
/// checks.
fn checked(bytes: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let json = bytes.get(8..8 + len)?;
    (crc32c::crc32c(json) == crc).then_some(json)
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

    fn ids(outbox: &Outbox) -> Vec<&str> {
        outbox.pending().map(|m| m.id()).collect()
    }

    /// A frame is the record's JSON behind its length and CRC, and the
    /// buffer it is written into is large enough from the start.
    #[test]
    fn a_frame_is_length_crc_and_json_in_one_buffer_sized_for_it() {
        let mut order = (*message(7)).clone();
        order.body = format!(
            "{{\"type\":\"restock.opened\",\"data\":{{\"lines\":[{}]}}}}",
            "{\"sku\":\"SKU-1\",\"qty\":3},".repeat(40)
        );
        for record in [RecordRef::Enqueued(&order), RecordRef::Done("msg_7"), RecordRef::Covered(u64::MAX)] {
            let frame = encode(&record);
            let json = serde_json::to_vec(&record).unwrap();
            assert_eq!(checked(&frame), Some(json.as_slice()));
            assert_eq!(frame.len(), 8 + json.len());
            assert!(json.len() <= record.json_len_hint(), "{} > {}", json.len(), record.json_len_hint());
        }
    }

    #[test]
    fn pending_messages_survive_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let enqueued = outbox.enqueue(&(1..=5).map(message).collect::<Vec<_>>(), 10).unwrap();
        outbox.done(&[Arc::clone(&enqueued[0]), Arc::clone(&enqueued[2])]).unwrap();
        drop(outbox);
        // A crash in the middle of the next append leaves half a frame.
        let path = dir.path().join("outbox.log");
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(file);

        let mut outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(ids(&outbox), ["msg_2", "msg_4", "msg_5"]);
        assert_eq!(outbox.covered(), 10);
        assert_eq!(outbox.pending_len(), 3);
        assert_eq!(outbox.messages().unwrap(), [2, 4, 5].map(|n| Message::clone(&message(n))));
        // Appends after the cut land where the torn frame was.
        outbox.enqueue(&[message(6)], 11).unwrap();
        let sixth = outbox.pending().last().cloned().unwrap();
        assert_eq!(outbox.bodies().read(&sixth).unwrap(), *message(6));
        drop(outbox);
        assert_eq!(ids(&Outbox::open(dir.path()).unwrap()), ["msg_2", "msg_4", "msg_5", "msg_6"]);
    }

    #[test]
    fn marking_a_message_done_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let enqueued = outbox.enqueue(&(1..=3).map(message).collect::<Vec<_>>(), 3).unwrap();
        let [first, _, third] = [0, 1, 2].map(|i| Arc::clone(&enqueued[i]));
        outbox.done(&[Arc::clone(&first), Arc::clone(&first)]).unwrap();
        outbox.done(std::slice::from_ref(&first)).unwrap();
        assert_eq!(outbox.pending_len(), 2);
        outbox.done(std::slice::from_ref(&third)).unwrap();
        outbox.done(&[third]).unwrap();
        assert_eq!(outbox.pending_len(), 1);
        assert_eq!(ids(&outbox), ["msg_2"]);
        assert_eq!(outbox.pending_of(Endpoint::Alerts, "k2"), 1);
        assert_eq!(outbox.pending_of(Endpoint::Alerts, "k1"), 0);
        drop(outbox);
        assert_eq!(ids(&Outbox::open(dir.path()).unwrap()), ["msg_2"]);
    }

    #[test]
    fn a_mostly_done_file_is_rewritten_with_what_is_pending_and_bodies_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let enqueued = outbox.enqueue(&(0..12_000).map(message).collect::<Vec<_>>(), 12_000).unwrap();
        let bodies = outbox.bodies();
        // Every other one of the first 11,980 is done, then the rest of them.
        let (evens, odds): (Vec<_>, Vec<_>) = enqueued[..11_980].iter().cloned().partition(|m| m.time % 2 == 0);
        outbox.done(&evens).unwrap();
        let before = std::fs::metadata(dir.path().join("outbox.log")).unwrap().len();
        outbox.done(&odds).unwrap();
        let size = std::fs::metadata(dir.path().join("outbox.log")).unwrap().len();
        assert!(size < 10_000 && size < before / 50, "{size} bytes after compaction, {before} before");
        // The dispatchers' copies follow the rewrite.
        for (n, pending) in (11_980..12_000).zip(&enqueued[11_980..]) {
            assert_eq!(bodies.read(pending).unwrap(), *message(n));
        }
        outbox.enqueue(&[message(12_000)], 12_001).unwrap();
        assert_eq!(outbox.messages().unwrap().len(), 21);
        drop(outbox);
        let outbox = Outbox::open(dir.path()).unwrap();
        assert_eq!(outbox.pending_len(), 21);
        assert_eq!(outbox.covered(), 12_001);
        assert_eq!(
            outbox.messages().unwrap(),
            (11_980..=12_000).map(|n| Message::clone(&message(n))).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_body_damaged_on_disk_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let enqueued = outbox.enqueue(&(1..=2).map(message).collect::<Vec<_>>(), 2).unwrap();
        let path = dir.path().join("outbox.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let second = enqueued[1].at.load(Ordering::Relaxed) as usize;
        bytes[second + 20] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(outbox.bodies().read(&enqueued[0]).unwrap(), *message(1));
        let error = outbox.bodies().read(&enqueued[1]).unwrap_err().to_string();
        assert!(error.contains("msg_2") && error.contains("does not check"), "{error}");
    }
}
