//! Variable-length integers for packed state: seven bits a byte, low
//! bits first, signed numbers zigzag-mapped so that small magnitudes of
//! either sign take one byte.

/// Appends `value`.
pub(crate) fn put(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push(value as u8 | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

/// Appends `value`, zigzag-mapped.
pub(crate) fn put_signed(bytes: &mut Vec<u8>, value: i64) {
    put(bytes, ((value << 1) ^ (value >> 63)) as u64);
}

/// Appends `0` for `None`, else `1` and the value.
pub(crate) fn put_option(bytes: &mut Vec<u8>, value: Option<i64>) {
    match value {
        None => put(bytes, 0),
        Some(value) => {
            put(bytes, 1);
            put_signed(bytes, value);
        }
    }
}

/// Appends the length of `text`, then its bytes.
pub(crate) fn put_str(bytes: &mut Vec<u8>, text: &str) {
    put(bytes, text.len() as u64);
    bytes.extend_from_slice(text.as_bytes());
}

/// Makes room for `more` bytes, growing a buffer of packed state by a
/// quarter rather than doubling it: such a buffer is most of its owner.
pub(crate) fn reserve(bytes: &mut Vec<u8>, more: usize) {
    if bytes.capacity() - bytes.len() < more {
        bytes.reserve_exact(bytes.capacity() / 4 + more);
    }
}

/// Reads what the `put` functions wrote, in the same order.
pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
    /// The offset of the next byte to read.
    pub(crate) at: usize,
}

impl<'a> Reader<'a> {
    /// A number written by [`put`].
    pub(crate) fn next(&mut self) -> u64 {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = self.bytes[self.at];
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return value;
            }
            shift += 7;
        }
    }

    /// A number written by [`put_signed`].
    pub(crate) fn signed(&mut self) -> i64 {
        let value = self.next();
        ((value >> 1) as i64) ^ -((value & 1) as i64)
    }

    /// A value written by [`put_option`].
    pub(crate) fn option(&mut self) -> Option<i64> {
        (self.next() == 1).then(|| self.signed())
    }

    /// A string written by [`put_str`].
    pub(crate) fn str(&mut self) -> &'a str {
        let length = self.next() as usize;
        let text = &self.bytes[self.at..self.at + length];
        self.at += length;
        std::str::from_utf8(text).expect("ids are written from strings")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_of_every_size_and_sign_read_back() {
        let numbers = [0, 1, -1, 63, -64, 64, 1 << 40, -(1 << 40), i64::MAX, i64::MIN];
        let mut bytes = Vec::new();
        for n in numbers {
            put_signed(&mut bytes, n);
            put(&mut bytes, n as u64);
            put_option(&mut bytes, (n % 2 == 0).then_some(n));
        }
        put_str(&mut bytes, "S0000042");
        let mut reader = Reader { bytes: &bytes, at: 0 };
        for n in numbers {
            assert_eq!(reader.signed(), n);
            assert_eq!(reader.next(), n as u64);
            assert_eq!(reader.option(), (n % 2 == 0).then_some(n));
        }
        assert_eq!(reader.str(), "S0000042");
        assert_eq!(reader.at, bytes.len());
        let mut small = Vec::new();
        put_signed(&mut small, -64);
        assert_eq!(small.len(), 1, "small magnitudes of either sign take one byte");
    }
}
