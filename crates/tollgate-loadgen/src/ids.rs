//! Names on the wire: call-ids, from-tags, AoRs and contacts, derived from the run's sender
//! id, seed and a counter, so they are unique per run and the same seed replays them.

/// SplitMix64's finalizer: a cheap, well-spread bijection on `u64`.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Appends `n` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `n` as `width` lowercase hex digits (the low `4 * width` bits).
pub(crate) fn push_hex(out: &mut Vec<u8>, n: u64, width: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..width).rev() {
        out.push(HEX[((n >> (shift * 4)) & 0xF) as usize]);
    }
}

/// Builds the names of one run.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    sender: Vec<u8>,
    seed: u64,
}

impl Names {
    pub(crate) fn new(sender: &str, seed: u64) -> Self {
        Names {
            sender: sender.as_bytes().to_vec(),
            seed,
        }
    }

    /// `lg<n>-<seed hex>@<sender>`, e.g. `lg42-0000000000000007@loadgen-1234`.
    pub(crate) fn call_id(&self, call: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"lg");
        push_decimal(out, call);
        out.push(b'-');
        push_hex(out, self.seed, 16);
        out.push(b'@');
        out.extend_from_slice(&self.sender);
        debug_assert!(out.len() <= tollgate_events::FIELD_LEN_MAX);
    }

    /// Eight hex digits, a function of seed and call number.
    pub(crate) fn tag(&self, call: u64, out: &mut Vec<u8>) {
        out.clear();
        push_hex(out, mix(self.seed ^ mix(call)), 8);
    }

    /// `sip:u<k>-<seed hex>@<sender>.invalid`.
    pub(crate) fn aor(&self, aor: u32, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"sip:u");
        push_decimal(out, u64::from(aor));
        out.push(b'-');
        push_hex(out, self.seed, 16);
        out.push(b'@');
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(b".invalid");
        debug_assert!(out.len() <= tollgate_events::FIELD_LEN_MAX);
    }

    /// `sip:u<k>@h<j>.invalid:5060`.
    pub(crate) fn contact(&self, aor: u32, contact: u32, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(b"sip:u");
        push_decimal(out, u64::from(aor));
        out.extend_from_slice(b"@h");
        push_decimal(out, u64::from(contact));
        out.extend_from_slice(b".invalid:5060");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn names_have_the_documented_shape() {
        let names = Names::new("lg-1", 0xabc);
        assert_eq!(s(|o| names.call_id(42, o)), "lg42-0000000000000abc@lg-1");
        assert_eq!(
            s(|o| names.aor(7, o)),
            "sip:u7-0000000000000abc@lg-1.invalid"
        );
        assert_eq!(s(|o| names.contact(7, 2, o)), "sip:u7@h2.invalid:5060");
        assert_eq!(s(|o| names.tag(42, o)).len(), 8);
        assert_eq!(s(|o| push_decimal(o, 0)), "0");
        assert_eq!(s(|o| push_decimal(o, u64::MAX)), u64::MAX.to_string());
    }

    #[test]
    fn call_ids_differ_by_counter_seed_and_sender() {
        let a = Names::new("a", 1);
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|n| s(|o| a.call_id(n, o)))
            .chain([s(|o| Names::new("a", 2).call_id(0, o))])
            .chain([s(|o| Names::new("b", 1).call_id(0, o))])
            .collect();
        assert_eq!(ids.len(), 1002);
    }

    #[test]
    fn longest_sender_keeps_fields_within_the_limit() {
        let names = Names::new(&"x".repeat(crate::args::SENDER_ID_LEN_MAX), u64::MAX);
        assert!(s(|o| names.call_id(u64::MAX, o)).len() <= tollgate_events::FIELD_LEN_MAX);
        assert!(s(|o| names.aor(u32::MAX, o)).len() <= tollgate_events::FIELD_LEN_MAX);
    }
}
