//! The `Date` header value (RFC 3261 §20.17: RFC 1123 dates, always GMT),
//! from a wall-clock input in unix µs. No allocation, no clock.

/// Length of `Sat, 13 Nov 2010 23:29:00 GMT`.
pub const LEN: usize = 29;

const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn two(out: &mut [u8; LEN], at: usize, v: u32) {
    if let Some(s) = out.get_mut(at..at + 2) {
        s.copy_from_slice(&[b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8]);
    }
}

/// Formats `wall` (unix µs) as an RFC 1123 date.
pub fn format(wall: u64) -> [u8; LEN] {
    let secs = wall / 1_000_000;
    let days = (secs / 86_400) as i64;
    let tod = (secs % 86_400) as u32;
    let (y, m, d) = civil(days);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    let dow = DAYS.get((days % 7) as usize).copied().unwrap_or(b"Thu");
    let mon = MONTHS
        .get((m as usize).saturating_sub(1))
        .copied()
        .unwrap_or(b"Jan");
    if let Some(s) = out.get_mut(0..3) {
        s.copy_from_slice(dow);
    }
    two(&mut out, 5, d);
    if let Some(s) = out.get_mut(8..11) {
        s.copy_from_slice(mon);
    }
    let y = y.clamp(0, 9999) as u32;
    two(&mut out, 12, y / 100);
    two(&mut out, 14, y % 100);
    two(&mut out, 17, tod / 3600);
    two(&mut out, 20, tod / 60 % 60);
    two(&mut out, 23, tod % 60);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc1123() {
        let cases: &[(u64, &str)] = &[
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (1_289_690_940, "Sat, 13 Nov 2010 23:29:00 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 GMT"),
            (4_102_444_800, "Fri, 01 Jan 2100 00:00:00 GMT"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                std::str::from_utf8(&format(secs * 1_000_000)).unwrap(),
                *want
            );
        }
    }
}
