//! Byte counts on the command line: `4096`, `4K`, `4KiB`, `10G` (binary multiples, as RBD's
//! and qemu-img's sizes are), and back for display.

const UNITS: [(&str, &str, u32); 5] = [
    ("kib", "k", 10),
    ("mib", "m", 20),
    ("gib", "g", 30),
    ("tib", "t", 40),
    ("pib", "p", 50),
];

/// Parses a positive byte count with an optional K, M, G, T, P (or KiB...) suffix.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (digits, shift) = UNITS
        .iter()
        .find_map(|(long, short, shift)| {
            lower
                .strip_suffix(long)
                .or_else(|| lower.strip_suffix(short))
                .map(|d| (d, *shift))
        })
        .unwrap_or((lower.as_str(), 0));
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, 4K, 1M, 10G)"))?;
    n.checked_mul(1u64 << shift)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// The largest whole binary unit: `4 MiB`, `10 GiB`, `1536 KiB`, `100 B`.
pub fn format_bytes(n: u64) -> String {
    for (long, _, shift) in UNITS.iter().rev() {
        let unit = 1u64 << shift;
        if n >= unit && n.is_multiple_of(unit) {
            let name = format!("{}iB", long[..1].to_ascii_uppercase());
            return format!("{} {name}", n / unit);
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("4K"), Ok(4096));
        assert_eq!(parse_bytes("4kib"), Ok(4096));
        assert_eq!(parse_bytes("1M"), Ok(1 << 20));
        assert_eq!(parse_bytes("10G"), Ok(10 << 30));
        assert_eq!(parse_bytes(" 2T "), Ok(2 << 40));
        for bad in ["", "0", "K", "1.5G", "-1", "1X", "99999999999P"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn formats_whole_units() {
        assert_eq!(format_bytes(4 << 20), "4 MiB");
        assert_eq!(format_bytes(10 << 30), "10 GiB");
        assert_eq!(format_bytes(1536 << 10), "1536 KiB");
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_bytes(0), "0 B");
    }
}
