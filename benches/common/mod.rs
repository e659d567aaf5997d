//! Shared by the benches: criterion's measurement as the bench thread's CPU
//! time (`/proc/thread-self/schedstat`), not wall time — on a machine shared
//! with other work, time spent descheduled is not the code's.
//! `SIPEDGE_BENCH_WALL=1` measures wall time instead.

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::Throughput;

/// CPU time of this thread, in ns (wall time with `SIPEDGE_BENCH_WALL=1`).
pub(crate) struct CpuTime {
    wall: bool,
    t0: std::time::Instant,
}

impl CpuTime {
    pub(crate) fn new() -> Self {
        Self {
            wall: std::env::var_os("SIPEDGE_BENCH_WALL").is_some(),
            t0: std::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        if self.wall {
            return self.t0.elapsed().as_nanos() as u64;
        }
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    }
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        self.now()
    }
    fn end(&self, i: u64) -> u64 {
        self.now().saturating_sub(i)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NsFormatter
    }
}

struct NsFormatter;

impl ValueFormatter for NsFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (f, unit) = match typical {
            t if t < 1e3 => (1.0, "ns"),
            t if t < 1e6 => (1e-3, "µs"),
            t if t < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        values.iter_mut().for_each(|v| *v *= f);
        unit
    }

    fn scale_throughputs(&self, typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match *t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => {
                n as f64
            }
        };
        let per_sec = n * 1e9 / typical;
        let (f, unit) = if per_sec >= 1e6 {
            (1e-6, "Melem/s")
        } else {
            (1e-3, "Kelem/s")
        };
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v * f);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// REGISTERs of `n` distinct users with CSeq `cseq`, as a softphone sends
/// them (RFC 5626 instance and reg-id, NAT: the source is not the Via).
pub(crate) fn registers(n: usize, cseq: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!(
                "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.1.{}.{}:5060;rport;branch=z9hG4bK-{i}-{cseq}\r\n\
Max-Forwards: 70\r\n\
From: <sip:user{i:07}@example.com>;tag=f{i}\r\n\
To: <sip:user{i:07}@example.com>\r\n\
Call-ID: {i:016x}-7f3a9c@10.0.0.1\r\n\
CSeq: {cseq} REGISTER\r\n\
Contact: <sip:user{i:07}@10.1.{}.{}:5060;transport=udp>;+sip.instance=\"<urn:uuid:{i:08x}-0000-1000-8000-aabbccddeeff>\";reg-id=1\r\n\
Expires: 3600\r\n\
User-Agent: Linphone/5.2.0 (belle-sip/5.2.0)\r\n\
Supported: path, outbound\r\n\
Content-Length: 0\r\n\r\n",
                (i >> 8) & 255,
                i & 255,
                (i >> 8) & 255,
                i & 255
            )
            .into_bytes()
        })
        .collect()
}
