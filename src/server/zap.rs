//! The ZAP protocol (ZeroMQ RFC 27), as the server's loop speaks it: libzmq
//! asks, for every CURVE handshake on our ports, whether the client's key may
//! come in, on the inproc endpoint `zeromq.zap.01`. We serve it from a ROUTER
//! in the loop (no thread), so each request arrives as
//! `[routing id][empty][version][request id][domain][address][identity]
//! [mechanism][credentials...]`. Pure parsing and encoding; the key table
//! decides.
//!
//! The user id we give an admitted peer (its key in Z85) comes back on every
//! message it sends as the `User-Id` property: the server routes and records
//! by that, never by a routing id a peer chose.

use crate::curve::PublicKey;
use crate::reactor::zmq::ZAP_DOMAIN;

/// Where libzmq sends ZAP requests.
pub const ENDPOINT: &str = "inproc://zeromq.zap.01";

/// One handshake to decide.
#[derive(Debug, PartialEq)]
pub struct ZapRequest {
    /// The ROUTER's id for the libzmq session asking.
    pub routing_id: Vec<u8>,
    pub request_id: Vec<u8>,
    /// The client's IP address.
    pub address: String,
    /// The client's long-term public key.
    pub key: PublicKey,
}

/// The decision.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// In, known from now on by this user id.
    Allow { user_id: String },
    /// Out: ZAP status 400, which the client sees as an authentication
    /// failure with that code.
    Deny { reason: &'static str },
}

/// Parse a request. An error names what is wrong, for the log; libzmq only
/// sends well-formed ones, so it means a bug, not a peer.
pub fn parse(frames: &[Vec<u8>]) -> Result<ZapRequest, String> {
    let [routing_id, delimiter, version, request_id, domain, address, _identity, mechanism, credentials @ ..] =
        frames
    else {
        return Err(format!("a ZAP request of {} frames", frames.len()));
    };
    if !delimiter.is_empty() || version.as_slice() != b"1.0" {
        return Err("a ZAP request without the 1.0 envelope".into());
    }
    if domain.as_slice() != ZAP_DOMAIN.as_bytes() {
        return Err(format!(
            "a ZAP request for domain '{}'",
            String::from_utf8_lossy(domain)
        ));
    }
    if mechanism.as_slice() != b"CURVE" {
        return Err(format!(
            "a ZAP request for mechanism '{}'",
            String::from_utf8_lossy(mechanism)
        ));
    }
    let key = match credentials {
        [key] => PublicKey::from_bytes(key),
        _ => None,
    }
    .ok_or("a CURVE ZAP request without a 32-byte key")?;
    Ok(ZapRequest {
        routing_id: routing_id.clone(),
        request_id: request_id.clone(),
        address: String::from_utf8_lossy(address).into_owned(),
        key,
    })
}

/// The reply frames for `req`.
pub fn reply(req: &ZapRequest, verdict: &Verdict) -> Vec<Vec<u8>> {
    let (code, text, user): (&[u8], &[u8], &[u8]) = match verdict {
        Verdict::Allow { user_id } => (b"200", b"OK", user_id.as_bytes()),
        Verdict::Deny { reason } => (b"400", reason.as_bytes(), b""),
    };
    vec![
        req.routing_id.clone(),
        Vec::new(),
        b"1.0".to_vec(),
        req.request_id.clone(),
        code.to_vec(),
        text.to_vec(),
        user.to_vec(),
        Vec::new(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::KeyPair;

    fn request(key: &[u8]) -> Vec<Vec<u8>> {
        vec![
            b"rid".to_vec(),
            vec![],
            b"1.0".to_vec(),
            b"7".to_vec(),
            ZAP_DOMAIN.as_bytes().to_vec(),
            b"10.0.0.9".to_vec(),
            vec![],
            b"CURVE".to_vec(),
            key.to_vec(),
        ]
    }

    #[test]
    fn requests_parse_and_replies_keep_the_envelope() {
        let key = KeyPair::generate().public;
        let req = parse(&request(key.as_bytes())).unwrap();
        assert_eq!(req.key, key);
        assert_eq!(req.address, "10.0.0.9");
        let ok = reply(&req, &Verdict::Allow { user_id: key.z85() });
        assert_eq!(ok[0], b"rid");
        assert!(ok[1].is_empty());
        assert_eq!(ok[3], b"7");
        assert_eq!(ok[4], b"200");
        assert_eq!(ok[6], key.z85().as_bytes());
        let no = reply(&req, &Verdict::Deny { reason: "rejected" });
        assert_eq!(no[4], b"400");
        assert!(no[6].is_empty());
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert!(parse(&request(b"short")).is_err());
        assert!(parse(&request(&[0; 32])[..5]).is_err());
        let mut plain = request(&[0; 32]);
        plain[7] = b"PLAIN".to_vec();
        assert!(parse(&plain).unwrap_err().contains("PLAIN"));
        let mut other = request(&[0; 32]);
        other[4] = b"elsewhere".to_vec();
        assert!(parse(&other).is_err());
    }
}
