//! Checkpoints on disk: what a restart starts from instead of the log's
//! first record.
//!
//! A checkpoint holds, for one logical time `T`, the state of every
//! per-fridge operator (see `coldstream_pipelines::checkpoint`), the log
//! offset of the first record at or after `T`, every view sink's state at
//! the sinks' own frontier, by sink name (the changelogs' buffered
//! changes and the webhook derivation; every webhook message before that
//! frontier is already in the outbox), and the ingest's seq map with the
//! offset it covers. Its fingerprint names the settings, the views and
//! the per-fridge operators the state was computed with: a checkpoint of
//! another set is refused, never restored into empty state.
//!
//! Each is one file, `checkpoints/<T>-<keep_from>.ckpt`, where `keep_from`
//! is the lowest log offset a restart from it reads. The file is
//! `COLDCKPT | format u32 | length u64 | crc32c u32 | body`, written
//! under a temporary name, fsynced, renamed into place and the folder
//! fsynced, so it is whole or absent. A file that is torn or does not
//! check is reported and skipped in favour of the one before it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use coldstream_pipelines::Time;
use coldstream_pipelines::checkpoint::{DataflowState, OperatorSnapshot};
use coldstream_pipelines::views::ViewConfig;
use coldstream_sources::ingest::SeqSnapshot;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"COLDCKPT";
const FORMAT: u32 = 3;
const HEADER_BYTES: usize = 8 + 4 + 8 + 4;

/// Everything a restart needs besides the log tail and the sinks' files.
#[derive(Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The views' settings the state was computed with.
    pub views: ViewsFingerprint,
    /// The first log offset at or after the dataflow state's time.
    pub offset: u64,
    /// Every per-fridge operator's state.
    pub dataflow: DataflowState,
    /// The view sinks' state, taken at this frontier.
    pub sink_frontier: Time,
    /// Every view sink's state (`ViewSink::snapshot`), by sink name.
    pub sinks: BTreeMap<String, Vec<u8>>,
    /// The ingest's seq map.
    pub seqs: SeqSnapshot,
}

impl Checkpoint {
    /// The lowest log offset a restart from this checkpoint reads.
    pub fn keep_from(&self) -> u64 {
        self.offset.min(self.seqs.offset)
    }
}

/// What a checkpointed state depends on: the settings, and the dataflow
/// that computed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewsFingerprint {
    /// `views.horizon_hours`, in µs.
    pub horizon_us: i64,
    /// `views.lead_time_days`.
    pub lead_time_days: i64,
    /// `views.payment_wait_hours`, in µs.
    pub payment_wait_us: i64,
    /// Every view's name, in list order.
    pub views: Vec<String>,
    /// Every per-fridge operator's stable id, sorted; with a reorder
    /// policy UDF, `restock.lines` names it with its content hash.
    pub operators: Vec<String>,
}

impl ViewsFingerprint {
    /// The fingerprint of the views built with `views`.
    pub fn of(views: &ViewConfig) -> Self {
        ViewsFingerprint {
            horizon_us: views.horizon_us,
            lead_time_days: views.lead_time_days,
            payment_wait_us: views.payment_wait_us,
            views: coldstream_pipelines::views::NAMES.iter().map(|name| (*name).to_owned()).collect(),
            operators: coldstream_pipelines::views::stateful_operators(views)
                .into_iter()
                .map(|operator| match &views.reorder_point {
                    Some(policy) if operator == "restock.lines" => {
                        format!("{operator} with views.reorder_point_udf = {}", policy.id)
                    }
                    _ => operator,
                })
                .collect(),
        }
    }

    /// What of `self` differs from `other`, in the words of the config
    /// and of the dataflow.
    fn describe_against(&self, other: &ViewsFingerprint) -> String {
        let hours = |us: i64| us / coldstream_pipelines::event::HOUR_US;
        let mut parts = Vec::new();
        let settings = |f: &ViewsFingerprint| (f.horizon_us, f.lead_time_days, f.payment_wait_us);
        if settings(self) != settings(other) {
            parts.push(format!(
                "views.horizon_hours = {}, views.lead_time_days = {} and views.payment_wait_hours = {}",
                hours(self.horizon_us),
                self.lead_time_days,
                hours(self.payment_wait_us)
            ));
        }
        if self.views != other.views {
            parts.push(format!("the views [{}]", self.views.join(", ")));
        }
        if self.operators != other.operators {
            parts.push(format!("the per-fridge operators [{}]", self.operators.join(", ")));
        }

        parts.join(" and ")
    }
}

/// A checkpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The newest usable checkpoint was taken with other view settings,
    /// or by a dataflow with other views or operators.
    #[error(
        "checkpoint {file} was taken with {then}, but this server has {now}; restore those settings, or run `coldstream rebuild --data DIR` to recompute the views with the new ones"
    )]
    Settings {
        /// The checkpoint file.
        file: String,
        /// What it was taken with.
        then: String,
        /// What the server has instead.
        now: String,
    },
}

fn io(context: impl Into<String>, source: std::io::Error) -> CheckpointError {
    CheckpointError::Io { context: context.into(), source }
}

/// `<time>-<keep_from>.ckpt`.
fn file_name(time: Time, keep_from: u64) -> String {
    format!("{time:020}-{keep_from:020}.ckpt")
}

fn parse_name(name: &str) -> Option<(Time, u64)> {
    let (time, keep_from) = name.strip_suffix(".ckpt")?.split_once('-')?;
    Some((time.parse().ok()?, keep_from.parse().ok()?))
}

/// Writes `checkpoint` to `out` as a file's bytes, as it encodes it: the
/// body goes out a megabyte at a time, and the header's length and CRC
/// are filled in after it, so no copy of the whole file is ever in
/// memory. Returns the bytes written.
fn write_framed<W: Write + Seek>(out: &mut W, checkpoint: &Checkpoint) -> std::io::Result<usize> {
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT.to_le_bytes())?;
    out.write_all(&[0; 12])?;
    let mut body = std::io::BufWriter::with_capacity(1 << 20, Framing { out: &mut *out, len: 0, crc: 0 });
    bincode::serialize_into(&mut body, checkpoint).map_err(|e| match *e {
        bincode::ErrorKind::Io(error) => error,
        other => std::io::Error::other(other.to_string()),
    })?;
    let Framing { len, crc, .. } = body.into_inner().map_err(std::io::IntoInnerError::into_error)?;
    out.seek(SeekFrom::Start(MAGIC.len() as u64 + 4))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&crc.to_le_bytes())?;
    Ok(HEADER_BYTES + len as usize)
}

/// A checkpoint's body on its way out: counted and checksummed.
struct Framing<W> {
    out: W,
    len: u64,
    crc: u32,
}

impl<W: Write> Write for Framing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(bytes)?;
        self.crc = crc32c::crc32c_append(self.crc, &bytes[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Decodes a file's bytes, or says why they are not a whole checkpoint.
fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err(format!("not a checkpoint file ({} bytes, no header)", bytes.len()));
    }
    let format = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(format!("format {format}, this build reads format {FORMAT}"));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let body = &bytes[HEADER_BYTES..];
    if body.len() != len {
        return Err(format!("torn: {} of {len} bytes", body.len()));
    }
    if crc32c::crc32c(body) != crc {
        return Err("checksum does not match".into());
    }
    // The body's own length bounds what decoding may allocate, whatever
    // lengths the bytes claim.
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(body.len() as u64)
        .deserialize(body)
        .map_err(|e| format!("does not decode: {e}"))
}

/// The checkpoint folder of a data directory.
pub struct CheckpointStore {
    dir: PathBuf,
    keep: usize,
}

impl CheckpointStore {
    /// Opens (creating) `root/checkpoints`, keeping the newest `keep` files.
    pub fn open(root: &Path, keep: usize) -> Result<Self, CheckpointError> {
        Self::open_dir(root.join("checkpoints"), keep)
    }

    /// The checkpoints of one process of a cluster:
    /// `root/checkpoints/process-I-of-Nx<workers>`. A process holds the state
    /// of its own workers' fridges only, so its checkpoints serve that same
    /// place in a cluster of that same shape, and no other.
    pub fn open_in_cluster(
        root: &Path,
        keep: usize,
        cluster: &crate::workers::Cluster,
        threads: usize,
    ) -> Result<Self, CheckpointError> {
        if !cluster.is_multi() {
            return Self::open(root, keep);
        }
        let place = format!("process-{}-of-{}x{threads}", cluster.process, cluster.processes);
        Self::open_dir(root.join("checkpoints").join(place), keep)
    }

    fn open_dir(dir: PathBuf, keep: usize) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(&dir).map_err(|e| io(format!("creating {}", dir.display()), e))?;
        Ok(CheckpointStore { dir, keep: keep.max(1) })
    }

    /// The times of the checkpoints kept, newest first.
    pub fn times(&self) -> Result<Vec<Time>, CheckpointError> {
        Ok(self.files()?.into_iter().map(|(_, time, _)| time).collect())
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every checkpoint file, newest first, with its time and `keep_from`.
    /// Leftover temporary files are removed.
    fn files(&self) -> Result<Vec<(PathBuf, Time, u64)>, CheckpointError> {
        let listing = |e| io(format!("listing {}", self.dir.display()), e);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(listing)? {
            let entry = entry.map_err(listing)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            } else if let Some((time, keep_from)) = parse_name(&name) {
                files.push((entry.path(), time, keep_from));
            }
        }
        files.sort_by_key(|file| std::cmp::Reverse(file.1));
        Ok(files)
    }

    /// The newest checkpoint that is whole, with its file; damaged newer
    /// ones are reported (`skipped`) and passed over.
    pub fn load(
        &self,
        views: &ViewsFingerprint,
        skipped: &mut Vec<String>,
    ) -> Result<Option<(PathBuf, Checkpoint)>, CheckpointError> {
        self.load_until(views, Time::MAX, skipped)
    }

    /// Like [`CheckpointStore::load`], among the checkpoints at or before `until`.
    pub fn load_until(
        &self,
        views: &ViewsFingerprint,
        until: Time,
        skipped: &mut Vec<String>,
    ) -> Result<Option<(PathBuf, Checkpoint)>, CheckpointError> {
        for (path, _, _) in self.files()?.into_iter().filter(|(_, time, _)| *time <= until) {
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io(format!("reading {}", path.display()), e))?;
            let checkpoint = match decode(&bytes) {
                Ok(checkpoint) => checkpoint,
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason, "skipping a damaged checkpoint; trying the one before it");
                    skipped.push(format!("{}: {reason}", path.display()));
                    continue;
                }
            };
            if checkpoint.views != *views {
                return Err(CheckpointError::Settings {
                    file: path.display().to_string(),
                    then: checkpoint.views.describe_against(views),
                    now: views.describe_against(&checkpoint.views),
                });
            }
            return Ok(Some((path, checkpoint)));
        }
        Ok(None)
    }

    /// Writes `checkpoint` atomically, then removes all but the newest
    /// `keep`. Returns the file and its size.
    pub fn write(&self, checkpoint: &Checkpoint) -> Result<(PathBuf, usize), CheckpointError> {
        let name = file_name(checkpoint.dataflow.time, checkpoint.keep_from());
        let path = self.dir.join(&name);
        let temporary = self.dir.join(format!(".{name}.tmp"));
        let mut file = File::create(&temporary).map_err(|e| io(format!("creating {}", temporary.display()), e))?;
        let bytes = write_framed(&mut file, checkpoint)
            .and_then(|bytes| file.sync_all().map(|()| bytes))
            .map_err(|e| io(format!("writing {}", temporary.display()), e))?;
        drop(file);
        std::fs::rename(&temporary, &path).map_err(|e| io(format!("renaming to {}", path.display()), e))?;
        self.sync_dir()?;
        let files = self.files()?;
        for (old, _, _) in files.iter().skip(self.keep) {
            std::fs::remove_file(old).map_err(|e| io(format!("removing {}", old.display()), e))?;
        }
        if files.len() > self.keep {
            self.sync_dir()?;
        }
        Ok((path, bytes))
    }

    /// The lowest log offset any kept checkpoint reads from (`None`: there
    /// are none, so a restart reads the whole log).
    pub fn keep_from(&self) -> Result<Option<u64>, CheckpointError> {
        Ok(self.files()?.iter().map(|(_, _, keep_from)| *keep_from).min())
    }

    fn sync_dir(&self) -> Result<(), CheckpointError> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io(format!("fsync of {}", self.dir.display()), e))
    }
}

/// A checkpoint being gathered: the source's offset, every operator's
/// snapshot and the view sink's state arrive separately.
#[derive(Default)]
struct Gathering {
    offset: Option<u64>,
    parts: Vec<OperatorSnapshot>,
    sink: Option<(Time, BTreeMap<String, Vec<u8>>)>,
}

/// Gathers checkpoints in the view sink's thread and says when one is whole.
#[derive(Default)]
pub struct Gatherer {
    gathering: BTreeMap<Time, Gathering>,
}

impl Gatherer {
    /// The source read the first record at or after `time` at `offset`.
    pub fn offset(&mut self, time: Time, offset: u64) {
        self.gathering.entry(time).or_default().offset = Some(offset);
    }

    /// An operator's snapshot.
    pub fn part(&mut self, part: OperatorSnapshot) {
        self.gathering.entry(part.time).or_default().parts.push(part);
    }

    /// Whether a checkpoint at or before `frontier` still needs the sink's state.
    pub fn wants_sink(&self, frontier: Time) -> bool {
        self.gathering.range(..=frontier).any(|(_, g)| g.sink.is_none())
    }

    /// The sinks' states at `frontier`, by sink name, for every checkpoint
    /// at or before it.
    pub fn sink(&mut self, frontier: Time, sinks: BTreeMap<String, Vec<u8>>) {
        for (_, gathering) in self.gathering.range_mut(..=frontier) {
            gathering.sink.get_or_insert_with(|| (frontier, sinks.clone()));
        }
    }

    /// Whether any checkpoint is being gathered.
    pub fn is_empty(&self) -> bool {
        self.gathering.is_empty()
    }

    /// The newest whole checkpoint, if any (`snapshots` per checkpoint);
    /// older ones are dropped with it. `seqs` is asked for the sources'
    /// positions only when there is one: this is called after every batch
    /// of view changes, and most find none whole.
    pub fn take_whole(
        &mut self,
        snapshots: usize,
        views: &ViewsFingerprint,
        seqs: impl FnOnce() -> SeqSnapshot,
    ) -> Option<Checkpoint> {
        let time = *self
            .gathering
            .iter()
            .rev()
            .find(|(_, g)| g.offset.is_some() && g.sink.is_some() && snapshots > 0 && g.parts.len() >= snapshots)?
            .0;
        let rest = self.gathering.split_off(&(time + 1));
        let whole = std::mem::replace(&mut self.gathering, rest).remove(&time).expect("the entry just found");
        let (sink_frontier, sinks) = whole.sink.expect("checked whole");
        Some(Checkpoint {
            views: views.clone(),
            offset: whole.offset.expect("checked whole"),
            dataflow: DataflowState::gather(time, whole.parts),
            sink_frontier,
            sinks,
            seqs: seqs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use coldstream_sources::auth::Principal;
    use coldstream_sources::ingest::Position;

    use super::*;

    fn fingerprint(lead_time_days: i64) -> ViewsFingerprint {
        ViewsFingerprint {
            horizon_us: 1,
            lead_time_days,
            payment_wait_us: 1,
            views: vec!["inventory".into()],
            operators: vec!["inventory.stock".into()],
        }
    }

    fn checkpoint(time: Time, offset: u64) -> Checkpoint {
        Checkpoint {
            views: fingerprint(2),
            offset,
            dataflow: DataflowState { time, operators: BTreeMap::new() },
            sink_frontier: time,
            sinks: [("changelogs".to_owned(), vec![1, 2, 3]), ("webhooks".to_owned(), vec![4])].into(),
            seqs: SeqSnapshot {
                offset: offset + 5,
                highest: [(Principal::Fridge("FR-1".into()), Position { incarnation: 1, seq: 7 })].into(),
            },
        }
    }

    /// The file's bytes framed as a whole checkpoint (right header and CRC).
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// A checkpoint file of any bytes, even with a valid header and CRC
        /// around them, decodes or is refused: never a panic or a huge allocation.
        #[test]
        fn checkpoints_of_any_bytes_decode_or_are_refused(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..), 1..4),
        ) {
            let _ = decode(&body);
            let _ = decode(&framed(&body));
            let mut real = std::io::Cursor::new(Vec::new());
            write_framed(&mut real, &checkpoint(5, 9)).expect("writes to memory");
            let mut real = real.into_inner();
            for (at, mask) in flips {
                let at = HEADER_BYTES + at % (real.len() - HEADER_BYTES);
                real[at] ^= mask;
            }
            let body = real[HEADER_BYTES..].to_vec();
            let _ = decode(&framed(&body));
        }
    }

    /// The sources' positions are read when a checkpoint is whole, and only
    /// then: the view sink asks after every batch of changes.
    #[test]
    fn the_sources_positions_are_read_only_for_a_whole_checkpoint() {
        let views = fingerprint(2);
        let mut gatherer = Gatherer::default();
        gatherer.offset(100, 10);
        gatherer.sink(100, BTreeMap::new());
        assert!(gatherer.take_whole(1, &views, || panic!("nothing is whole yet")).is_none());
        gatherer.part(OperatorSnapshot {
            time: 100,
            operator: "inventory.stock".into(),
            worker: 0,
            shared: Vec::new(),
            fridges: Vec::new(),
        });
        let seqs = checkpoint(100, 10).seqs;
        let whole = gatherer.take_whole(1, &views, || seqs.clone()).expect("whole");
        assert_eq!((whole.offset, whole.seqs), (10, seqs));
        assert!(gatherer.is_empty());
    }

    #[test]
    fn a_checkpoint_written_as_it_encodes_is_the_framed_encoding_and_loads_back() {
        let mut fridges: Vec<(String, Vec<u8>)> =
            (0..3000).map(|n| (format!("FR-{n:06}"), (0..700).map(|b| (b * n) as u8).collect())).collect();
        fridges.sort();
        let mut whole = checkpoint(300, 30);
        whole.dataflow.operators.insert("inventory.stock".into(), (vec![9; 10], fridges));
        let dir = tempfile::tempdir().expect("temp dir");
        let store = CheckpointStore::open(dir.path(), 2).expect("opens");
        let (path, written) = store.write(&whole).expect("writes");
        let on_disk = std::fs::read(&path).expect("reads");
        let body = bincode::serialize(&whole).expect("encodes");
        assert!(body.len() > 2 << 20, "larger than the write buffer: {}", body.len());
        assert_eq!(written, on_disk.len());
        assert!(on_disk == framed(&body), "the file is the header, then the body");
        let (_, loaded) = store.load(&fingerprint(2), &mut Vec::new()).expect("loads").expect("whole");
        assert_eq!(loaded.dataflow.operators, whole.dataflow.operators);
    }

    #[test]
    fn a_torn_or_corrupt_checkpoint_is_skipped_for_the_one_before() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = CheckpointStore::open(dir.path(), 3).expect("opens");
        let views = fingerprint(2);
        store.write(&checkpoint(100, 10)).expect("writes");
        let (newest, _) = store.write(&checkpoint(200, 20)).expect("writes");
        // Torn: the last bytes never reached the disk.
        let bytes = std::fs::read(&newest).expect("reads");
        std::fs::write(&newest, &bytes[..bytes.len() - 3]).expect("tears");
        let mut skipped = Vec::new();
        let (_, loaded) = store.load(&views, &mut skipped).expect("loads").expect("one is whole");
        assert_eq!((loaded.dataflow.time, loaded.offset), (100, 10));
        assert!(skipped[0].contains("torn"), "{skipped:?}");
        // Half-written in place: the length is right, a byte is not.
        let mut bytes = bytes;
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&newest, &bytes).expect("corrupts");
        let mut skipped = Vec::new();
        let (_, loaded) = store.load(&views, &mut skipped).expect("loads").expect("one is whole");
        assert_eq!(loaded.dataflow.time, 100);
        assert!(skipped[0].contains("checksum"), "{skipped:?}");
        assert_eq!(store.keep_from().expect("lists"), Some(10));
    }

    #[test]
    fn only_the_newest_are_kept_and_other_settings_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = CheckpointStore::open(dir.path(), 2).expect("opens");
        for time in 1..=4 {
            store.write(&checkpoint(time * 100, time * 10)).expect("writes");
        }
        assert_eq!(store.files().expect("lists").len(), 2);
        assert_eq!(store.keep_from().expect("lists"), Some(30));
        let other = fingerprint(3);
        let refused = store.load(&other, &mut Vec::new()).expect_err("other settings");
        assert!(refused.to_string().contains("coldstream rebuild"), "{refused}");
    }

    #[test]
    fn a_checkpoint_of_other_views_or_operators_is_refused_like_other_settings() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = CheckpointStore::open(dir.path(), 2).expect("opens");
        store.write(&checkpoint(100, 10)).expect("writes");
        let mut more_views = fingerprint(2);
        more_views.views.push("shrinkage".into());
        let refused = store.load(&more_views, &mut Vec::new()).expect_err("another view set").to_string();
        assert!(refused.contains("shrinkage") && refused.contains("coldstream rebuild"), "{refused}");
        assert!(!refused.contains('\n'), "{refused}");
        let mut new_operator = fingerprint(2);
        new_operator.operators.push("inventory.shrinkage".into());
        let refused = store.load(&new_operator, &mut Vec::new()).expect_err("another operator set").to_string();
        assert!(refused.contains("inventory.shrinkage") && refused.contains("coldstream rebuild"), "{refused}");
    }

    #[test]
    fn the_fingerprint_names_every_view_and_operator() {
        let fingerprint = ViewsFingerprint::of(&ViewConfig::default());
        assert_eq!(fingerprint.views, coldstream_pipelines::views::NAMES);
        assert!(fingerprint.operators.iter().any(|id| id == "restock.lines"), "{:?}", fingerprint.operators);
    }
}
