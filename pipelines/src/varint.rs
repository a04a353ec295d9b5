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

/// Reads what the `put` functions wrote, in the same order. It never
/// panics: reading past the end gives zeros and empty strings and leaves
/// `at` beyond the end, so that one check of `at` after reading a whole
/// entry tells whether the bytes held one (as when restoring a
/// checkpoint).
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
            let Some(&byte) = self.bytes.get(self.at) else {
                self.at = self.bytes.len() + 1;
                return 0;
            };
            self.at += 1;
            value |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
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
        let text = self.at.checked_add(length).and_then(|end| self.bytes.get(self.at..end));
        match text.map(std::str::from_utf8) {
            Some(Ok(text)) => {
                self.at += length;
                text
            }
            _ => {
                self.at = self.bytes.len() + 1;
                ""
            }
        }
    }
}

/// Bytes a checkpoint holds as one run (a length and the bytes), not a
/// sequence of numbers.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl serde::Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// What [`Bytes`] wrote, read back in one piece.
pub(crate) struct ByteBuf(pub(crate) Vec<u8>);

impl<'de> serde::Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Run;
        impl serde::de::Visitor<'_> for Run {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(bytes.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(bytes))
            }
        }
        deserializer.deserialize_byte_buf(Run)
    }
}

/// The next field of a layout read as a sequence, or an error saying that
/// `what` ends early.
pub(crate) fn field<'de, T: serde::Deserialize<'de>, A: serde::de::SeqAccess<'de>>(
    seq: &mut A,
    what: &str,
) -> Result<T, A::Error> {
    seq.next_element()?.ok_or_else(|| serde::de::Error::custom(format!("{what} ends early")))
}

/// A state a checkpoint holds as a sequence of fields: what it is called
/// in errors, and how its fields are read (each with [`field`]).
pub(crate) trait Layout: Sized {
    /// What it is, e.g. `a fridge's sessions`.
    const WHAT: &'static str;

    /// Reads the fields.
    fn read<'de, A: serde::de::SeqAccess<'de>>(seq: A) -> Result<Self, A::Error>;
}

/// Deserializes a [`Layout`] of at most `fields` fields.
pub(crate) fn read_layout<'de, T: Layout, D: serde::Deserializer<'de>>(
    deserializer: D,
    fields: usize,
) -> Result<T, D::Error> {
    struct Fields<T>(std::marker::PhantomData<T>);
    impl<'de, T: Layout> serde::de::Visitor<'de> for Fields<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(T::WHAT)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
            T::read(seq)
        }
    }
    deserializer.deserialize_tuple(fields, Fields(std::marker::PhantomData))
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
        assert_eq!((reader.next(), reader.str()), (0, ""), "past the end");
        assert!(reader.at > bytes.len());
        let mut bad = Reader { bytes: &[3, b'a', 0xff, b'c'], at: 0 };
        assert_eq!(bad.str(), "", "not UTF-8");
        assert!(bad.at > 4);
        let mut small = Vec::new();
        put_signed(&mut small, -64);
        assert_eq!(small.len(), 1, "small magnitudes of either sign take one byte");
    }
}
