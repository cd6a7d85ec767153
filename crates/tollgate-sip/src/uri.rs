//! The little URI handling metering needs: the address-of-record key, the user part, and
//! emergency detection. Not a URI parser: no escapes are decoded, nothing is validated.

/// The address-of-record of a registration, from the To URI of the 200 OK to REGISTER:
/// `scheme:user@host[:port]` with the scheme and host lowercased, URI parameters (`;…`)
/// and headers (`?…`) removed. The user part is kept as sent (it is case-sensitive in SIP
/// URIs); so is the port. A URI without a scheme is lowercased whole up to its parameters.
///
/// `<sip:Alice@Example.COM;transport=udp>` (brackets already removed by the parser) →
/// `sip:Alice@example.com`.
pub fn normalize_aor(uri: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(uri.len());
    let (scheme, rest) = match uri.iter().position(|&b| b == b':') {
        Some(i)
            if i > 0
                && uri[..i]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b)) =>
        {
            (&uri[..i], &uri[i + 1..])
        }
        _ => (&uri[..0], uri),
    };
    if !scheme.is_empty() {
        out.extend(scheme.iter().map(u8::to_ascii_lowercase));
        out.push(b':');
    }
    match rest.iter().position(|&b| b == b'@') {
        Some(at) => {
            out.extend_from_slice(&rest[..=at]);
            let host = &rest[at + 1..];
            let end = host
                .iter()
                .position(|&b| matches!(b, b';' | b'?'))
                .unwrap_or(host.len());
            out.extend(host[..end].iter().map(u8::to_ascii_lowercase));
        }
        None => {
            // No user part: `sip:example.com`, `tel:+4312345;phone-context=…`.
            let end = rest
                .iter()
                .position(|&b| matches!(b, b';' | b'?'))
                .unwrap_or(rest.len());
            let lower = scheme.is_empty() || !scheme.eq_ignore_ascii_case(b"tel");
            if lower {
                out.extend(rest[..end].iter().map(u8::to_ascii_lowercase));
            } else {
                out.extend_from_slice(&rest[..end]);
            }
        }
    }
    out
}

/// The user part of a `sip:`/`sips:` URI (before `@`, without user parameters such as
/// `;phone-context`), or the number of a `tel:` URI (before its parameters).
pub fn user_part(uri: &[u8]) -> Option<&[u8]> {
    let colon = uri.iter().position(|&b| b == b':')?;
    let (scheme, rest) = (&uri[..colon], &uri[colon + 1..]);
    let user = if scheme.eq_ignore_ascii_case(b"tel") {
        rest
    } else if scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips") {
        let at = rest.iter().position(|&b| b == b'@')?;
        &rest[..at]
    } else {
        return None;
    };
    let end = user
        .iter()
        .position(|&b| matches!(b, b';' | b':' | b'?'))
        .unwrap_or(user.len());
    Some(&user[..end])
}

/// The emergency service URN prefix (RFC 5031): `urn:service:sos` and its sub-services
/// (`urn:service:sos.police`, …).
pub const SOS_URN: &[u8] = b"urn:service:sos";

/// Whether a Request-URI asks for an emergency service: an `urn:service:sos` URN (any
/// sub-service, case-insensitive), or a `sip:`/`sips:`/`tel:` URI whose user part is
/// exactly one of `numbers` (e.g. `112`, `911`).
pub fn is_emergency(request_uri: &[u8], numbers: &[Vec<u8>]) -> bool {
    if request_uri.len() >= SOS_URN.len()
        && request_uri[..SOS_URN.len()].eq_ignore_ascii_case(SOS_URN)
        && matches!(request_uri.get(SOS_URN.len()), None | Some(b'.' | b';'))
    {
        return true;
    }
    user_part(request_uri).is_some_and(|user| numbers.iter().any(|n| n.as_slice() == user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aor(uri: &str) -> String {
        String::from_utf8(normalize_aor(uri.as_bytes())).unwrap()
    }

    #[test]
    fn aor_drops_params_and_lowercases_scheme_and_host() {
        assert_eq!(aor("sip:alice@example.com"), "sip:alice@example.com");
        assert_eq!(
            aor("SIP:Alice@Example.COM;transport=udp"),
            "sip:Alice@example.com"
        );
        assert_eq!(
            aor("sips:bob@EX.com:5061;lr?subject=x"),
            "sips:bob@ex.com:5061"
        );
        assert_eq!(aor("sip:Example.com;x=y"), "sip:example.com");
        assert_eq!(aor("tel:+43-1-234;phone-context=AT"), "tel:+43-1-234");
        assert_eq!(aor("alice@Example.com"), "alice@example.com");
        assert_eq!(aor(""), "");
    }

    #[test]
    fn user_part_of_sip_and_tel_uris() {
        assert_eq!(user_part(b"sip:112@example.com"), Some(&b"112"[..]));
        assert_eq!(
            user_part(b"sip:112;phone-context=x@example.com;user=phone"),
            Some(&b"112"[..])
        );
        assert_eq!(user_part(b"sips:alice:pw@example.com"), Some(&b"alice"[..]));
        assert_eq!(user_part(b"tel:911;phone-context=+1"), Some(&b"911"[..]));
        assert_eq!(user_part(b"sip:example.com"), None);
        assert_eq!(user_part(b"urn:service:sos"), None);
        assert_eq!(user_part(b"nothing"), None);
    }

    #[test]
    fn emergency_uris() {
        let numbers = [b"112".to_vec(), b"911".to_vec()];
        for yes in [
            "urn:service:sos",
            "URN:Service:SOS",
            "urn:service:sos.police",
            "urn:service:sos;x",
            "sip:112@example.com",
            "sip:911@10.0.0.1:5060;user=phone",
            "tel:112",
        ] {
            assert!(is_emergency(yes.as_bytes(), &numbers), "{yes}");
        }
        for no in [
            "urn:service:sossy",
            "urn:service:counseling",
            "sip:1120@example.com",
            "sip:alice@112",
            "sip:example.com",
            "tel:+112",
        ] {
            assert!(!is_emergency(no.as_bytes(), &numbers), "{no}");
        }
        assert!(!is_emergency(b"sip:112@example.com", &[]));
    }
}
