//! Sets of IP networks, compiled into sorted, merged ranges of one 128-bit
//! space (IPv4 as IPv4-mapped IPv6, `::ffff:a.b.c.d`), looked up by binary
//! search: O(log n), no allocation.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use core::net::{IpAddr, Ipv6Addr};

/// A set of networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetSet {
    // INVARIANT: sorted by start, non-overlapping and non-adjacent, start <= end.
    ranges: Vec<(u128, u128)>,
}

/// Why a network did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an address or CIDR network (a.b.c.d/n, x::y/n)")]
pub struct BadNetwork;

impl NetSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `10.0.0.0/8`, `2001:db8::/32`, or a bare address (host bits of a
    /// network are ignored, as `ip route` does).
    pub fn add_cidr(&mut self, s: &str) -> Result<(), BadNetwork> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| BadNetwork)?)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| BadNetwork)?;
        let (base, len) = match ip {
            IpAddr::V4(a) => {
                let len = len.unwrap_or(32);
                if len > 32 {
                    return Err(BadNetwork);
                }
                (key(IpAddr::V4(a)), len + 96)
            }
            IpAddr::V6(a) => {
                let len = len.unwrap_or(128);
                if len > 128 {
                    return Err(BadNetwork);
                }
                (u128::from(a), len)
            }
        };
        // len is 0..=128 here: 128 - len host bits.
        let host_mask = if len == 0 {
            u128::MAX
        } else {
            (1u128 << (128 - u32::from(len))).wrapping_sub(1)
        };
        self.add_range(base & !host_mask, base | host_mask);
        Ok(())
    }

    /// Adds every network of `other`.
    pub fn extend(&mut self, other: &Self) {
        for &(a, b) in &other.ranges {
            self.add_range(a, b);
        }
    }

    fn add_range(&mut self, start: u128, end: u128) {
        self.ranges.push((start, end));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.ranges = merged;
    }

    /// True when `ip` is in the set.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let k = key(ip);
        // The last range starting at or before k.
        let i = self.ranges.partition_point(|&(s, _)| s <= k);
        i > 0 && self.ranges.get(i - 1).is_some_and(|&(_, e)| k <= e)
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// An address in the one 128-bit space (IPv4 and IPv4-mapped IPv6 agree).
#[inline]
pub(crate) fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(a),
        },
    }
}

/// The address of a key (for tests and messages).
#[allow(dead_code)]
pub(crate) fn addr(k: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(k)).to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[&str]) -> NetSet {
        let mut s = NetSet::new();
        for n in list {
            s.add_cidr(n).unwrap();
        }
        s
    }

    #[test]
    fn membership() {
        let s = set(&[
            "10.0.0.0/8",
            "127.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "10.1.0.0/16",
        ]);
        let has = |a: &str| s.contains(a.parse().unwrap());
        assert!(has("10.0.0.0") && has("10.255.255.255") && has("10.1.2.3"));
        assert!(!has("11.0.0.0") && !has("9.255.255.255"));
        assert!(has("127.0.0.1") && has("192.0.2.7") && !has("192.0.2.8"));
        assert!(has("::ffff:10.2.3.4"), "IPv4-mapped IPv6");
        assert!(has("2001:db8:ffff::1") && !has("2001:db9::1"));
        assert!(!has("::1"));
        assert_eq!(s.ranges.len(), 4, "the /16 merges into the /8");
        let all = set(&["0.0.0.0/0", "::/0"]);
        assert!(all.contains("1.2.3.4".parse().unwrap()) && all.contains("::2".parse().unwrap()));
        let v4 = set(&["0.0.0.0/0"]);
        assert!(
            v4.contains("1.2.3.4".parse().unwrap()) && !v4.contains("2001:db8::1".parse().unwrap())
        );
        assert!(
            set(&["192.0.2.9/24"]).contains("192.0.2.200".parse().unwrap()),
            "host bits ignored"
        );
        assert!(!NetSet::new().contains("1.2.3.4".parse().unwrap()));
        assert_eq!(
            addr(key("10.0.0.1".parse().unwrap())),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn bad_networks() {
        let mut s = NetSet::new();
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "trusted",
            "1.2.3.4/x",
            "",
        ] {
            assert_eq!(s.add_cidr(bad), Err(BadNetwork), "{bad}");
        }
    }
}
