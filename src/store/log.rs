//! The embedded store: one append-only log file per partition, compacted by
//! rewriting the live state to a new file and renaming it over the old one.
//!
//! ```text
//! <data_dir>/LOCK                     flock'd while a process uses the directory
//! <data_dir>/MANIFEST                 "sipedge-store 1\npartitions N\n" (the commit point of a repartition)
//! <data_dir>/part-PPPPP-of-NNNNN.log  "SELOG001" then frames:
//!     len u32 LE │ crc32(payload) u32 LE │ payload = kind │ partition │ seq │ commit │ body
//!     kinds: 1 upsert, 2 remove, 3 forget (feed records, location::feed)
//!            0x10 checkpoint (first frame of a compacted file: the seq it is at)
//!            0x11 empty AoR (a compacted file's known AoR without bindings)
//! ```
//!
//! Durability: `append` writes the whole batch with one `write` per
//! partition before it returns. A `kill -9` after that loses nothing: the
//! bytes are in the page cache, which the kernel writes back on its own. A
//! power loss can lose the last few seconds unless `fsync = true`
//! (`fdatasync` after each batch: a few hundred µs on an SSD, once per loop
//! turn, not per REGISTER). Compactions and repartitions always fsync the
//! new file and the directory before they replace anything.
//!
//! Torn writes: a crash in the middle of a write leaves a frame whose length
//! runs past the end of the file, or whose CRC does not match. Loading stops
//! at the first such frame and truncates the file there, so later appends
//! follow a clean frame boundary. Expired bindings are dropped on load: the
//! expiry stored is absolute wall-clock time, so nothing comes back to life
//! after a restart, however long the downtime.
//!
//! Why a log and not an embedded database (redb, sled, rocksdb): the
//! registrar already holds the whole state in memory and writes every change
//! as a self-contained record in order, so all a store has to do is append
//! bytes and, rarely, rewrite the live state. A log does exactly that with
//! one `write` per loop turn and no read path at all in steady state; a
//! B-tree store would add a second copy of the state, page-level write
//! amplification, its own locking and a transaction per batch, plus a
//! dependency tree to audit — for no query we need. The feed encoding is
//! also what a shared store will carry, so the log is that stream on disk.
//!
//! Changing the shard count changes the partitions: `load` notices that the
//! MANIFEST names another count, replays the old files, redistributes every
//! AoR with fresh ids, writes the new files, commits the new MANIFEST, and
//! only then deletes the old files.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Store, StoreError};
use crate::location::feed::{decode_header, encode_header};
use crate::location::{partition_of, Op, PartitionState, Record, StateBuilder};

const MAGIC: &[u8; 8] = b"SELOG001";
const FRAME_HEADER: usize = 8;
const KIND_CHECKPOINT: u8 = 0x10;
const KIND_EMPTY: u8 = 0x11;
/// Largest frame accepted on load (a binding is below 400 KiB by construction).
const MAX_FRAME: usize = 1 << 20;

/// Settings of the embedded store (the `[store]` table of the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Directory of the log files. Default `sipedge-data` (relative to the
    /// working directory); under systemd, point it at `$STATE_DIRECTORY`.
    pub data_dir: PathBuf,
    /// `fdatasync` after each batch (survives power loss, not just `kill -9`).
    pub fsync: bool,
    /// Compact a partition's log only once it is at least this large.
    pub compact_min_bytes: u64,
    /// … and this many times larger than it was after the last compaction.
    pub compact_ratio: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("sipedge-data"),
            fsync: false,
            compact_min_bytes: 64 << 20,
            compact_ratio: 4,
        }
    }
}

/// What loading found in one partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionReport {
    /// The partition.
    pub partition: u16,
    /// Frames replayed.
    pub frames: u64,
    /// Bytes cut off the end (a torn or corrupt tail).
    pub discarded_bytes: u64,
    /// The last seq in the log.
    pub seq: u64,
}

#[derive(Debug)]
struct PartLog {
    partition: u16,
    path: PathBuf,
    file: Option<File>,
    /// Bytes in the file (all valid frames).
    len: u64,
    /// Size right after the last compaction or load.
    base_len: u64,
    /// Last seq appended.
    seq: u64,
    buf: Vec<u8>,
}

/// The embedded log store (module doc).
#[derive(Debug)]
pub struct LogStore {
    cfg: LogConfig,
    partitions: u16,
    _lock: Arc<File>,
    parts: Vec<PartLog>,
    loaded: bool,
    reports: Vec<PartitionReport>,
}

fn part_path(dir: &Path, p: u16, n: u16) -> PathBuf {
    dir.join(format!("part-{p:05}-of-{n:05}.log"))
}

/// Appends one frame whose payload `payload` writes.
fn frame(buf: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    payload(buf);
    let body = buf.get(start + FRAME_HEADER..).unwrap_or_default();
    let len = (body.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(body).to_le_bytes();
    if let Some(h) = buf.get_mut(start..start + 4) {
        h.copy_from_slice(&len);
    }
    if let Some(h) = buf.get_mut(start + 4..start + FRAME_HEADER) {
        h.copy_from_slice(&crc);
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync the directory.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// The bytes of a compacted log holding `state`.
fn snapshot_bytes(state: &PartitionState) -> Vec<u8> {
    let mut b = Vec::with_capacity(
        MAGIC.len()
            + 64
            + state
                .bindings
                .iter()
                .map(|x| x.heap_size() + 32)
                .sum::<usize>(),
    );
    b.extend_from_slice(MAGIC);
    let p = state.partition;
    frame(&mut b, |o| {
        encode_header(o, KIND_CHECKPOINT, p, state.seq, 0)
    });
    for binding in &state.bindings {
        frame(&mut b, |o| {
            encode_header(o, 1, p, state.seq, 0);
            o.extend_from_slice(binding.as_bytes());
        });
    }
    for e in &state.empty {
        frame(&mut b, |o| {
            encode_header(o, KIND_EMPTY, p, state.seq, 0);
            o.extend_from_slice(&e.since.to_le_bytes());
            o.extend_from_slice(&e.aor);
        });
    }
    for e in &state.entries {
        frame(&mut b, |o| {
            Record {
                remote: false,
                partition: p,
                seq: state.seq,
                commit: 0,
                op: Op::Put(e.clone()),
            }
            .encode(o)
        });
    }
    b
}

/// Replays a log's bytes: the state builder, the length of the valid prefix
/// and the frame count. A bad magic is `NotALog` (never truncated).
fn replay(data: &[u8], partition: u16) -> Result<(StateBuilder, usize, u64), StoreError> {
    let mut b = StateBuilder::new(partition);
    if data.len() < MAGIC.len() {
        // Empty or a torn magic: an empty log.
        if MAGIC.starts_with(data) {
            return Ok((b, 0, 0));
        }
        return Err(StoreError::NotALog);
    }
    if data.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(StoreError::NotALog);
    }
    let mut off = MAGIC.len();
    let mut frames = 0;
    loop {
        let word = |at: usize| {
            data.get(at..at + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map(u32::from_le_bytes)
        };
        let (Some(len), Some(crc)) = (word(off), word(off + 4)) else {
            break;
        };
        let len = len as usize;
        if len > MAX_FRAME {
            break;
        }
        let Some(payload) = data.get(off + FRAME_HEADER..off + FRAME_HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok((kind, _, seq, _, body)) = decode_header(payload) else {
            break;
        };
        match kind {
            KIND_CHECKPOINT => b.set_seq(seq),
            KIND_EMPTY => {
                let Some(since) = body.get(..8).and_then(|s| <[u8; 8]>::try_from(s).ok()) else {
                    break;
                };
                b.insert_empty(body.get(8..).unwrap_or_default(), u64::from_le_bytes(since));
            }
            _ => match Record::decode(payload) {
                Ok(r) => b.apply(&r),
                Err(_) => break,
            },
        }
        frames += 1;
        off += FRAME_HEADER + len;
    }
    Ok((b, off, frames))
}

impl LogStore {
    /// Opens (creating it if needed) the data directory for `partitions`
    /// partitions and locks it. Nothing is read until [`Store::load`].
    pub fn open(cfg: &LogConfig, partitions: u16) -> Result<Self, StoreError> {
        let partitions = partitions.max(1);
        fs::create_dir_all(&cfg.data_dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cfg.data_dir.join("LOCK"))?;
        // `File::try_lock` (flock) is Rust 1.89; the workspace declares 1.85
        // and must move to 1.89 (the only std alternative, a pid file, goes
        // stale on `kill -9`; flock dies with the process).
        #[allow(clippy::incompatible_msrv)]
        let locked = lock.try_lock();
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked),
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        let parts = (0..partitions)
            .map(|p| PartLog {
                partition: p,
                path: part_path(&cfg.data_dir, p, partitions),
                file: None,
                len: 0,
                base_len: 0,
                seq: 0,
                buf: Vec::new(),
            })
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            partitions,
            _lock: Arc::new(lock),
            parts,
            loaded: false,
            reports: Vec::new(),
        })
    }

    /// One store per partition, each to be moved to the partition's owner
    /// shard (they share the directory lock). Call after [`Store::load`].
    pub fn split(self) -> Vec<Self> {
        let Self {
            cfg,
            partitions,
            _lock,
            parts,
            loaded,
            reports,
        } = self;
        parts
            .into_iter()
            .map(|p| Self {
                cfg: cfg.clone(),
                partitions,
                _lock: Arc::clone(&_lock),
                reports: reports
                    .iter()
                    .filter(|r| r.partition == p.partition)
                    .copied()
                    .collect(),
                parts: vec![p],
                loaded,
            })
            .collect()
    }

    /// What the last load found, per partition.
    pub fn reports(&self) -> &[PartitionReport] {
        &self.reports
    }

    /// Bytes in `partition`'s log.
    pub fn log_len(&self, partition: u16) -> Option<u64> {
        self.parts
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.len)
    }

    fn manifest_path(&self) -> PathBuf {
        self.cfg.data_dir.join("MANIFEST")
    }

    fn read_manifest(&self) -> Result<Option<u16>, StoreError> {
        let text = match fs::read_to_string(self.manifest_path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut lines = text.lines();
        if lines.next() != Some("sipedge-store 1") {
            return Err(StoreError::Manifest);
        }
        lines
            .next()
            .and_then(|l| l.strip_prefix("partitions "))
            .and_then(|n| n.trim().parse().ok())
            .map(Some)
            .ok_or(StoreError::Manifest)
    }

    fn write_manifest(&self) -> Result<(), StoreError> {
        let text = format!("sipedge-store 1\npartitions {}\n", self.partitions);
        write_atomic(&self.cfg.data_dir, &self.manifest_path(), text.as_bytes())?;
        Ok(())
    }

    /// Log files of another partition count (left by a repartition).
    fn stray_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let suffix = format!("-of-{:05}.log", self.partitions);
        let mut out = Vec::new();
        for e in fs::read_dir(&self.cfg.data_dir)? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("part-") && name.ends_with(".log") && !name.ends_with(&suffix) {
                out.push(self.cfg.data_dir.join(name));
            }
        }
        Ok(out)
    }

    /// Rewrites the logs of `old` partitions into this store's count.
    fn repartition(&self, old: u16, wall: u64) -> Result<(), StoreError> {
        let mut states: Vec<PartitionState> = (0..self.partitions)
            .map(|p| PartitionState {
                partition: p,
                ..PartitionState::default()
            })
            .collect();
        for p in 0..old {
            let path = part_path(&self.cfg.data_dir, p, old);
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let (b, _, _) = replay(&data, p)?;
            let st = b.finish(wall);
            for binding in st.bindings {
                let np = partition_of(binding.aor(), self.partitions);
                if let Some(s) = states.get_mut(usize::from(np)) {
                    s.seq += 1;
                    s.bindings
                        .push(binding.with_id_expires(s.seq, binding.expires()));
                }
            }
            for e in st.empty {
                let np = partition_of(&e.aor, self.partitions);
                if let Some(s) = states.get_mut(usize::from(np)) {
                    s.empty.push(e);
                }
            }
            for e in st.entries {
                let np = partition_of(&e.aor, self.partitions);
                if let Some(s) = states.get_mut(usize::from(np)) {
                    s.entries.push(e);
                }
            }
        }
        for s in &states {
            let path = part_path(&self.cfg.data_dir, s.partition, self.partitions);
            write_atomic(&self.cfg.data_dir, &path, &snapshot_bytes(s))?;
        }
        self.write_manifest()?;
        Ok(())
    }
}

impl Store for LogStore {
    fn load(&mut self, wall: u64) -> Result<Vec<PartitionState>, StoreError> {
        match self.read_manifest()? {
            Some(n) if n == self.partitions => {}
            Some(old) => self.repartition(old, wall)?,
            None => self.write_manifest()?,
        }
        for stray in self.stray_files()? {
            fs::remove_file(stray)?;
        }
        let mut states = Vec::with_capacity(self.parts.len());
        self.reports.clear();
        for part in &mut self.parts {
            let data = match fs::read(&part.path) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let (builder, valid, frames) = replay(&data, part.partition)?;
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&part.path)?;
            let mut len = valid as u64;
            if valid < MAGIC.len() {
                file.set_len(0)?;
                file.write_all(MAGIC)?;
                len = MAGIC.len() as u64;
            } else if valid < data.len() {
                file.set_len(len)?;
            }
            file.sync_all()?;
            // Appends go to the end: reopen in append mode.
            drop(file);
            let file = OpenOptions::new().append(true).open(&part.path)?;
            part.file = Some(file);
            part.len = len;
            part.base_len = len;
            part.seq = builder.seq();
            self.reports.push(PartitionReport {
                partition: part.partition,
                frames,
                discarded_bytes: data.len().saturating_sub(valid) as u64,
                seq: part.seq,
            });
            states.push(builder.finish(wall));
        }
        self.loaded = true;
        Ok(states)
    }

    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        if !self.loaded {
            return Err(StoreError::NotLoaded);
        }
        for r in records {
            let Some(part) = self.parts.iter_mut().find(|p| p.partition == r.partition) else {
                for p in &mut self.parts {
                    p.buf.clear();
                }
                return Err(StoreError::NotOwned {
                    partition: r.partition,
                });
            };
            frame(&mut part.buf, |o| r.encode(o));
            part.seq = part.seq.max(r.seq);
        }
        let fsync = self.cfg.fsync;
        let mut result = Ok(());
        for part in &mut self.parts {
            if part.buf.is_empty() {
                continue;
            }
            let Some(file) = part.file.as_mut() else {
                part.buf.clear();
                return Err(StoreError::NotLoaded);
            };
            let written =
                file.write_all(&part.buf)
                    .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
            match written {
                Ok(()) => part.len += part.buf.len() as u64,
                Err(e) => {
                    // Cut a partial write so the next frame starts on a boundary.
                    let _ = file.set_len(part.len);
                    if result.is_ok() {
                        result = Err(e.into());
                    }
                }
            }
            part.buf.clear();
        }
        result
    }

    fn wants_compaction(&self, partition: u16) -> bool {
        self.parts
            .iter()
            .find(|p| p.partition == partition)
            .is_some_and(|p| {
                p.len >= self.cfg.compact_min_bytes
                    && p.len
                        > p.base_len
                            .saturating_mul(u64::from(self.cfg.compact_ratio.max(1)))
            })
    }

    fn compact(&mut self, state: &PartitionState) -> Result<(), StoreError> {
        if !self.loaded {
            return Err(StoreError::NotLoaded);
        }
        let dir = self.cfg.data_dir.clone();
        let part = self
            .parts
            .iter_mut()
            .find(|p| p.partition == state.partition)
            .ok_or(StoreError::NotOwned {
                partition: state.partition,
            })?;
        if state.seq != part.seq {
            return Err(StoreError::StaleSnapshot {
                snapshot: state.seq,
                log: part.seq,
            });
        }
        let bytes = snapshot_bytes(state);
        write_atomic(&dir, &part.path, &bytes)?;
        part.file = Some(OpenOptions::new().append(true).open(&part.path)?);
        part.len = bytes.len() as u64;
        part.base_len = part.len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::{Binding, BindingParts, EmptyAor, Entry};
    use crate::transport::SocketId;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("sipedge-store-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            Self(p)
        }

        fn cfg(&self) -> LogConfig {
            LogConfig {
                data_dir: self.0.clone(),
                ..LogConfig::default()
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn binding(aor: &str, id: u64, expires: u64) -> Binding {
        Binding::new(&BindingParts {
            id,
            aor: aor.as_bytes(),
            contact: format!("sip:{id}@10.0.0.1:5060").as_bytes(),
            expires,
            q: 1000,
            call_id: b"call",
            cseq: 1,
            received: Some("192.0.2.1:5060".parse().unwrap()),
            socket: SocketId(0),
            flow: 0,
            path: b"",
            instance: b"",
            reg_id: None,
            user_agent: b"ua",
        })
        .unwrap()
    }

    /// A feed of `n` upserts over a few AoRs in `partition`, with removals.
    fn feed(partition: u16, from_seq: u64, n: u64, expires: u64) -> Vec<Record> {
        (0..n)
            .map(|i| {
                let seq = from_seq + i;
                // Seven AoRs with one binding each, refreshed and removed in turn.
                let k = i % 7;
                let aor = format!("u{k}@x");
                let op = if i % 5 == 4 {
                    Op::Remove {
                        aor: aor.as_bytes().into(),
                        id: k + 1,
                    }
                } else {
                    Op::Upsert(binding(&aor, k + 1, expires + seq))
                };
                Record {
                    remote: false,
                    partition,
                    seq,
                    commit: 1_000 + seq,
                    op,
                }
            })
            .collect()
    }

    fn expected(partition: u16, records: &[Record], wall: u64) -> PartitionState {
        let mut b = StateBuilder::new(partition);
        for r in records {
            b.apply(r);
        }
        b.finish(wall)
    }

    #[test]
    fn round_trip_through_reopen() {
        let d = TempDir::new("roundtrip");
        let recs = feed(1, 1, 40, 1 << 60);
        {
            let mut s = LogStore::open(&d.cfg(), 2).unwrap();
            let st = s.load(0).unwrap();
            assert_eq!(st.len(), 2);
            assert!(st.iter().all(|p| p.seq == 0 && p.bindings.is_empty()));
            for chunk in recs.chunks(7) {
                s.append(chunk).unwrap();
            }
            assert!(matches!(
                LogStore::open(&d.cfg(), 2),
                Err(StoreError::Locked)
            ));
        }
        let mut s = LogStore::open(&d.cfg(), 2).unwrap();
        let st = s.load(0).unwrap();
        assert_eq!(st[1], expected(1, &recs, 0));
        assert_eq!(st[1].seq, 40);
        assert_eq!(s.reports()[1].frames, 40);
        assert_eq!(s.reports()[1].discarded_bytes, 0);
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut() {
        let d = TempDir::new("torn");
        let recs = feed(0, 1, 20, 1 << 60);
        let path = part_path(&d.0, 0, 1);
        {
            let mut s = LogStore::open(&d.cfg(), 1).unwrap();
            s.load(0).unwrap();
            s.append(&recs).unwrap();
        }
        let good = fs::read(&path).unwrap();
        // A frame cut in the middle (a crash during write).
        let mut extra = Vec::new();
        frame(&mut extra, |o| feed(0, 21, 1, 1 << 60)[0].encode(o));
        let mut torn = good.clone();
        torn.extend_from_slice(&extra[..extra.len() / 2]);
        fs::write(&path, &torn).unwrap();
        let more = feed(0, 21, 3, 1 << 60);
        {
            let mut s = LogStore::open(&d.cfg(), 1).unwrap();
            let st = s.load(0).unwrap();
            assert_eq!(st[0], expected(0, &recs, 0));
            assert_eq!(s.reports()[0].discarded_bytes, (extra.len() / 2) as u64);
            assert_eq!(
                fs::read(&path).unwrap(),
                good,
                "truncated to the last frame"
            );
            // Appends after a cut tail survive the next load.
            s.append(&more).unwrap();
        }
        let all: Vec<Record> = recs.iter().chain(&more).cloned().collect();
        {
            let mut s = LogStore::open(&d.cfg(), 1).unwrap();
            assert_eq!(s.load(0).unwrap()[0], expected(0, &all, 0));
        }
        // A flipped bit in the last frame: that frame is dropped, not the log.
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let mut s = LogStore::open(&d.cfg(), 1).unwrap();
        let st = s.load(0).unwrap();
        assert_eq!(st[0], expected(0, &all[..all.len() - 1], 0));
        // A file that is not a log is refused, never truncated.
        drop(s);
        fs::write(&path, b"hello world, not a log").unwrap();
        let mut s = LogStore::open(&d.cfg(), 1).unwrap();
        assert!(matches!(s.load(0), Err(StoreError::NotALog)));
        assert_eq!(fs::read(&path).unwrap(), b"hello world, not a log");
    }

    #[test]
    fn expired_bindings_are_not_resurrected() {
        let d = TempDir::new("expired");
        let recs = vec![
            Record {
                remote: false,
                partition: 0,
                seq: 1,
                commit: 10,
                op: Op::Upsert(binding("a@x", 1, 5_000)),
            },
            Record {
                remote: false,
                partition: 0,
                seq: 2,
                commit: 11,
                op: Op::Upsert(binding("a@x", 2, 9_000)),
            },
            Record {
                remote: false,
                partition: 0,
                seq: 3,
                commit: 12,
                op: Op::Upsert(binding("b@x", 3, 5_000)),
            },
        ];
        {
            let mut s = LogStore::open(&d.cfg(), 1).unwrap();
            s.load(0).unwrap();
            s.append(&recs).unwrap();
        }
        let mut s = LogStore::open(&d.cfg(), 1).unwrap();
        let st = s.load(6_000).unwrap();
        let ids: Vec<u64> = st[0].bindings.iter().map(Binding::id).collect();
        assert_eq!(ids, vec![2]);
        assert_eq!(
            st[0].empty,
            vec![EmptyAor {
                aor: b"b@x"[..].into(),
                since: 5_000
            }]
        );
        assert_eq!(st[0].seq, 3);
    }

    fn entry(key: &str, aor: &str, expires: u64) -> Entry {
        Entry {
            kind: 9,
            key: key.as_bytes().into(),
            aor: aor.as_bytes().into(),
            expires,
            value: format!("value of {key}").into_bytes().into(),
        }
    }

    /// A local service's entries survive a reload, a compaction and a change
    /// of the partition count; deleted and expired ones do not come back.
    #[test]
    fn service_entries_are_durable() {
        let d = TempDir::new("entries");
        let rec = |seq, op| Record {
            remote: false,
            partition: 0,
            seq,
            commit: seq,
            op,
        };
        let recs = vec![
            rec(1, Op::Put(entry("e1", "a@x", 0))),
            rec(2, Op::Put(entry("e2", "b@x", 5_000))),
            rec(3, Op::Put(entry("e3", "c@x", 9_000))),
            rec(
                4,
                Op::Del {
                    aor: b"a@x"[..].into(),
                    kind: 9,
                    key: b"e1"[..].into(),
                },
            ),
            rec(5, Op::Put(entry("e4", "d@x", 0))),
        ];
        let want = vec![entry("e3", "c@x", 9_000), entry("e4", "d@x", 0)];
        {
            let mut s = LogStore::open(&d.cfg(), 1).unwrap();
            s.load(0).unwrap();
            s.append(&recs).unwrap();
        }
        let mut s = LogStore::open(&d.cfg(), 1).unwrap();
        let st = s.load(6_000).unwrap().remove(0);
        assert_eq!(st.entries, want);
        assert_eq!(st.seq, 5);
        s.compact(&st).unwrap();
        drop(s);
        let mut s = LogStore::open(&d.cfg(), 1).unwrap();
        assert_eq!(s.load(6_000).unwrap()[0].entries, want);
        drop(s);
        let mut s = LogStore::open(&d.cfg(), 3).unwrap();
        let mut got: Vec<Entry> = s
            .load(6_000)
            .unwrap()
            .into_iter()
            .flat_map(|p| {
                for e in &p.entries {
                    assert_eq!(partition_of(&e.aor, 3), p.partition);
                }
                p.entries
            })
            .collect();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn compaction_rewrites_the_live_state() {
        let d = TempDir::new("compact");
        let cfg = LogConfig {
            compact_min_bytes: 1_000,
            compact_ratio: 2,
            ..d.cfg()
        };
        let recs = feed(0, 1, 200, 1 << 60);
        let mut s = LogStore::open(&cfg, 1).unwrap();
        s.load(0).unwrap();
        s.append(&recs[..100]).unwrap();
        assert!(s.wants_compaction(0));
        let state = expected(0, &recs[..100], 0);
        assert!(matches!(
            s.compact(&PartitionState {
                seq: 99,
                ..state.clone()
            }),
            Err(StoreError::StaleSnapshot {
                snapshot: 99,
                log: 100
            })
        ));
        let before = s.log_len(0).unwrap();
        s.compact(&state).unwrap();
        let after = s.log_len(0).unwrap();
        assert!(after < before / 4, "{before} → {after}");
        assert!(!s.wants_compaction(0));
        s.append(&recs[100..]).unwrap();
        drop(s);
        let mut s = LogStore::open(&cfg, 1).unwrap();
        let st = s.load(0).unwrap();
        assert_eq!(st[0], expected(0, &recs, 0));
        assert_eq!(st[0].seq, 200);
        assert_eq!(
            s.append(&feed(3, 1, 1, 0)).map_err(|e| e.to_string()),
            Err("partition 3 is not held by this store".into())
        );
    }

    #[test]
    fn changing_the_partition_count_redistributes() {
        let d = TempDir::new("repartition");
        let mut all = Vec::new();
        {
            let mut s = LogStore::open(&d.cfg(), 2).unwrap();
            s.load(0).unwrap();
            for p in 0..2u16 {
                // AoRs that really belong to p with 2 partitions.
                let mut seq = 0;
                let recs: Vec<Record> = (0..200)
                    .map(|i| format!("user{i}@x"))
                    .filter(|a| partition_of(a.as_bytes(), 2) == p)
                    .take(20)
                    .map(|a| {
                        seq += 1;
                        Record {
                            remote: false,
                            partition: p,
                            seq,
                            commit: 0,
                            op: Op::Upsert(binding(&a, seq, u64::MAX)),
                        }
                    })
                    .collect();
                s.append(&recs).unwrap();
                all.extend(recs);
            }
        }
        let mut s = LogStore::open(&d.cfg(), 3).unwrap();
        let st = s.load(0).unwrap();
        assert_eq!(st.len(), 3);
        let mut aors: Vec<&[u8]> = Vec::new();
        for p in &st {
            let mut ids: Vec<u64> = p.bindings.iter().map(Binding::id).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), p.bindings.len(), "ids unique in a partition");
            assert!(ids.iter().all(|&i| i <= p.seq));
            for b in &p.bindings {
                assert_eq!(partition_of(b.aor(), 3), p.partition);
                aors.push(b.aor());
            }
        }
        assert_eq!(aors.len(), 40);
        let mut names: Vec<String> = fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "LOCK",
                "MANIFEST",
                "part-00000-of-00003.log",
                "part-00001-of-00003.log",
                "part-00002-of-00003.log"
            ]
        );
        // Split into per-partition stores; each appends its own partition only.
        let mut parts = s.split();
        let seq = st[2].seq;
        let b = binding("new@x", seq + 1, u64::MAX);
        let rec = Record {
            remote: false,
            partition: 2,
            seq: seq + 1,
            commit: 0,
            op: Op::Upsert(b),
        };
        assert!(matches!(
            parts[1].append(std::slice::from_ref(&rec)),
            Err(StoreError::NotOwned { partition: 2 })
        ));
        parts[2].append(std::slice::from_ref(&rec)).unwrap();
        drop(parts);
        let mut s = LogStore::open(&d.cfg(), 3).unwrap();
        let st = s.load(0).unwrap();
        assert_eq!(st[2].seq, seq + 1);
        assert!(st[2].bindings.iter().any(|b| b.aor() == b"new@x"));
    }
}
