//! The embedded event log: segment files in a directory.
//!
//! Each segment is named by the offset of its first record
//! (`00000000000000000000.log`). A record is framed as
//! `len: u32 | crc32c: u32 | ingest_ms: u64 | payload`, little-endian, the
//! CRC covering the ingest time and the payload. [`EmbeddedLog::sync`]
//! flushes and fsyncs the active segment (group commit: the writer appends
//! many records, then syncs once). On open, a torn tail (the last frame
//! cut short by a crash, or a last frame whose CRC does not match, or
//! zeros to the end) is truncated, and everything before it is kept; a bad
//! frame with records after it is corruption, and the log refuses to open,
//! naming the file and the byte.
//!
//! A failed write or fsync (a full disk, an I/O error) cuts the active
//! segment back to its durable length (what the last successful sync
//! covered), so nothing that was never durable can later be read as
//! durable; the next append retries from there, so a disk that frees up
//! resumes appending without a restart.
//!
//! After every sync the writer also records the durable end (offset and
//! last ingest time) in `DURABLE`, a 20-byte file beside the segments,
//! written in place and checked by a CRC. That is what another process
//! reading the same directory ([`EmbeddedLog::follow`]: a pipeline process
//! of a cluster, beside the gateway's) goes by: bytes past it in a segment
//! may never become durable, so no reader reads past it. The file is only
//! ever behind the segments, never ahead of them.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{DurableEnd, EventLog, Footprint, LogError, LogReader, MAX_RECORD_BYTES, OpenReader, Payload, Record};

const HEADER_BYTES: usize = 16;

/// The file that records the durable end, for readers in other processes.
const DURABLE_FILE: &str = "DURABLE";

/// How often a follower looks at the durable end of the log it follows.
const FOLLOW_POLL: Duration = Duration::from_millis(2);

/// Settings of the embedded log.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_bytes: u64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig { segment_bytes: 128 << 20 }
    }
}

/// The writer of an embedded log.
pub struct EmbeddedLog {
    dir: PathBuf,
    config: EmbeddedConfig,
    active: BufWriter<File>,
    active_path: PathBuf,
    active_bytes: u64,
    end_offset: u64,
    last_ingest_ms: Option<u64>,
    shared: Arc<Shared>,
    /// Why the last write or sync failed; the next append recovers first.
    failed: Option<String>,
    /// The active segment's length at the last successful sync.
    durable_bytes: u64,
    /// The last durable record's ingest time.
    durable_last_ingest_ms: Option<u64>,
    /// Syncs still to fail on purpose (fault tests).
    failing_syncs: u32,
    /// `DURABLE`, rewritten after every sync.
    marker: File,
}

struct Shared {
    dir: PathBuf,
    /// Whether another process writes this log (a follower trims nothing).
    follower: bool,
    durable: DurableEnd,
}

fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The base offsets of the segments in `dir`, ascending.
fn segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io(format!("listing {}", dir.display()), e))?;
    let mut bases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".log")
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn fsync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(format!("fsync of directory {}", dir.display()), e))
}

/// The content of `DURABLE`: the durable end offset and the last durable
/// ingest time plus one (0 for an empty log), with their CRC.
fn encode_marker(offset: u64, ingest_plus_one: u64) -> [u8; 20] {
    let mut bytes = [0u8; 20];
    bytes[0..8].copy_from_slice(&offset.to_le_bytes());
    bytes[8..16].copy_from_slice(&ingest_plus_one.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Reads `DURABLE` in `dir`: `None` while it is missing or being rewritten.
fn read_marker(dir: &Path) -> Option<(u64, u64)> {
    let bytes = std::fs::read(dir.join(DURABLE_FILE)).ok()?;
    let bytes: [u8; 20] = bytes.as_slice().try_into().ok()?;
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4-byte slice"));
    if crc32c::crc32c(&bytes[0..16]) != crc {
        return None;
    }
    let offset = u64::from_le_bytes(bytes[0..8].try_into().expect("8-byte slice"));
    let ingest = u64::from_le_bytes(bytes[8..16].try_into().expect("8-byte slice"));
    Some((offset, ingest))
}

/// Outcome of reading one frame.
enum Frame {
    Record(Record, u64),
    End,
    Torn(String),
}

/// Reads one frame into `payload` (its earlier content is replaced, its
/// allocation kept) and checks its CRC; a whole frame comes back as a
/// record without its bytes, which stay in `payload`.
fn read_frame_into(reader: &mut impl Read, payload: &mut Vec<u8>) -> std::io::Result<Frame> {
    let mut header = [0u8; HEADER_BYTES];
    let mut filled = 0;
    while filled < HEADER_BYTES {
        let n = reader.read(&mut header[filled..])?;
        if n == 0 {
            return Ok(if filled == 0 { Frame::End } else { Frame::Torn("header cut short".into()) });
        }
        filled += n;
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4-byte slice")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4-byte slice"));
    let ingest_ms = u64::from_le_bytes(header[8..16].try_into().expect("8-byte slice"));
    if len > MAX_RECORD_BYTES {
        return Ok(Frame::Torn(format!("length {len} over the limit")));
    }
    payload.clear();
    payload.resize(len, 0);
    let mut got = 0;
    while got < len {
        let n = reader.read(&mut payload[got..])?;
        if n == 0 {
            return Ok(Frame::Torn("payload cut short".into()));
        }
        got += n;
    }
    let actual = crc32c::crc32c_append(crc32c::crc32c(&header[8..16]), payload);
    if actual != crc {
        return Ok(Frame::Torn(format!("crc {actual:08x} does not match {crc:08x}")));
    }
    Ok(Frame::Record(Record { ingest_ms, payload: Payload::Skipped }, (HEADER_BYTES + len) as u64))
}

/// Reads one frame into a record of its own.
fn read_frame(reader: &mut impl Read) -> std::io::Result<Frame> {
    let mut bytes = Vec::new();
    let mut frame = read_frame_into(reader, &mut bytes)?;
    if let Frame::Record(record, _) = &mut frame {
        record.payload = Payload::Encoded(bytes);
    }
    Ok(frame)
}

fn encode_frame(out: &mut impl Write, ingest_ms: u64, payload: &[u8]) -> std::io::Result<()> {
    let time = ingest_ms.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&time), payload);
    out.write_all(&(payload.len() as u32).to_le_bytes())?;
    out.write_all(&crc.to_le_bytes())?;
    out.write_all(&time)?;
    out.write_all(payload)
}

/// Scans a segment: its valid length, record count and last ingest time,
/// and why it stops early, if it does.
fn scan(path: &Path) -> Result<(u64, u64, Option<u64>, Option<String>), LogError> {
    let file = File::open(path).map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (mut valid, mut count, mut last) = (0u64, 0u64, None);
    loop {
        match read_frame(&mut reader).map_err(|e| LogError::io(format!("reading {}", path.display()), e))? {
            Frame::Record(record, bytes) => {
                valid += bytes;
                count += 1;
                last = Some(record.ingest_ms);
            }
            Frame::End => return Ok((valid, count, last, None)),
            Frame::Torn(reason) => return Ok((valid, count, last, Some(reason))),
        }
    }
}

impl EmbeddedLog {
    /// Opens the log in `dir`, creating it if needed, and truncates a torn tail.
    pub fn open(dir: impl AsRef<Path>, config: EmbeddedConfig) -> Result<Self, LogError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io(format!("creating {}", dir.display()), e))?;
        let mut bases = segments(&dir)?;
        if bases.is_empty() {
            File::create(dir.join(segment_name(0)))
                .map_err(|e| LogError::io(format!("creating the first segment in {}", dir.display()), e))?;
            fsync_dir(&dir)?;
            bases.push(0);
        }
        // Closed segments were fsynced before the next one was created, so
        // only the active one can have a torn tail; a reader reports any
        // damage to a closed one when it reaches it. Opening reads one
        // segment, however long the log.
        let base = *bases.last().expect("at least one segment exists");
        let active_path = dir.join(segment_name(base));
        let (valid, count, mut last_ingest_ms, torn) = scan(&active_path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active_path)
            .map_err(|e| LogError::io(format!("opening {}", active_path.display()), e))?;
        if let Some(reason) = torn {
            let len = file.metadata().map_err(|e| LogError::io("stat of the active segment", e))?.len();
            if !is_tail(&active_path, valid, len)? {
                return Err(LogError::Corrupt {
                    file: active_path.display().to_string(),
                    position: valid,
                    reason: format!(
                        "{reason}, with {} more bytes after it that were written (and may have been acknowledged) later",
                        len - valid
                    ),
                });
            }
            tracing::warn!(
                segment = %active_path.display(),
                kept_bytes = valid,
                dropped_bytes = len - valid,
                %reason,
                "truncating a torn tail left by a crash"
            );
            file.set_len(valid).map_err(|e| LogError::io(format!("truncating {}", active_path.display()), e))?;
            file.sync_all().map_err(|e| LogError::io(format!("fsync of {}", active_path.display()), e))?;
        }
        if last_ingest_ms.is_none() && bases.len() > 1 {
            last_ingest_ms = scan(&dir.join(segment_name(bases[bases.len() - 2])))?.2;
        }
        let mut file = file;
        file.seek(SeekFrom::Start(valid)).map_err(|e| LogError::io("seeking to the end of the log", e))?;
        let end_offset = base + count;
        let marker_path = dir.join(DURABLE_FILE);
        let marker = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&marker_path)
            .map_err(|e| LogError::io(format!("opening {}", marker_path.display()), e))?;
        {
            use std::os::unix::fs::FileExt;
            marker
                .write_all_at(&encode_marker(end_offset, last_ingest_ms.map_or(0, |t| t + 1)), 0)
                .map_err(|e| LogError::io(format!("writing {}", marker_path.display()), e))?;
        }
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            follower: false,
            durable: DurableEnd::new(end_offset, last_ingest_ms),
        });
        Ok(EmbeddedLog {
            dir,
            config,
            active: BufWriter::with_capacity(1 << 20, file),
            active_path,
            active_bytes: valid,
            end_offset,
            last_ingest_ms,
            shared,
            failed: None,
            durable_bytes: valid,
            durable_last_ingest_ms: last_ingest_ms,
            failing_syncs: 0,
            marker,
        })
    }

    /// Readers of the log in `dir` that another process writes: they read
    /// up to the durable end that writer records in `DURABLE`, looked at
    /// every 2 ms, and wake their subscribers when it moves. A log not
    /// created yet reads as empty until its writer starts (a warning says
    /// so). Trimming is the writer's: a follower removes nothing.
    pub fn follow(dir: impl AsRef<Path>) -> Result<Arc<dyn OpenReader>, LogError> {
        let dir = dir.as_ref().to_path_buf();
        if dir.exists() && !dir.is_dir() {
            return Err(LogError::io(
                format!("following the event log in {}", dir.display()),
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        if !dir.is_dir() {
            tracing::warn!(log = %dir.display(), "the event log does not exist yet; waiting for its writer to create it");
        }
        let (offset, ingest) = read_marker(&dir).unwrap_or((0, 0));
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            follower: true,
            durable: DurableEnd::new(offset, ingest.checked_sub(1)),
        });
        let watched: Weak<Shared> = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("log follower".into())
            .spawn(move || {
                while let Some(shared) = watched.upgrade() {
                    if let Some((offset, ingest)) = read_marker(&shared.dir)
                        && offset > shared.durable.offset()
                    {
                        shared.durable.publish(offset, ingest.checked_sub(1));
                    }
                    drop(shared);
                    std::thread::sleep(FOLLOW_POLL);
                }
            })
            .map_err(|e| LogError::io("starting the log follower thread", e))?;
        Ok(Arc::new(EmbeddedReaders(shared)))
    }

    fn fail<T>(&mut self, error: LogError) -> Result<T, LogError> {
        tracing::error!(%error, "the event log failed; it is cut back to its durable length on the next append");
        self.failed = Some(error.to_string());
        Err(error)
    }

    /// Makes the next `n` syncs fail as a failing disk would, to test what
    /// follows.
    #[doc(hidden)]
    pub fn fail_next_syncs(&mut self, n: u32) {
        self.failing_syncs = n;
    }

    /// After a failure: drops what was written since the last sync, from
    /// the buffer and from the file, and resumes at the durable end.
    fn recover(&mut self) -> Result<(), LogError> {
        let Some(reason) = self.failed.clone() else { return Ok(()) };
        let path = self.active_path.clone();
        let cut = || -> std::io::Result<File> {
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            file.set_len(self.durable_bytes)?;
            file.sync_all()?;
            file.seek(SeekFrom::Start(self.durable_bytes))?;
            Ok(file)
        };
        let file = cut().map_err(|e| {
            LogError::Failed(format!("{reason}; cutting {} back to its durable length failed: {e}", path.display()))
        })?;
        // The buffered bytes were never durable: drop them unwritten.
        let (_, _unwritten) = std::mem::replace(&mut self.active, BufWriter::with_capacity(1 << 20, file)).into_parts();
        self.end_offset = self.shared.durable.offset();
        self.active_bytes = self.durable_bytes;
        self.last_ingest_ms = self.durable_last_ingest_ms;
        self.failed = None;
        tracing::info!(segment = %path.display(), durable_end = self.end_offset, "the event log recovered; appending again");
        Ok(())
    }

    fn roll(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let path = self.dir.join(segment_name(self.end_offset));
        let file = match File::create(&path) {
            Ok(file) => file,
            Err(e) => return self.fail(LogError::io(format!("creating {}", path.display()), e)),
        };
        if let Err(e) = fsync_dir(&self.dir) {
            return self.fail(e);
        }
        self.active = BufWriter::with_capacity(1 << 20, file);
        self.active_path = path;
        self.active_bytes = 0;
        self.durable_bytes = 0;
        Ok(())
    }
}

/// Whether the bad frame at `at` in a segment of `len` bytes is its torn
/// tail: a header cut short, a frame reaching the end of the file, or
/// nothing but zeros after it. Anything else has records after it.
fn is_tail(path: &Path, at: u64, len: u64) -> Result<bool, LogError> {
    let io = |e| LogError::io(format!("reading {}", path.display()), e);
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(at)).map_err(io)?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).map_err(io)?;
    if rest.len() < HEADER_BYTES || rest.iter().all(|b| *b == 0) {
        return Ok(true);
    }
    let claimed = u32::from_le_bytes(rest[0..4].try_into().expect("4-byte slice")) as u64;
    Ok(at + HEADER_BYTES as u64 + claimed >= len)
}

impl EventLog for EmbeddedLog {
    fn append(&mut self, ingest_ms: u64, payloads: &[Vec<u8>]) -> Result<u64, LogError> {
        self.recover()?;
        if let Some(too_large) = payloads.iter().find(|p| p.len() > MAX_RECORD_BYTES) {
            return Err(LogError::TooLarge(too_large.len()));
        }
        if self.active_bytes >= self.config.segment_bytes {
            self.roll()?;
        }
        // Times never decrease, and each commit's time is above the last
        // commit's, so a reader at a commit boundary knows the time is complete.
        let unsynced = self.end_offset > self.shared.durable.offset();
        let floor = match self.last_ingest_ms {
            Some(last) if unsynced => last,
            Some(last) => last + 1,
            None => 0,
        };
        let ingest_ms = ingest_ms.max(floor);
        let first = self.end_offset;
        for payload in payloads {
            if let Err(e) = encode_frame(&mut self.active, ingest_ms, payload) {
                return self.fail(LogError::io(format!("writing {}", self.active_path.display()), e));
            }
            self.active_bytes += (HEADER_BYTES + payload.len()) as u64;
            self.end_offset += 1;
        }
        if !payloads.is_empty() {
            self.last_ingest_ms = Some(ingest_ms);
        }
        Ok(first)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        if let Some(reason) = &self.failed {
            return Err(LogError::Failed(reason.clone()));
        }
        if self.shared.durable.offset() == self.end_offset {
            return Ok(());
        }
        let injected = (self.failing_syncs > 0).then(|| {
            self.failing_syncs -= 1;
            std::io::Error::other("an injected fsync failure")
        });
        let synced = self.active.flush().and_then(|_| self.active.get_ref().sync_data());
        if let Some(e) = injected.map_or(synced.err(), Some) {
            return self.fail(LogError::io(format!("fsync of {}", self.active_path.display()), e));
        }
        self.durable_bytes = self.active_bytes;
        self.durable_last_ingest_ms = self.last_ingest_ms;
        self.shared.durable.publish(self.end_offset, self.last_ingest_ms);
        {
            use std::os::unix::fs::FileExt;
            let marker = encode_marker(self.end_offset, self.last_ingest_ms.map_or(0, |t| t + 1));
            if let Err(error) = self.marker.write_all_at(&marker, 0) {
                // The records are durable; only followers in other processes wait.
                tracing::warn!(%error, "recording the durable end in {DURABLE_FILE}");
            }
        }
        Ok(())
    }

    fn end_offset(&self) -> u64 {
        self.end_offset
    }

    fn last_ingest_ms(&self) -> Option<u64> {
        self.last_ingest_ms
    }

    fn readers(&self) -> Arc<dyn OpenReader> {
        Arc::new(EmbeddedReaders(Arc::clone(&self.shared)))
    }
}

/// Removes the closed segments of the log in `dir` that hold only records
/// before `before` and whose last record is at or before `until_ms`
/// (ingest time). The active segment is never removed. Returns how many
/// segments were removed.
fn trim(dir: &Path, before: u64, until_ms: u64) -> Result<usize, LogError> {
    let bases = segments(dir)?;
    let mut removed = 0;
    for pair in bases.windows(2) {
        let (base, next) = (pair[0], pair[1]);
        if next > before {
            break;
        }
        // The next segment's first record is no older than this one's last.
        let next_path = dir.join(segment_name(next));
        let file = File::open(&next_path).map_err(|e| LogError::io(format!("opening {}", next_path.display()), e))?;
        let first_ms = match read_frame(&mut BufReader::new(file)) {
            Ok(Frame::Record(record, _)) => record.ingest_ms,
            _ => break,
        };
        if first_ms > until_ms {
            break;
        }
        let path = dir.join(segment_name(base));
        std::fs::remove_file(&path).map_err(|e| LogError::io(format!("removing {}", path.display()), e))?;
        removed += 1;
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

/// Opens readers of an embedded log.
struct EmbeddedReaders(Arc<Shared>);

impl OpenReader for EmbeddedReaders {
    fn footprint(&self) -> Option<Footprint> {
        let dir = &self.0.dir;
        let bases = segments(dir).ok()?;
        let mut footprint = Footprint { segments: bases.len() as u64, ..Footprint::default() };
        for (i, base) in bases.iter().enumerate() {
            let Ok(meta) = std::fs::metadata(dir.join(segment_name(*base))) else { continue };
            footprint.bytes += meta.len();
            if i == 0 {
                footprint.oldest_segment_age_seconds =
                    meta.modified().ok().and_then(|at| at.elapsed().ok()).map_or(0.0, |age| age.as_secs_f64());
            }
        }
        Some(footprint)
    }

    fn open(&self, offset: u64) -> Result<Box<dyn LogReader>, LogError> {
        let durable = self.durable_offset();
        if offset > durable {
            return Err(LogError::OutOfRange { requested: offset, end: durable });
        }
        if self.0.follower && durable == 0 {
            // Nothing written yet (perhaps not even the folder): the first
            // segment is opened once records are durable.
            return Ok(Box::new(EmbeddedReader {
                shared: Arc::clone(&self.0),
                file: None,
                position: 0,
                scratch: Vec::new(),
            }));
        }
        let bases = segments(&self.0.dir)?;
        let first = bases.first().copied().unwrap_or(0);
        if offset < first {
            return Err(LogError::Trimmed { requested: offset, first });
        }
        let base = bases.iter().copied().filter(|&b| b <= offset).max().unwrap_or(0);
        let mut reader =
            EmbeddedReader { shared: Arc::clone(&self.0), file: None, position: base, scratch: Vec::new() };
        reader.open_segment(base)?;
        let mut skipped = Vec::new();
        while reader.position < offset {
            skipped.clear();
            let want = (offset - reader.position).min(4096) as usize;
            // Read and checked, without a copy of each record's bytes.
            if reader.read_some(want, &|_| false, &mut skipped)? == 0 {
                return Err(LogError::OutOfRange { requested: offset, end: reader.position });
            }
        }
        Ok(Box::new(reader))
    }

    fn durable_offset(&self) -> u64 {
        self.0.durable.offset()
    }

    fn first_offset(&self) -> Result<u64, LogError> {
        if self.0.follower && !self.0.dir.is_dir() {
            return Ok(0);
        }
        Ok(segments(&self.0.dir)?.first().copied().unwrap_or(0))
    }

    fn durable_ingest_ms(&self) -> Option<u64> {
        self.0.durable.ingest_ms()
    }

    fn subscribe(&self, wake: Box<dyn Fn() + Send + Sync>) {
        self.0.durable.subscribe(wake);
    }

    fn trim(&self, before: u64, until_ms: u64) -> Result<usize, LogError> {
        if self.0.follower {
            return Ok(0);
        }
        trim(&self.0.dir, before, until_ms)
    }
}

struct EmbeddedReader {
    shared: Arc<Shared>,
    file: Option<(PathBuf, BufReader<File>)>,
    position: u64,
    /// Where the records a reader does not want are read and checked.
    scratch: Vec<u8>,
}

impl EmbeddedReader {
    fn open_segment(&mut self, base: u64) -> Result<(), LogError> {
        let path = self.shared.dir.join(segment_name(base));
        let file = File::open(&path).map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
        self.file = Some((path, BufReader::with_capacity(1 << 20, file)));
        Ok(())
    }
}

impl LogReader for EmbeddedReader {
    fn read(&mut self, max: usize, out: &mut Vec<(u64, Record)>) -> Result<usize, LogError> {
        self.read_some(max, &|_| true, out)
    }

    /// The records `wanted` turns down are read into the reader's scratch
    /// buffer, checked and handed over without their bytes.
    fn read_some(
        &mut self,
        max: usize,
        wanted: &dyn Fn(u64) -> bool,
        out: &mut Vec<(u64, Record)>,
    ) -> Result<usize, LogError> {
        let durable = self.shared.durable.offset();
        let mut read = 0;
        while read < max && self.position < durable {
            let Some((path, file)) = self.file.as_mut() else {
                self.open_segment(self.position)?;
                continue;
            };
            let frame = if wanted(self.position) { read_frame(file) } else { read_frame_into(file, &mut self.scratch) };
            let frame = frame.map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
            match frame {
                Frame::Record(record, _) => {
                    out.push((self.position, record));
                    self.position += 1;
                    read += 1;
                }
                // Every durable record is whole: the end of this segment
                // means the next one starts here.
                Frame::End => {
                    let next = self.shared.dir.join(segment_name(self.position));
                    if !next.exists() {
                        return Err(LogError::Corrupt {
                            file: path.display().to_string(),
                            position: self.position,
                            reason: format!("ends before durable offset {durable} and no segment follows"),
                        });
                    }
                    self.open_segment(self.position)?;
                }
                Frame::Torn(reason) => {
                    return Err(LogError::Corrupt {
                        file: path.display().to_string(),
                        position: self.position,
                        reason,
                    });
                }
            }
        }
        if self.position == durable
            && let Some((path, file)) = self.file.as_mut()
        {
            // Bytes read ahead past the durable end may be cut back and
            // written again (a failed fsync): drop them, read them anew.
            let io = |e| LogError::io(format!("seeking in {}", path.display()), e);
            let at = file.stream_position().map_err(io)?;
            // A seek always empties the buffer.
            file.seek(SeekFrom::Start(at)).map_err(io)?;
        }
        Ok(read)
    }

    fn position(&self) -> u64 {
        self.position
    }
}
