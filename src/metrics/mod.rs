//! Metrics for operators: the shards' published reports encoded in the
//! Prometheus text format (by `prometheus-client`, not by hand), served over
//! HTTP (`--metrics-listen`: `/metrics`, `/health`, `/ready`) and written to
//! a textfile (`--metrics-file`).
//!
//! ```text
//!  shard ──(about once a second, the one lock it takes)──► ShardReport slot
//!  scrape / textfile tick ──► Reports (a Collector) ──► clones every slot
//!                              └► families, one sample per shard {shard="N"}
//! ```
//!
//! Why a collector over snapshots rather than live `Counter`s: shards count
//! in plain integers with no atomics on the hot path (DESIGN.md); the
//! exporter reads the copies they publish. Label cardinality is bounded by
//! construction: the only label is the shard index (and `le` of histograms).
//!
//! The HTTP side ([`http`]) is a small blocking server on its own thread:
//! one connection at a time, bounded request size and time, GET only.

pub mod http;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::shard::ShardReport;

/// Histogram buckets of the replication lag and the store latency, seconds.
const LAG_BUCKETS: [f64; 10] = [
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Histogram buckets of the request-to-response time, seconds (an INVITE's
/// post-dial delay runs to seconds; Timer F is 32 s).
const RESPONSE_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 32.0,
];

/// Histogram buckets of the turn latency, seconds.
const TURN_BUCKETS: [f64; 9] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1,
];

/// The process's state as `/health` and `/ready` report it.
#[derive(Debug, Default)]
pub struct Health {
    /// Every shard started and the store loaded; false again on shutdown.
    pub ready: AtomicBool,
    /// A shard thread ended (a failure, or shutdown).
    pub shard_down: AtomicBool,
    /// The shared store's state (with `--store redis://…`).
    pub shared_store: std::sync::OnceLock<Arc<crate::store::redis::Status>>,
}

impl Health {
    /// `/health`: the process serves (no shard thread has ended).
    pub fn healthy(&self) -> bool {
        !self.shard_down.load(Ordering::Acquire)
    }

    /// `/ready`: healthy and past start-up.
    pub fn is_ready(&self) -> bool {
        self.healthy() && self.ready.load(Ordering::Acquire)
    }
}

/// The shards' report slots, as a Prometheus collector.
#[derive(Debug, Clone)]
pub struct Reports {
    slots: Vec<Arc<Mutex<ShardReport>>>,
    health: Arc<Health>,
}

impl Reports {
    /// A collector over `slots` (one per shard, in shard order).
    pub fn new(slots: Vec<Arc<Mutex<ShardReport>>>, health: Arc<Health>) -> Self {
        Self { slots, health }
    }

    /// A registry holding this collector alone.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(self.clone()));
        r
    }

    /// The text exposition of every metric (what `/metrics` serves).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug
        // of ours (a duplicate name): the partial text is still served.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }

    /// Every slot's last report, labelled by the slot's index (a report's own
    /// `id` is only set once its shard first published).
    fn snapshot(&self) -> Vec<ShardReport> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.lock().ok().map(|r| ShardReport {
                    id: i as u16,
                    ..r.clone()
                })
            })
            .collect()
    }
}

/// `name` without the `_total` the text encoder adds to counters.
fn base(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// One family of per-shard values.
fn family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl Iterator<Item = (u16, u64)>,
) -> Result<(), std::fmt::Error> {
    let name = if matches!(kind, MetricType::Counter) {
        base(name)
    } else {
        name
    };
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (shard, v) in values {
        let labels = [("shard", shard.to_string())];
        let mut s = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => {
                prometheus_client::metrics::counter::ConstCounter::new(v).encode(s)?
            }
            _ => s.encode_gauge(&(v as i64))?,
        }
    }
    Ok(())
}

impl Collector for Reports {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let reports = self.snapshot();
        let per = |f: &dyn Fn(&ShardReport) -> u64| -> Vec<(u16, u64)> {
            reports.iter().map(|r| (r.id, f(r))).collect()
        };
        // The proxy's, presence's and the connection table's counters: the
        // names they carry, one sample per shard.
        let Some(first) = reports.first() else {
            return Ok(());
        };
        let counter_names: Vec<&'static str> = first
            .service
            .pairs()
            .iter()
            .chain(first.service.presence.pairs().iter())
            .chain(first.service.auth_pairs().iter())
            .chain(first.conn.pairs().iter())
            .map(|(n, _)| *n)
            .collect();
        for (i, name) in counter_names.iter().enumerate() {
            let values = per(&|r: &ShardReport| {
                r.service
                    .pairs()
                    .iter()
                    .chain(r.service.presence.pairs().iter())
                    .chain(r.service.auth_pairs().iter())
                    .chain(r.conn.pairs().iter())
                    .nth(i)
                    .map_or(0, |(_, v)| *v)
            });
            let help = base(name)
                .strip_prefix("sipedge_")
                .unwrap_or(name)
                .replace('_', " ");
            family(
                &mut enc,
                name,
                &help,
                MetricType::Counter,
                values.into_iter(),
            )?;
        }
        type Get = fn(&ShardReport) -> u64;
        let counters: [(&str, &str, Get); 15] = [
            (
                "sipedge_shard_datagrams_received_total",
                "datagrams received",
                |r| r.driver.rx,
            ),
            (
                "sipedge_shard_datagrams_sent_total",
                "datagrams sent",
                |r| r.driver.tx,
            ),
            (
                "sipedge_shard_receive_errors_total",
                "receive errors",
                |r| r.driver.rx_errors,
            ),
            ("sipedge_shard_send_errors_total", "send errors", |r| {
                r.driver.tx_errors
            }),
            (
                "sipedge_shard_send_dropped_total",
                "sends dropped (full queue)",
                |r| r.driver.tx_dropped,
            ),
            ("sipedge_shard_loop_turns_total", "loop turns", |r| {
                r.driver.turns
            }),
            (
                "sipedge_xdp_received_total",
                "datagrams received on AF_XDP sockets",
                |r| r.driver.xdp_rx,
            ),
            (
                "sipedge_xdp_sent_total",
                "datagrams sent as frames on AF_XDP sockets",
                |r| r.driver.xdp_tx,
            ),
            (
                "sipedge_xdp_kernel_sent_total",
                "datagrams the AF_XDP driver sent through a kernel socket (unknown neighbour, other route, over the MTU, ring full)",
                |r| r.driver.xdp_kernel_tx,
            ),
            (
                "sipedge_xdp_skipped_total",
                "frames on AF_XDP sockets dropped as not ours (bad checksum, truncated, fragment, other port)",
                |r| r.driver.xdp_skipped,
            ),
            ("sipedge_store_records_total", "records made durable", |r| {
                r.io.records
            }),
            ("sipedge_store_errors_total", "store write errors", |r| {
                r.io.store_errors
            }),
            ("sipedge_store_compactions_total", "log compactions", |r| {
                r.io.compactions
            }),
            ("sipedge_mesh_sent_total", "messages to other shards", |r| {
                r.io.mesh_sent
            }),
            (
                "sipedge_mesh_dropped_total",
                "messages to other shards dropped (full queue)",
                |r| r.io.mesh_dropped,
            ),
        ];
        for (name, help, get) in counters {
            family(
                &mut enc,
                name,
                help,
                MetricType::Counter,
                per(&get).into_iter(),
            )?;
        }
        // By method and by status class: bounded labels (15 methods, 6 classes).
        let mut m = enc.encode_descriptor(
            "sipedge_proxy_requests_by_method",
            "requests received, by method",
            None,
            MetricType::Counter,
        )?;
        for r in &reports {
            for method in crate::sip::Method::ALL {
                let labels = [
                    ("shard", r.id.to_string()),
                    ("method", method.as_str().to_owned()),
                ];
                let v = r
                    .service
                    .requests_by_method
                    .get(method.index())
                    .copied()
                    .unwrap_or(0);
                prometheus_client::metrics::counter::ConstCounter::new(v)
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "sipedge_proxy_responses_by_class",
            "responses received, by status class",
            None,
            MetricType::Counter,
        )?;
        for r in &reports {
            for (i, v) in r.service.responses_by_class.iter().enumerate() {
                let labels = [
                    ("shard", r.id.to_string()),
                    ("class", format!("{}xx", i + 1)),
                ];
                prometheus_client::metrics::counter::ConstCounter::new(*v)
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "sipedge_proxy_local_responses_by_class",
            "responses the edge wrote itself (100 Trying, challenges, refusals, registrar and presence answers, 408/487/500), by status class",
            None,
            MetricType::Counter,
        )?;
        for r in &reports {
            for (i, v) in r.service.local_responses_by_class.iter().enumerate() {
                let labels = [
                    ("shard", r.id.to_string()),
                    ("class", format!("{}xx", i + 1)),
                ];
                prometheus_client::metrics::counter::ConstCounter::new(*v)
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "sipedge_proxy_shed",
            "requests shed under overload (503 with Retry-After), by reason: rate (over [overload] rate, the source over its fair share), turn_budget, overloaded (queue or transaction watermarks), max_transactions, mesh_full",
            None,
            MetricType::Counter,
        )?;
        for r in &reports {
            for reason in crate::policy::overload::ShedReason::ALL {
                let labels = [
                    ("shard", r.id.to_string()),
                    ("reason", reason.as_str().to_owned()),
                ];
                let v = r
                    .service
                    .shed_by_reason
                    .get(reason as usize)
                    .copied()
                    .unwrap_or(0);
                prometheus_client::metrics::counter::ConstCounter::new(v)
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        let gauges: [(&str, &str, Get); 5] = [
            (
                "sipedge_registrar_bindings",
                "bindings held by the shard's registrar partition",
                |r| r.service.bindings,
            ),
            (
                "sipedge_registrar_timers",
                "timers on the registrar wheel (binding expiries, AoR retention)",
                |r| r.service.registrar_timers,
            ),
            (
                "sipedge_presence_subscriptions",
                "subscriptions held by the shard's presence partition",
                |r| r.service.subscriptions,
            ),
            ("sipedge_txn_transactions_live", "transactions live", |r| {
                r.service.transactions_live
            }),
            (
                "sipedge_txn_timers",
                "timers on the transaction wheel (live and stale)",
                |r| r.service.timers_live,
            ),
        ];
        for (name, help, get) in gauges {
            family(
                &mut enc,
                name,
                help,
                MetricType::Gauge,
                per(&get).into_iter(),
            )?;
        }
        let mut m = enc.encode_descriptor(
            "sipedge_transport_connections",
            "open stream connections, by transport",
            None,
            MetricType::Gauge,
        )?;
        for r in &reports {
            for t in crate::transport::Transport::ALL {
                if t == crate::transport::Transport::Udp {
                    continue;
                }
                let labels = [
                    ("shard", r.id.to_string()),
                    ("transport", t.param().to_owned()),
                ];
                let v = r
                    .connections_by_transport
                    .get(t.index())
                    .copied()
                    .unwrap_or(0);
                m.encode_family(&labels)?.encode_gauge(&(v as i64))?;
            }
        }
        // Replication lag and store append latency, from each shard's HDR
        // histogram, as Prometheus histograms (seconds).
        hdr_family(
            &mut enc,
            "sipedge_location_replication_lag_seconds",
            "time from a binding's commit on its owner to its application on a replica",
            &LAG_BUCKETS,
            &reports,
            |r| r.lag.as_ref(),
        )?;
        hdr_family(
            &mut enc,
            "sipedge_store_append_seconds",
            "time from a batch's submission to the store to its completion (fsync included when on)",
            &LAG_BUCKETS,
            &reports,
            |r| r.store_latency.as_ref(),
        )?;
        hdr_family(
            &mut enc,
            "sipedge_proxy_response_seconds",
            "time from a new request's arrival to the first response other than 100 Trying sent back for it, forwarded or the edge's own (an INVITE's post-dial delay to its 18x; a REGISTER's includes its store write)",
            &RESPONSE_BUCKETS,
            &reports,
            |r| r.response_time.as_ref(),
        )?;
        hdr_family(
            &mut enc,
            "sipedge_shard_turn_seconds",
            "time from a loop turn's receive to its flush, for turns that received: how long a request waits inside the edge before its forward or answer is sent",
            &TURN_BUCKETS,
            &reports,
            |r| r.turn_latency.as_ref(),
        )?;
        if let Some(st) = self.health.shared_store.get() {
            let mut g = enc.encode_descriptor(
                "sipedge_store_shared_up",
                "1 while the shared store (Redis) answers the change-stream follower",
                None,
                MetricType::Gauge,
            )?;
            g.encode_gauge(&i64::from(st.up.load(Ordering::Relaxed)))?;
            for (name, help, v) in [
                (
                    "sipedge_store_shared_applied",
                    "records other nodes wrote, applied here",
                    &st.applied,
                ),
                (
                    "sipedge_store_shared_gaps",
                    "times the change stream was trimmed past this node's position",
                    &st.gaps,
                ),
                (
                    "sipedge_store_shared_disconnects",
                    "connections to the shared store lost",
                    &st.disconnects,
                ),
            ] {
                let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
                prometheus_client::metrics::counter::ConstCounter::new(v.load(Ordering::Relaxed))
                    .encode(m)?;
            }
        }
        let mut up = enc.encode_descriptor(
            "sipedge_ready",
            "1 when every shard runs and start-up is over",
            None,
            MetricType::Gauge,
        )?;
        up.encode_gauge(&i64::from(self.health.is_ready()))?;
        Ok(())
    }
}

/// One histogram family from per-shard HDR histograms of µs (shards
/// without one are left out).
fn hdr_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    bounds: &[f64],
    reports: &[ShardReport],
    get: impl Fn(&ShardReport) -> Option<&hdrhistogram::Histogram<u64>>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for r in reports {
        let Some(h) = get(r) else { continue };
        // The encoder sums the buckets itself: each gets its own count.
        let mut below = 0;
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .map(|&le| le * 1e6)
            .chain(std::iter::once(f64::MAX)) // the encoder's +Inf
            .map(|us| {
                let upto = if us == f64::MAX {
                    h.len()
                } else {
                    h.count_between(0, us as u64).min(h.len())
                };
                let n = upto.saturating_sub(below);
                below = below.max(upto);
                (if us == f64::MAX { us } else { us / 1e6 }, n)
            })
            .collect();
        let sum = h.mean() * h.len() as f64 / 1e6;
        let labels = [("shard", r.id.to_string())];
        m.encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum,
                h.len(),
                &buckets,
                None,
            )?;
    }
    Ok(())
}

/// Writes the text exposition to `file` atomically (`--metrics-file`).
pub fn write_file(reports: &Reports, file: &std::path::Path) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, reports.render())?;
    std::fs::rename(&tmp, file)
}
