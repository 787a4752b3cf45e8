//! Credit-based flow for pulling one file in chunks (the ZeroMQ guide's
//! fileio3): the receiver asks for at most `credit` chunks ahead of what it
//! has written and asks for one more as each arrives, so neither side ever
//! holds more than `credit` chunks of a file. Pure: offsets in, requests out.

/// The receiving side of one file.
#[derive(Debug)]
pub struct Receiver {
    size: u64,
    chunk: u32,
    credit: u32,
    /// Next offset not yet asked for.
    requested: u64,
    /// Bytes received, in order.
    received: u64,
    /// Chunks asked for and not yet received.
    outstanding: u32,
}

impl Receiver {
    pub fn new(size: u64, chunk: u32, credit: u32) -> Receiver {
        debug_assert!(chunk > 0 && credit > 0);
        Receiver {
            size,
            chunk,
            credit,
            requested: 0,
            received: 0,
            outstanding: 0,
        }
    }

    /// The `(offset, len)` requests to send now.
    pub fn requests(&mut self) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        while self.outstanding < self.credit && self.requested < self.size {
            let len = (self.size - self.requested).min(u64::from(self.chunk)) as u32;
            out.push((self.requested, len));
            self.requested += u64::from(len);
            self.outstanding += 1;
        }
        debug_assert!(self.outstanding <= self.credit);
        out
    }

    /// A chunk arrived. Chunks come back in the order asked (one pipe, one
    /// server loop), so anything else is an error.
    pub fn accept(&mut self, offset: u64, len: usize) -> Result<(), String> {
        if self.outstanding == 0 || offset != self.received {
            return Err(format!(
                "unexpected chunk at offset {offset} (expected {})",
                self.received
            ));
        }
        let want = (self.size - self.received).min(u64::from(self.chunk));
        if len as u64 != want {
            return Err(format!(
                "chunk at offset {offset} has {len} bytes, expected {want}"
            ));
        }
        self.received += len as u64;
        self.outstanding -= 1;
        Ok(())
    }

    pub fn is_complete(&self) -> bool {
        self.received == self.size
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_bounds_what_is_in_flight() {
        let mut r = Receiver::new(10, 3, 2);
        assert_eq!(r.requests(), vec![(0, 3), (3, 3)]);
        assert_eq!(r.requests(), vec![]);
        r.accept(0, 3).unwrap();
        assert_eq!(r.requests(), vec![(6, 3)]);
        r.accept(3, 3).unwrap();
        r.accept(6, 3).unwrap();
        assert_eq!(r.requests(), vec![(9, 1)]);
        assert!(!r.is_complete());
        r.accept(9, 1).unwrap();
        assert!(r.is_complete());
        assert_eq!(r.requests(), vec![]);
    }

    #[test]
    fn empty_files_need_no_request() {
        let mut r = Receiver::new(0, 3, 2);
        assert!(r.is_complete());
        assert!(r.requests().is_empty());
    }

    #[test]
    fn out_of_order_short_or_unasked_chunks_are_refused() {
        let mut r = Receiver::new(10, 4, 2);
        assert!(r.accept(0, 4).is_err(), "nothing was asked yet");
        r.requests();
        assert!(r.accept(4, 4).is_err());
        assert!(r.accept(0, 3).is_err());
        r.accept(0, 4).unwrap();
        assert_eq!(r.received(), 4);
    }
}
