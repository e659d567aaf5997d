//! Redis (or Valkey) as the shared store of several edge nodes serving one
//! domain (`--store redis://HOST:PORT[/DB]`): bindings written through,
//! a change stream every node follows, a snapshot to start from.
//!
//! ```text
//!  shard p's store thread:  append(turn records) ─► one EVALSHA (WRITE below): per record
//!                            HSET/HDEL/DEL on the AoR's hash + XADD to the stream, atomically;
//!                            the turn's 200s go out only after it returned (the log's promise)
//!  follower thread (1 per process): XREAD BLOCK from the last id ─► records other nodes wrote
//!                            (after a short read, it waits `follow_window_ms` so the next read
//!                            carries a batch)
//!                            ─► shard partition_of(aor): registrar.apply_remote ─► its replicas
//!  start-up: stream's last id, then SCAN + pipelined HGETALL ─► PartitionStates;
//!            the follower resumes from that id (replaying what the scan may have
//!            seen already is harmless: every record is a whole value)
//! ```
//!
//! Layout (binary-safe keys, `prefix` = `sipedge` by default):
//! - `{prefix}:loc:{aor}` hash: `b` ‖ binding id (8 bytes BE) → the binding's
//!   encoding; `e` → when the AoR became empty (µs, decimal), while it has
//!   no binding and is still known. `Forget` deletes the key.
//! - `{prefix}:feed` stream (`MAXLEN ~ stream_max`): fields `n` (the writing
//!   node) and `r` (the record's encoding; its partition and seq are the
//!   writer's and are ignored by readers).
//! - `{prefix}:node:{node}:svc:{aor}` hash: this node's presence entries
//!   (kind ‖ key → expires (8 bytes LE) ‖ value). Presence state stays with
//!   the node a subscription was made through; it is durable here, not shared.
//! - `{prefix}:secret`: the nonce secret all nodes share (set once, SET NX).
//!
//! A `Remove` whose binding is already gone (another node expired it first)
//! and a `Forget` of a key already deleted write nothing and add nothing to
//! the stream, so N nodes expiring the same binding cost one entry.
//!
//! Failures: an append that cannot reach Redis fails at once (the turn's
//! REGISTERs get 503 with Retry-After), then the store waits a backoff
//! (100 ms doubling to 5 s) before it tries to connect again; the follower
//! reconnects with the same backoff and resumes from its last id. No shard
//! thread ever talks to Redis.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::Commands;

use crate::location::{Binding, EmptyAor, Entry, Op, PartitionState, Record};

use super::{Store, StoreError};

/// `[store]` for Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` or `rediss://…` (TLS).
    pub url: String,
    /// This node's name, unique among the nodes sharing the store and
    /// stable across restarts (its presence entries are kept under it).
    pub node: String,
    /// Key prefix.
    pub prefix: String,
    /// Approximate length the change stream is trimmed to.
    pub stream_max: usize,
    /// How long the follower waits after a read that did not fill a batch
    /// before it reads again, so one read carries the changes of that
    /// window (ms; 0: read again at once, one Redis round trip per change).
    pub follow_window_ms: u64,
    /// PEM file of the CA that signs Redis's certificate (`rediss://`),
    /// instead of the public web roots.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl RedisConfig {
    /// Settings for `url`, the other fields defaulted.
    pub fn new(url: &str, node: &str) -> Self {
        Self {
            url: url.to_owned(),
            node: node.to_owned(),
            prefix: "sipedge".to_owned(),
            stream_max: 1_000_000,
            follow_window_ms: 2,
            tls_ca: None,
        }
    }

    fn loc_key(&self, aor: &[u8]) -> Vec<u8> {
        let mut k = format!("{}:loc:", self.prefix).into_bytes();
        k.extend_from_slice(aor);
        k
    }

    fn svc_key(&self, aor: &[u8]) -> Vec<u8> {
        let mut k = format!("{}:node:{}:svc:", self.prefix, self.node).into_bytes();
        k.extend_from_slice(aor);
        k
    }

    fn stream(&self) -> String {
        format!("{}:feed", self.prefix)
    }
}

/// The write script: ARGV = node, maxlen, then per record 5 values (op,
/// key, field, value, encoded record); KEYS[1] = the stream.
const WRITE: &str = r"
local n = 0
for i = 3, #ARGV, 5 do
  local t, key, field, val, rec = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  local feed = false
  if t == 'U' then
    redis.call('HSET', key, field, val)
    redis.call('HDEL', key, 'e')
    feed = true
  elseif t == 'R' then
    if redis.call('HDEL', key, field) == 1 then
      if redis.call('HLEN', key) == 0 then redis.call('HSET', key, 'e', val) end
      feed = true
    end
  elseif t == 'F' then
    feed = redis.call('DEL', key) == 1
  elseif t == 'P' then
    redis.call('HSET', key, field, val)
  elseif t == 'D' then
    redis.call('HDEL', key, field)
  end
  if feed then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'n', ARGV[1], 'r', rec)
    n = n + 1
  end
end
return n
";

fn binding_field(id: u64) -> Vec<u8> {
    let mut f = vec![b'b'];
    f.extend_from_slice(&id.to_be_bytes());
    f
}

fn unavailable(e: &redis::RedisError) -> StoreError {
    StoreError::Shared(e.to_string())
}

/// Runs `f` again (up to 5 times) when it failed with EINTR: a read on a
/// socket with a receive timeout fails so, without any signal handler, when
/// the process is stopped and continued (signal(7)), and the redis crate
/// passes it on. Start-up's reads are all whole and repeatable.
fn retry_eintr<T>(mut f: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let mut tries = 0;
    loop {
        match f() {
            Err(StoreError::Shared(e)) if tries < 5 && e.contains("os error 4") => {
                tries += 1;
                tracing::debug!("Redis: {e}; trying again");
            }
            r => return r,
        }
    }
}

/// Opens a client for `cfg.url` and checks it answers (PING) within 2 s.
pub fn connect(cfg: &RedisConfig) -> Result<redis::Connection, StoreError> {
    retry_eintr(|| connect_once(cfg))
}

fn connect_once(cfg: &RedisConfig) -> Result<redis::Connection, StoreError> {
    let client = if cfg.url.starts_with("rediss:") {
        // rustls needs a process-wide provider chosen before its first
        // client config (the TLS listeners pass theirs explicitly).
        static PROVIDER: std::sync::Once = std::sync::Once::new();
        PROVIDER.call_once(|| {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        });
        let root_cert = match &cfg.tls_ca {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                StoreError::Shared(format!("[store] tls_ca {}: {e}", path.display()))
            })?),
            None => None,
        };
        redis::Client::build_with_tls(
            cfg.url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert,
            },
        )
    } else {
        redis::Client::open(cfg.url.as_str())
    }
    .map_err(|e| unavailable(&e))?;
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| unavailable(&e))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| unavailable(&e))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| unavailable(&e))?;
    redis::cmd("PING")
        .query::<String>(&mut c)
        .map_err(|e| unavailable(&e))?;
    Ok(c)
}

/// The nonce secret every node shares: the one stored, or `mine` stored
/// now if there is none yet (SET NX: the first node's wins).
pub fn shared_secret(cfg: &RedisConfig, mine: &[u8; 32]) -> Result<[u8; 32], StoreError> {
    retry_eintr(|| shared_secret_once(cfg, mine))
}

fn shared_secret_once(cfg: &RedisConfig, mine: &[u8; 32]) -> Result<[u8; 32], StoreError> {
    let mut c = connect(cfg)?;
    let key = format!("{}:secret", cfg.prefix);
    let _: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(&mine[..])
        .arg("NX")
        .query(&mut c)
        .map_err(|e| unavailable(&e))?;
    let got: Vec<u8> = c.get(&key).map_err(|e| unavailable(&e))?;
    <[u8; 32]>::try_from(got.as_slice())
        .map_err(|_| StoreError::Shared(format!("{key} is not a 32-byte secret")))
}

/// Backoff between connection attempts.
#[derive(Debug)]
struct Backoff {
    next_try: Option<Instant>,
    delay: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self {
            next_try: None,
            delay: Self::MIN,
        }
    }

    fn ready(&self) -> bool {
        self.next_try.is_none_or(|t| Instant::now() >= t)
    }

    fn failed(&mut self) {
        self.next_try = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(Self::MAX);
    }

    fn succeeded(&mut self) {
        self.next_try = None;
        self.delay = Self::MIN;
    }
}

/// Whether Redis answered last, for the log and the metrics.
#[derive(Debug, Default)]
pub struct Status {
    /// True while the follower is connected.
    pub up: AtomicBool,
    /// Records of other nodes handed to the shards.
    pub applied: AtomicU64,
    /// Times the follower found the stream trimmed past its position.
    pub gaps: AtomicU64,
    /// Connections lost (follower and stores).
    pub disconnects: AtomicU64,
}

/// Records a store keeps for a later write while Redis is unreachable;
/// beyond it the oldest are dropped (counted, alarmed): their bindings
/// converge again as the UAs refresh.
const BACKLOG_MAX: usize = 100_000;

/// Records written per script call.
const CHUNK: usize = 512;

/// One shard's write path (module doc).
pub struct RedisStore {
    cfg: RedisConfig,
    /// This shard's records not yet written, oldest first: a batch whose
    /// write failed stays here (its REGISTERs were answered 503) and is
    /// written, in order, before anything newer, once Redis answers again.
    /// So no node ever sees an older value of a binding after a newer one,
    /// and what was acknowledged was written.
    backlog: std::collections::VecDeque<Record>,
    dropped: u64,
    conn: Option<redis::Connection>,
    script: redis::Script,
    backoff: Backoff,
    status: Arc<Status>,
    /// Reused argument buffer.
    args: Vec<Vec<u8>>,
}

impl core::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RedisStore")
            .field("node", &self.cfg.node)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store writing through `cfg` (connects on first use).
    pub fn new(cfg: RedisConfig, status: Arc<Status>) -> Self {
        Self {
            cfg,
            conn: None,
            script: redis::Script::new(WRITE),
            backoff: Backoff::new(),
            status,
            args: Vec::new(),
            backlog: std::collections::VecDeque::new(),
            dropped: 0,
        }
    }

    /// Records waiting for Redis.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Writes the backlog in order, a chunk per script call; stops at the
    /// first failure (what was not written stays).
    fn flush(&mut self) -> Result<(), StoreError> {
        let mut interrupted = 0;
        while !self.backlog.is_empty() {
            let n = self.backlog.len().min(CHUNK);
            let chunk: Vec<Record> = self.backlog.iter().take(n).cloned().collect();
            match self.write(&chunk) {
                Ok(()) => {
                    self.backlog.drain(..n);
                }
                // EINTR (see retry_eintr): not Redis failing. Writing the
                // chunk again is safe: every record is a whole value, and a
                // Remove or Forget already done adds nothing to the stream.
                Err(StoreError::Shared(e)) if interrupted < 2 && e.contains("os error 4") => {
                    interrupted += 1;
                    self.backoff.succeeded();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn conn(&mut self) -> Result<&mut redis::Connection, StoreError> {
        if self.conn.is_none() {
            if !self.backoff.ready() {
                return Err(StoreError::Shared(
                    "Redis unreachable (retrying with backoff)".into(),
                ));
            }
            match connect(&self.cfg) {
                Ok(c) => {
                    self.backoff.succeeded();
                    self.conn = Some(c);
                }
                Err(e) => {
                    self.backoff.failed();
                    return Err(e);
                }
            }
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Shared("no connection".into()))
    }

    fn push_args(&mut self, r: &Record) {
        let (t, key, field, val): (&[u8], Vec<u8>, Vec<u8>, Vec<u8>) = match &r.op {
            Op::Upsert(b) => (
                b"U",
                self.cfg.loc_key(b.aor()),
                binding_field(b.id()),
                b.as_bytes().to_vec(),
            ),
            Op::Remove { aor, id } => (
                b"R",
                self.cfg.loc_key(aor),
                binding_field(*id),
                r.commit.to_string().into_bytes(),
            ),
            Op::Forget { aor } => (b"F", self.cfg.loc_key(aor), Vec::new(), Vec::new()),
            Op::Put(e) => {
                let mut field = vec![e.kind];
                field.extend_from_slice(&e.key);
                let mut val = e.expires.to_le_bytes().to_vec();
                val.extend_from_slice(&e.value);
                (b"P", self.cfg.svc_key(&e.aor), field, val)
            }
            Op::Del { aor, kind, key } => {
                let mut field = vec![*kind];
                field.extend_from_slice(key);
                (b"D", self.cfg.svc_key(aor), field, Vec::new())
            }
        };
        let mut rec = Vec::new();
        if matches!(r.op, Op::Upsert(_) | Op::Remove { .. } | Op::Forget { .. }) {
            r.encode(&mut rec);
        }
        self.args.extend([t.to_vec(), key, field, val, rec]);
    }
}

impl Store for RedisStore {
    /// Per-shard stores load nothing: [`load`] reads the snapshot once for
    /// the process.
    fn load(&mut self, _wall: u64) -> Result<Vec<PartitionState>, StoreError> {
        Ok(Vec::new())
    }

    fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
        self.backlog
            .extend(records.iter().filter(|r| !r.remote).cloned());
        let over = self.backlog.len().saturating_sub(BACKLOG_MAX);
        if over > 0 {
            self.backlog.drain(..over);
            if self.dropped == 0 {
                tracing::error!("ALARM: Redis unreachable for too long: {BACKLOG_MAX} records waiting, dropping the oldest (bindings converge again as UAs refresh)");
            }
            self.dropped += over as u64;
        }
        self.flush()
    }

    fn idle(&mut self) {
        if !self.backlog.is_empty() && self.backoff.ready() {
            let n = self.backlog.len();
            if self.flush().is_ok() {
                tracing::info!("Redis answers again: {n} waiting record(s) written");
                self.dropped = 0;
            }
        }
    }

    fn wants_compaction(&self, _partition: u16) -> bool {
        false
    }

    fn compact(&mut self, _state: &PartitionState) -> Result<(), StoreError> {
        Ok(())
    }
}

impl RedisStore {
    fn write(&mut self, records: &[Record]) -> Result<(), StoreError> {
        self.args.clear();
        for r in records {
            self.push_args(r);
        }
        if self.args.is_empty() {
            return Ok(());
        }
        let args = core::mem::take(&mut self.args);
        let (node, max, stream) = (
            self.cfg.node.clone(),
            self.cfg.stream_max,
            self.cfg.stream(),
        );
        let script = self.script.clone();
        let result = {
            let c = self.conn()?;
            let mut inv = script.key(stream);
            inv.arg(node).arg(max);
            for a in &args {
                inv.arg(&a[..]);
            }
            inv.invoke::<u64>(c)
        };
        self.args = args;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.conn = None;
                    self.backoff.failed();
                    self.status.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                Err(unavailable(&e))
            }
        }
    }
}

/// The stream id the follower starts after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPos(pub String);

/// The stream's last id now ("0-0" when it is empty or absent).
fn last_id(c: &mut redis::Connection, cfg: &RedisConfig) -> Result<StreamPos, StoreError> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(cfg.stream())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(c)
        .map_err(|e| unavailable(&e))?;
    Ok(StreamPos(
        reply
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()),
    ))
}

/// The stream's first id, if it has entries.
fn first_id(c: &mut redis::Connection, cfg: &RedisConfig) -> Result<Option<String>, StoreError> {
    let reply: redis::streams::StreamRangeReply = c
        .xrange_count(cfg.stream(), "-", "+", 1)
        .map_err(|e| unavailable(&e))?;
    Ok(reply.ids.first().map(|e| e.id.clone()))
}

/// Stream ids compare as (ms, seq).
fn id_parts(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

/// Keys a SCAN asks for at once (and HGETALLs pipelined together).
const SCAN_COUNT: usize = 1000;

/// Loads every AoR's bindings (dropping those expired at `wall`) and this
/// node's presence entries into `partitions` states, and the stream
/// position to follow from (taken before the scan: module doc).
pub fn load(
    cfg: &RedisConfig,
    partitions: u16,
    wall: u64,
) -> Result<(Vec<PartitionState>, StreamPos), StoreError> {
    retry_eintr(|| load_once(cfg, partitions, wall))
}

fn load_once(
    cfg: &RedisConfig,
    partitions: u16,
    wall: u64,
) -> Result<(Vec<PartitionState>, StreamPos), StoreError> {
    let mut c = connect(cfg)?;
    let pos = last_id(&mut c, cfg)?;
    let n = partitions.max(1);
    let mut states: Vec<PartitionState> = (0..n)
        .map(|p| PartitionState {
            partition: p,
            ..PartitionState::default()
        })
        .collect();
    let loc_prefix = cfg.loc_key(b"");
    scan_hashes(&mut c, &loc_prefix, |aor, fields| {
        let p = crate::hash::partition_of(aor, n);
        let Some(st) = states.get_mut(usize::from(p)) else {
            return;
        };
        let mut live = 0;
        let mut empty_since = None;
        for (f, v) in fields {
            match f.first() {
                Some(b'b') => {
                    if let Ok(b) = Binding::from_bytes(&v) {
                        if b.expires() > wall {
                            st.bindings.push(b.for_another_node());
                            live += 1;
                        }
                    }
                }
                Some(b'e') => {
                    empty_since = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
                }
                _ => {}
            }
        }
        if live == 0 {
            st.empty.push(EmptyAor {
                aor: aor.into(),
                since: empty_since.unwrap_or(wall),
            });
        }
    })?;
    let svc_prefix = cfg.svc_key(b"");
    scan_hashes(&mut c, &svc_prefix, |aor, fields| {
        let p = crate::hash::partition_of(aor, n);
        let Some(st) = states.get_mut(usize::from(p)) else {
            return;
        };
        for (f, v) in fields {
            let (Some((&kind, key)), Some(exp)) = (f.split_first(), v.get(..8)) else {
                continue;
            };
            let expires = u64::from_le_bytes(<[u8; 8]>::try_from(exp).unwrap_or([0; 8]));
            if expires != 0 && expires <= wall {
                continue;
            }
            st.entries.push(Entry {
                kind,
                key: key.into(),
                aor: aor.into(),
                expires,
                value: v.get(8..).unwrap_or_default().into(),
            });
        }
    })?;
    for st in &mut states {
        st.bindings
            .sort_by(|a, b| (a.aor(), a.id()).cmp(&(b.aor(), b.id())));
        st.empty.sort();
        st.entries.sort();
    }
    Ok((states, pos))
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// SCANs the keys starting with `prefix`, HGETALLs them SCAN_COUNT at a
/// time in one pipeline, and calls `each(key without prefix, fields)`.
fn scan_hashes(
    c: &mut redis::Connection,
    prefix: &[u8],
    mut each: impl FnMut(&[u8], Fields),
) -> Result<(), StoreError> {
    let mut pattern = Vec::with_capacity(prefix.len() + 1);
    for &b in prefix {
        // Glob metacharacters in the prefix are matched literally.
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(b);
    }
    pattern.push(b'*');
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern[..])
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(c)
            .map_err(|e| unavailable(&e))?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("HGETALL").arg(&k[..]);
            }
            let all: Vec<Fields> = pipe.query(c).map_err(|e| unavailable(&e))?;
            for (k, fields) in keys.iter().zip(all) {
                if let Some(aor) = k.get(prefix.len()..) {
                    if !fields.is_empty() {
                        each(aor, fields);
                    }
                }
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(());
        }
    }
}

/// Where the follower hands a shard its batch of other nodes' records (the
/// shard runtime's inbox, `shard::remote::Inbox`).
pub trait RemoteSink {
    /// Queues `batch` for the shard; `Err` (the batch back) when full.
    fn push(&self, batch: Vec<Record>) -> Result<(), Vec<Record>>;

    /// Asks the shard to write its partition's bindings again.
    fn reseed(&self);
}

/// The follower (module doc): reads the stream from `pos` and hands each
/// record another node wrote to the shard owning its AoR, until `stop`.
pub fn follow<S: RemoteSink>(
    cfg: &RedisConfig,
    mut pos: StreamPos,
    shards: &[Arc<S>],
    status: &Status,
    stop: &AtomicBool,
) {
    let n = u16::try_from(shards.len()).unwrap_or(u16::MAX).max(1);
    let mut backoff = Backoff::new();
    let mut conn: Option<redis::Connection> = None;
    let mut was_up = true;
    let stream = cfg.stream();
    let mut batches: Vec<Vec<Record>> = vec![Vec::new(); usize::from(n)];
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            if !backoff.ready() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            match connect(cfg) {
                Ok(mut c) => {
                    backoff.succeeded();
                    // A gap: the stream was trimmed (or Redis restarted
                    // empty) past our position while we were away.
                    if pos.0 != "0-0" {
                        match first_id(&mut c, cfg) {
                            Ok(Some(first)) if id_parts(&first) > id_parts(&pos.0) => {
                                status.gaps.fetch_add(1, Ordering::Relaxed);
                                tracing::error!(
                                    "the Redis change stream was trimmed past this node's position ({} < {first}): changes in between are lost here; bindings converge as UAs refresh",
                                    pos.0
                                );
                            }
                            // The stream this node followed is gone: Redis
                            // lost its data (restarted without persistence,
                            // or flushed). Every node writes what it holds
                            // again (whole values: N copies are harmless).
                            Ok(None) => {
                                status.gaps.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!("the Redis change stream is gone (Redis restarted empty?): writing this node's bindings to it again");
                                for s in shards {
                                    s.reseed();
                                }
                                pos = StreamPos("0-0".to_owned());
                            }
                            _ => {}
                        }
                    }
                    if !was_up {
                        tracing::warn!(
                            "Redis reachable again: following the change stream from {}",
                            pos.0
                        );
                    }
                    was_up = true;
                    status.up.store(true, Ordering::Relaxed);
                    conn = Some(c);
                }
                Err(e) => {
                    backoff.failed();
                    if was_up {
                        tracing::error!("ALARM: Redis unreachable ({e}): calls keep routing from the replicas, REGISTER gets 503 until it is back");
                        status.disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    was_up = false;
                    status.up.store(false, Ordering::Relaxed);
                }
            }
            continue;
        };
        let opts = StreamReadOptions::default().block(500).count(FOLLOW_BATCH);
        let read: redis::RedisResult<Option<StreamReadReply>> =
            c.xread_options(&[&stream], &[&pos.0], &opts);
        let reply = match read {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!("Redis stream read: {e}");
                conn = None;
                continue;
            }
        };
        let mut read_count = 0;
        for key in reply.keys {
            read_count += key.ids.len();
            for entry in key.ids {
                pos = StreamPos(entry.id.clone());
                let node: Option<Vec<u8>> = entry.get("n");
                if node.as_deref() == Some(cfg.node.as_bytes()) {
                    continue;
                }
                let Some(bytes) = entry.get::<Vec<u8>>("r") else {
                    continue;
                };
                let Ok(mut r) = Record::decode(&bytes) else {
                    tracing::warn!("undecodable record {} in the Redis stream", entry.id);
                    continue;
                };
                r.remote = true;
                let p = crate::hash::partition_of(r.op.aor(), n);
                if let Some(b) = batches.get_mut(usize::from(p)) {
                    b.push(r);
                }
            }
        }
        for (shard, batch) in shards.iter().zip(batches.iter_mut()) {
            if batch.is_empty() {
                continue;
            }
            let count = batch.len() as u64;
            let mut b = core::mem::take(batch);
            // The shard drains its inbox every turn: wait while it is full.
            loop {
                match shard.push(b) {
                    Ok(()) => break,
                    Err(back) if !stop.load(Ordering::Relaxed) => {
                        b = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => return,
                }
            }
            status.applied.fetch_add(count, Ordering::Relaxed);
        }
        // Under load, one read per window instead of one per change: at
        // 5,000 changes/s that is ~10 entries per read with the default 2 ms,
        // for ~1 ms more visibility on average (Redis and both nodes spend
        // most of a write-through REGISTER's CPU on these round trips).
        if read_count < FOLLOW_BATCH && cfg.follow_window_ms > 0 {
            std::thread::sleep(Duration::from_millis(cfg.follow_window_ms));
        }
    }
}

/// Entries one follower read takes at most.
const FOLLOW_BATCH: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(id_parts("1700000000000-10") > id_parts("1700000000000-9"));
        assert!(id_parts("1700000000001-0") > id_parts("1700000000000-99"));
        assert_eq!(id_parts("0-0"), (0, 0));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        assert!(b.ready());
        for _ in 0..10 {
            b.failed();
        }
        assert_eq!(b.delay, Backoff::MAX);
        assert!(!b.ready());
        b.succeeded();
        assert!(b.ready());
        assert_eq!(b.delay, Backoff::MIN);
    }
}
