//! Framing: `uint32 length (big-endian, counting the command byte) + command byte + payload`.
//!
//! [`FilterCodec`] is our side (decodes [`Command`], encodes [`Response`]); [`MtaCodec`] is
//! Postfix's side, for tests and the benchmark. Both check the declared length against the cap
//! *before* reserving anything, reserve at most one ordinary packet ahead of what arrived
//! ([`MAX_RESERVE_AHEAD`]), return `Ok(None)` until a packet is whole, refuse to encode what
//! they would refuse to decode, and know nothing of session stages.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::ProtocolError;
use super::command::Command;
use super::response::Response;

/// The most [`take_packet`] reserves ahead of the bytes that have arrived: one whole packet
/// of the largest size Postfix sends in the ordinary course (a 65 535-byte body chunk, its
/// command byte and the length). A longer declared length (up to the cap) is not trusted
/// for allocation: the buffer then grows only as the bytes actually come in.
pub const MAX_RESERVE_AHEAD: usize = 4 + 1 + 65_535;

/// Takes one whole packet off the front of `src`, if there is one.
///
/// Checks the declared length (0, or over `max_len`) before anything is reserved; consumes
/// nothing until the packet is whole.
fn take_packet(src: &mut BytesMut, max_len: u32) -> Result<Option<(u8, Bytes)>, ProtocolError> {
    let Some(head) = src.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if len == 0 {
        return Err(ProtocolError::EmptyPacket);
    }
    if len > max_len {
        return Err(ProtocolError::TooLong { len, max: max_len });
    }
    // len ≤ max_len ≤ u32::MAX, and usize is at least 32 bits on every target we build for;
    // the conversion still fails cleanly rather than truncate.
    let payload_len =
        usize::try_from(len - 1).map_err(|_| ProtocolError::TooLong { len, max: max_len })?;
    let whole = payload_len.saturating_add(5);
    if src.len() < whole {
        // Room for the rest of this packet, bounded by the cap (checked above) and by
        // MAX_RESERVE_AHEAD, so a peer cannot make us allocate by declaring alone.
        let missing = whole - src.len();
        src.reserve(missing.min(MAX_RESERVE_AHEAD));
        return Ok(None);
    }
    src.advance(4);
    let code = src.get_u8();
    let payload = src.split_to(payload_len).freeze();
    Ok(Some((code, payload)))
}

/// Appends one packet; the same cap as for decoding applies, so we never send what our own
/// decoder (or an MTA with the same limit) would refuse.
fn put_packet(
    code: u8,
    payload: &[u8],
    max_len: u32,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let len = u32::try_from(payload.len())
        .ok()
        .and_then(|n| n.checked_add(1))
        .filter(|&n| n <= max_len)
        .ok_or(ProtocolError::TooLong {
            len: u32::try_from(payload.len().saturating_add(1)).unwrap_or(u32::MAX),
            max: max_len,
        })?;
    dst.reserve(payload.len() + 5);
    dst.put_u32(len);
    dst.put_u8(code);
    dst.put_slice(payload);
    Ok(())
}

/// The filter's side of the connection.
#[derive(Debug, Clone)]
pub struct FilterCodec {
    max_len: u32,
}

impl FilterCodec {
    /// `max_len` caps the declared packet length (command byte included).
    pub fn new(max_len: u32) -> Self {
        Self { max_len }
    }
}

impl Decoder for FilterCodec {
    type Item = Command;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Command>, ProtocolError> {
        match take_packet(src, self.max_len)? {
            Some((code, payload)) => Command::parse(code, payload).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Command>, ProtocolError> {
        match self.decode(src)? {
            Some(command) => Ok(Some(command)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Truncated("packet at end of stream")),
        }
    }
}

impl Encoder<Response> for FilterCodec {
    type Error = ProtocolError;

    fn encode(&mut self, response: Response, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let mut payload = BytesMut::new();
        response.encode_payload(&mut payload);
        put_packet(response.code(), &payload, self.max_len, dst)
    }
}

/// The MTA's side of the connection (tests, benchmark, fuzzing).
#[derive(Debug, Clone)]
pub struct MtaCodec {
    max_len: u32,
}

impl MtaCodec {
    /// `max_len` caps the declared packet length (command byte included).
    pub fn new(max_len: u32) -> Self {
        Self { max_len }
    }
}

impl Decoder for MtaCodec {
    type Item = Response;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Response>, ProtocolError> {
        match take_packet(src, self.max_len)? {
            Some((code, payload)) => Response::parse(code, payload).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Response>, ProtocolError> {
        match self.decode(src)? {
            Some(response) => Ok(Some(response)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Truncated("packet at end of stream")),
        }
    }
}

impl Encoder<Command> for MtaCodec {
    type Error = ProtocolError;

    fn encode(&mut self, command: Command, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let mut payload = BytesMut::new();
        command.encode_payload(&mut payload);
        put_packet(command.code(), &payload, self.max_len, dst)
    }
}

#[cfg(test)]
mod tests {
    //! The framing, spelled out as in tokio-util's `length_delimited` tests.
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MAX: u32 = 1024;

    fn filter() -> FilterCodec {
        FilterCodec::new(MAX)
    }

    fn buf(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    /// Postfix 3.7's first packet, as captured (PEERS.md §4).
    const POSTFIX_OPTNEG: [u8; 17] = [
        0x00, 0x00, 0x00, 0x0d, b'O', 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x01, 0xff, 0x00, 0x1f,
        0xff, 0xff,
    ];

    #[test]
    fn reads_postfix_optneg() {
        let mut src = buf(&POSTFIX_OPTNEG);
        let command = filter().decode(&mut src).unwrap();
        assert_eq!(
            command,
            Some(Command::OptNeg {
                version: 6,
                actions: 0x1ff,
                protocol: 0x1f_ffff
            })
        );
        assert!(src.is_empty());
    }

    #[test]
    fn read_empty_buffer_is_none() {
        let mut src = BytesMut::new();
        assert_eq!(filter().decode(&mut src).unwrap(), None);
        assert_eq!(filter().decode_eof(&mut src).unwrap(), None);
    }

    #[test]
    fn read_incomplete_head() {
        for n in 1..4 {
            let mut src = buf(&POSTFIX_OPTNEG[..n]);
            assert_eq!(filter().decode(&mut src).unwrap(), None);
            assert_eq!(
                src.len(),
                n,
                "nothing is consumed before the packet is whole"
            );
        }
    }

    #[test]
    fn read_incomplete_payload() {
        for n in 4..POSTFIX_OPTNEG.len() {
            let mut src = buf(&POSTFIX_OPTNEG[..n]);
            assert_eq!(filter().decode(&mut src).unwrap(), None);
            assert_eq!(&src[..], &POSTFIX_OPTNEG[..n]);
        }
    }

    #[test]
    fn read_single_packet_multi_chunk() {
        let mut codec = filter();
        let mut src = BytesMut::new();
        for (i, byte) in POSTFIX_OPTNEG.iter().enumerate() {
            src.extend_from_slice(&[*byte]);
            let decoded = codec.decode(&mut src).unwrap();
            assert_eq!(decoded.is_some(), i == POSTFIX_OPTNEG.len() - 1);
        }
    }

    #[test]
    fn read_multiple_packets_in_one_buffer() {
        let mut src = buf(&POSTFIX_OPTNEG);
        src.extend_from_slice(&[0, 0, 0, 1, b'A', 0, 0, 0, 1, b'Q']);
        let mut codec = filter();
        assert!(matches!(
            codec.decode(&mut src).unwrap(),
            Some(Command::OptNeg { .. })
        ));
        assert_eq!(codec.decode(&mut src).unwrap(), Some(Command::Abort));
        assert_eq!(codec.decode(&mut src).unwrap(), Some(Command::Quit));
        assert_eq!(codec.decode(&mut src).unwrap(), None);
    }

    #[test]
    fn zero_length_is_an_error() {
        let mut src = buf(&[0, 0, 0, 0, b'Q']);
        assert!(matches!(
            filter().decode(&mut src),
            Err(ProtocolError::EmptyPacket)
        ));
        let mut src = buf(&[0, 0, 0, 0]);
        assert!(matches!(
            MtaCodec::new(MAX).decode(&mut src),
            Err(ProtocolError::EmptyPacket)
        ));
    }

    #[test]
    fn rejects_packet_longer_than_max() {
        let mut src = buf(&(MAX + 1).to_be_bytes());
        let capacity_before = src.capacity();
        match filter().decode(&mut src) {
            Err(ProtocolError::TooLong { len, max }) => {
                assert_eq!((len, max), (MAX + 1, MAX));
            }
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert_eq!(
            src.capacity(),
            capacity_before,
            "nothing reserved for a refused length"
        );

        let mut src = buf(&u32::MAX.to_be_bytes());
        assert!(matches!(
            filter().decode(&mut src),
            Err(ProtocolError::TooLong { .. })
        ));
    }

    #[test]
    fn read_max_packet_len() {
        let mut packet = BytesMut::new();
        packet.put_u32(MAX);
        packet.put_u8(b'B');
        packet.put_bytes(b'x', MAX as usize - 1);
        let mut src = packet.clone();
        match filter().decode(&mut src).unwrap() {
            Some(Command::Body(chunk)) => assert_eq!(chunk.len(), MAX as usize - 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_declared_length_alone_reserves_at_most_one_ordinary_packet() {
        let max: u32 = 16 * 1024 * 1024;
        let mut src = buf(&max.to_be_bytes());
        assert_eq!(FilterCodec::new(max).decode(&mut src).unwrap(), None);
        assert!(
            src.capacity() <= 2 * (MAX_RESERVE_AHEAD + 4),
            "capacity {} after a bare 16 MiB header",
            src.capacity()
        );
        // and the packet is still read once its bytes have arrived
        let mut codec = FilterCodec::new(max);
        let mut src = buf(&max.to_be_bytes());
        src.put_u8(b'B');
        for _ in 0..16 {
            assert_eq!(codec.decode(&mut src).unwrap(), None);
            src.put_bytes(b'y', (max as usize - 1) / 16);
        }
        src.put_bytes(b'y', (max as usize - 1) % 16);
        match codec.decode(&mut src).unwrap() {
            Some(Command::Body(chunk)) => assert_eq!(chunk.len(), max as usize - 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decode_eof_with_a_partial_packet_is_truncated() {
        let mut src = buf(&POSTFIX_OPTNEG[..7]);
        assert!(matches!(
            filter().decode_eof(&mut src),
            Err(ProtocolError::Truncated(_))
        ));
        let mut src = buf(&[0, 0, 0, 1, b'c', 0, 0]);
        let mut mta = MtaCodec::new(MAX);
        assert_eq!(mta.decode_eof(&mut src).unwrap(), Some(Response::Continue));
        assert!(matches!(
            mta.decode_eof(&mut src),
            Err(ProtocolError::Truncated(_))
        ));
    }

    #[test]
    fn unknown_command_byte_is_an_error() {
        let mut src = buf(&[0, 0, 0, 1, b'Z']);
        assert!(matches!(
            filter().decode(&mut src),
            Err(ProtocolError::UnknownCommand(b'Z'))
        ));
        let mut src = buf(&[0, 0, 0, 1, b'Z']);
        assert!(matches!(
            MtaCodec::new(MAX).decode(&mut src),
            Err(ProtocolError::UnknownCommand(b'Z'))
        ));
    }

    #[test]
    fn write_single_packet() {
        let mut dst = BytesMut::new();
        filter().encode(Response::Continue, &mut dst).unwrap();
        assert_eq!(&dst[..], &[0, 0, 0, 1, b'c']);
        filter()
            .encode(Response::ReplyCode("550 5.7.1 no".into()), &mut dst)
            .unwrap();
        assert_eq!(&dst[5..], b"\x00\x00\x00\x0ey550 5.7.1 no\x00");
    }

    #[test]
    fn write_rejects_packet_longer_than_max() {
        let mut dst = BytesMut::new();
        let long = Response::ReplaceBody(Bytes::from(vec![b'z'; MAX as usize]));
        assert!(matches!(
            filter().encode(long, &mut dst),
            Err(ProtocolError::TooLong { .. })
        ));
        assert!(dst.is_empty(), "nothing written on error");
        let fits = Response::ReplaceBody(Bytes::from(vec![b'z'; MAX as usize - 1]));
        filter().encode(fits, &mut dst).unwrap();
        assert_eq!(dst.len(), MAX as usize + 4);
    }

    #[test]
    fn write_command_as_postfix_does() {
        let mut dst = BytesMut::new();
        MtaCodec::new(MAX)
            .encode(
                Command::OptNeg {
                    version: 6,
                    actions: 0x1ff,
                    protocol: 0x1f_ffff,
                },
                &mut dst,
            )
            .unwrap();
        assert_eq!(&dst[..], &POSTFIX_OPTNEG);
    }
}

#[cfg(test)]
mod proptests {
    #![allow(clippy::unwrap_used)]

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::super::strategies;
    use super::*;

    const MAX: u32 = 64 * 1024;

    fn encode_commands(commands: &[Command]) -> BytesMut {
        let mut mta = MtaCodec::new(MAX);
        let mut stream = BytesMut::new();
        for command in commands {
            mta.encode(command.clone(), &mut stream).unwrap();
        }
        stream
    }

    fn encode_responses(responses: &[Response]) -> BytesMut {
        let mut filter = FilterCodec::new(MAX);
        let mut stream = BytesMut::new();
        for response in responses {
            filter.encode(response.clone(), &mut stream).unwrap();
        }
        stream
    }

    /// Decodes everything whole in `src`; stops at the first error.
    fn drain<D: Decoder<Error = ProtocolError>>(
        codec: &mut D,
        src: &mut BytesMut,
        out: &mut Vec<D::Item>,
    ) -> Result<(), ProtocolError> {
        while let Some(item) = codec.decode(src)? {
            out.push(item);
        }
        Ok(())
    }

    /// Capacity a buffer may reach while holding `held` bytes: what arrived, or one packet
    /// ahead, with `Vec`'s doubling on top.
    fn capacity_bound(held: usize) -> usize {
        2 * held.max(MAX_RESERVE_AHEAD.min(MAX as usize + 4)) + 64
    }

    proptest! {
        #[test]
        fn every_command_round_trips(command in strategies::command()) {
            let mut stream = encode_commands(std::slice::from_ref(&command));
            let decoded = FilterCodec::new(MAX).decode(&mut stream).unwrap();
            prop_assert_eq!(decoded, Some(command));
            prop_assert!(stream.is_empty());
        }

        #[test]
        fn every_response_round_trips(response in strategies::response()) {
            let mut stream = encode_responses(std::slice::from_ref(&response));
            let decoded = MtaCodec::new(MAX).decode(&mut stream).unwrap();
            prop_assert_eq!(decoded, Some(response));
            prop_assert!(stream.is_empty());
        }

        #[test]
        fn command_stream_decodes_the_same_at_every_split_point(
            commands in vec(strategies::command(), 1..6),
        ) {
            let stream = encode_commands(&commands);
            for split in 0..=stream.len() {
                let mut codec = FilterCodec::new(MAX);
                let mut src = BytesMut::from(&stream[..split]);
                let mut got = Vec::new();
                drain(&mut codec, &mut src, &mut got).unwrap();
                src.extend_from_slice(&stream[split..]);
                drain(&mut codec, &mut src, &mut got).unwrap();
                prop_assert_eq!(&got, &commands, "split at {}", split);
                prop_assert!(src.is_empty());
            }
        }

        #[test]
        fn response_stream_decodes_the_same_at_every_split_point(
            responses in vec(strategies::response(), 1..6),
        ) {
            let stream = encode_responses(&responses);
            for split in 0..=stream.len() {
                let mut codec = MtaCodec::new(MAX);
                let mut src = BytesMut::from(&stream[..split]);
                let mut got = Vec::new();
                drain(&mut codec, &mut src, &mut got).unwrap();
                src.extend_from_slice(&stream[split..]);
                drain(&mut codec, &mut src, &mut got).unwrap();
                prop_assert_eq!(&got, &responses, "split at {}", split);
            }
        }

        #[test]
        fn byte_at_a_time_gives_the_same_commands(commands in vec(strategies::command(), 1..6)) {
            let stream = encode_commands(&commands);
            let mut codec = FilterCodec::new(MAX);
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            for byte in stream.iter() {
                src.put_u8(*byte);
                drain(&mut codec, &mut src, &mut got).unwrap();
            }
            prop_assert_eq!(got, commands);
        }

        /// Arbitrary bytes, fed in arbitrary pieces: packets or one clean error, never a
        /// panic, and the buffer never grows past what arrived or one packet ahead.
        #[test]
        fn any_bytes_give_commands_or_a_clean_error(
            pieces in vec(vec(any::<u8>(), 0..40), 0..8),
            max in 1u32..=MAX,
        ) {
            let mut codec = FilterCodec::new(max);
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            let mut fed = 0;
            for piece in &pieces {
                src.extend_from_slice(piece);
                fed += piece.len();
                let result = drain(&mut codec, &mut src, &mut got);
                prop_assert!(src.capacity() <= capacity_bound(fed), "capacity {} after {} bytes", src.capacity(), fed);
                if result.is_err() {
                    break;
                }
            }
            let _ = codec.decode_eof(&mut src);
        }

        #[test]
        fn any_bytes_give_responses_or_a_clean_error(
            pieces in vec(vec(any::<u8>(), 0..40), 0..8),
            max in 1u32..=MAX,
        ) {
            let mut codec = MtaCodec::new(max);
            let mut src = BytesMut::new();
            let mut got = Vec::new();
            let mut fed = 0;
            for piece in &pieces {
                src.extend_from_slice(piece);
                fed += piece.len();
                let result = drain(&mut codec, &mut src, &mut got);
                prop_assert!(src.capacity() <= capacity_bound(fed));
                if result.is_err() {
                    break;
                }
            }
            let _ = codec.decode_eof(&mut src);
        }

        /// A valid stream with a few bytes changed: the decoder sees real packet boundaries
        /// with wrong lengths, letters and strings, which random bytes rarely reach.
        #[test]
        fn mutated_streams_give_commands_or_a_clean_error(
            commands in vec(strategies::command(), 1..6),
            mutations in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            max in 1u32..=MAX,
        ) {
            let mut stream = encode_commands(&commands);
            for (index, byte) in &mutations {
                let at = index.index(stream.len());
                stream[at] = *byte;
            }
            let fed = stream.len();
            let mut codec = FilterCodec::new(max);
            let mut got = Vec::new();
            let _ = drain(&mut codec, &mut stream, &mut got);
            prop_assert!(stream.capacity() <= capacity_bound(fed).max(fed));
        }

        #[test]
        fn a_declared_length_never_reserves_beyond_the_cap(len in any::<u32>(), max in 1u32..=MAX) {
            let mut src = BytesMut::from(&len.to_be_bytes()[..]);
            let result = FilterCodec::new(max).decode(&mut src);
            if len == 0 || len > max {
                prop_assert!(result.is_err());
                prop_assert!(src.capacity() <= 64);
            } else {
                prop_assert!(matches!(result, Ok(None)));
                prop_assert!(src.capacity() <= 2 * (max as usize + 4).min(MAX_RESERVE_AHEAD) + 64);
            }
        }
    }
}
