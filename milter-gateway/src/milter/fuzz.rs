//! The codec's fuzz oracle, called by `fuzz/fuzz_targets/milter_codec.rs` (and runnable from
//! tests on captured streams). It panics on a violation; that is how a fuzzer learns of one.
//!
//! What it checks, for any byte stream read both as commands ([`FilterCodec`]) and as
//! replies ([`MtaCodec`]):
//! - decoding ends in packets and at most one clean [`ProtocolError`], never a panic;
//! - the same packets come out whether the bytes arrive at once or in two pieces;
//! - the read buffer never grows past what arrived or one packet ahead
//!   ([`MAX_RESERVE_AHEAD`]);
//! - every packet re-encodes to the bytes it came from, except where the decoder was
//!   lenient on purpose (trailing bytes after the last field, text that is not UTF-8, a last
//!   macro name without its value); and re-encoding is stable: decoding the re-encoded
//!   packet gives the same value.
//!
//! Nothing here knows of session stages (that oracle is `crate::session::fuzz_session`).

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::codec::MAX_RESERVE_AHEAD;
use super::{Command, FilterCodec, MtaCodec, ProtocolError, Response};

/// The cap the fuzzer runs with: the gateway's default `max-packet-size`.
pub const FUZZ_MAX_PACKET: u32 = 1024 * 1024;

/// One decoded packet and the bytes it was read from.
struct Decoded<T> {
    item: T,
    raw: Vec<u8>,
}

/// Decodes `data` in two pieces (split at `split`), recording each packet's raw bytes.
fn decode_all<D>(
    codec: &mut D,
    data: &[u8],
    split: usize,
) -> (Vec<Decoded<D::Item>>, Option<String>)
where
    D: Decoder<Error = ProtocolError>,
{
    let mut out = Vec::new();
    let mut src = BytesMut::new();
    let mut offset = 0;
    let mut fed = 0;
    for piece in [&data[..split], &data[split..]] {
        src.extend_from_slice(piece);
        fed += piece.len();
        loop {
            let before = src.len();
            match codec.decode(&mut src) {
                Ok(Some(item)) => {
                    let consumed = before - src.len();
                    out.push(Decoded {
                        item,
                        raw: data[offset..offset + consumed].to_vec(),
                    });
                    offset += consumed;
                }
                Ok(None) => break,
                Err(error) => return (out, Some(error.to_string())),
            }
            let bound = 2 * fed.max(MAX_RESERVE_AHEAD) + 64;
            assert!(
                src.capacity() <= bound,
                "read buffer capacity {} after {fed} bytes (bound {bound})",
                src.capacity()
            );
        }
        let bound = 2 * fed.max(MAX_RESERVE_AHEAD) + 64;
        assert!(
            src.capacity() <= bound,
            "read buffer capacity {}",
            src.capacity()
        );
    }
    (out, None)
}

fn has_replacement_char<'a>(mut texts: impl Iterator<Item = &'a str>) -> bool {
    texts.any(|t| t.contains('\u{fffd}'))
}

fn command_texts(command: &Command) -> Vec<&str> {
    match command {
        Command::Macro { macros, .. } => macros
            .iter()
            .flat_map(|(n, v)| [n.as_str(), v.as_str()])
            .collect(),
        Command::Connect {
            hostname, address, ..
        } => vec![hostname, address],
        Command::Helo(s) | Command::Unknown(s) => vec![s],
        Command::Mail(args) | Command::Rcpt(args) => args.iter().map(String::as_str).collect(),
        Command::Header { name, .. } => vec![name],
        Command::OptNeg { .. }
        | Command::Data
        | Command::EndOfHeaders
        | Command::Body(_)
        | Command::EndOfMessage(_)
        | Command::Abort
        | Command::Quit
        | Command::QuitNewConnection => Vec::new(),
    }
}

fn response_texts(response: &Response) -> Vec<&str> {
    match response {
        Response::OptNeg { macros, .. } => macros.iter().map(|(_, l)| l.as_str()).collect(),
        Response::ReplyCode(s)
        | Response::Quarantine(s)
        | Response::AddRecipient(s)
        | Response::DeleteRecipient(s) => vec![s],
        Response::AddHeader { name, value }
        | Response::InsertHeader { name, value, .. }
        | Response::ChangeHeader { name, value, .. } => vec![name, value],
        Response::ChangeFrom { sender, args } => {
            let mut all = vec![sender.as_str()];
            all.extend(args.as_deref());
            all
        }
        Response::AddRecipientWithArgs { recipient, args } => vec![recipient, args],
        Response::Continue
        | Response::Accept
        | Response::Reject
        | Response::Tempfail
        | Response::Discard
        | Response::Progress
        | Response::Skip
        | Response::ReplaceBody(_) => Vec::new(),
    }
}

/// `encoded` is `raw` exactly, or `raw` with ignored trailing bytes dropped, or (for a
/// macro list ending in a name) `raw` with the missing empty value added.
fn is_expected_re_encoding(raw: &[u8], encoded: &[u8], is_macro: bool) -> bool {
    if raw == encoded {
        return true;
    }
    let (Some(raw_payload), Some(encoded_payload)) = (raw.get(5..), encoded.get(5..)) else {
        return false;
    };
    if raw.get(4) != encoded.get(4) {
        return false;
    }
    if raw_payload.starts_with(encoded_payload) {
        return true;
    }
    is_macro
        && encoded_payload.len() == raw_payload.len() + 1
        && encoded_payload.starts_with(raw_payload)
        && encoded_payload.last() == Some(&0)
}

/// The codec oracle; see the module documentation.
///
/// # Panics
/// On any violation of the properties above.
pub fn fuzz_codec(data: &[u8]) {
    // The first byte chooses where the stream is cut in two.
    let split = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));

    let (commands, command_error) = decode_all(&mut FilterCodec::new(FUZZ_MAX_PACKET), data, 0);
    let (again, again_error) = decode_all(&mut FilterCodec::new(FUZZ_MAX_PACKET), data, split);
    assert_eq!(
        command_error, again_error,
        "error depends on where the stream was cut"
    );
    assert_eq!(
        commands.len(),
        again.len(),
        "packets depend on where the stream was cut"
    );
    for (a, b) in commands.iter().zip(&again) {
        assert_eq!(a.item, b.item);
    }
    for Decoded { item, raw } in &commands {
        let mut encoded = BytesMut::new();
        if let Err(error) = MtaCodec::new(FUZZ_MAX_PACKET).encode(item.clone(), &mut encoded) {
            panic!("a decoded command does not encode: {error}: {item:?}");
        }
        let lossy = has_replacement_char(command_texts(item).into_iter());
        let is_macro = matches!(item, Command::Macro { .. });
        assert!(
            lossy || is_expected_re_encoding(raw, &encoded, is_macro),
            "{item:?} re-encodes to {encoded:02x?}, read from {raw:02x?}"
        );
        let mut stable = encoded.clone();
        match FilterCodec::new(FUZZ_MAX_PACKET).decode(&mut stable) {
            Ok(Some(decoded)) => assert_eq!(&decoded, item, "re-encoding is not stable"),
            other => panic!("the re-encoded {item:?} does not decode: {other:?}"),
        }
        assert!(stable.is_empty());
    }

    let (responses, response_error) = decode_all(&mut MtaCodec::new(FUZZ_MAX_PACKET), data, 0);
    let (again, again_error) = decode_all(&mut MtaCodec::new(FUZZ_MAX_PACKET), data, split);
    assert_eq!(response_error, again_error);
    assert_eq!(responses.len(), again.len());
    for Decoded { item, raw } in &responses {
        let mut encoded = BytesMut::new();
        if let Err(error) = FilterCodec::new(FUZZ_MAX_PACKET).encode(item.clone(), &mut encoded) {
            panic!("a decoded reply does not encode: {error}: {item:?}");
        }
        let lossy = has_replacement_char(response_texts(item).into_iter());
        assert!(
            lossy || is_expected_re_encoding(raw, &encoded, false),
            "{item:?} re-encodes to {encoded:02x?}, read from {raw:02x?}"
        );
        let mut stable = encoded.clone();
        match MtaCodec::new(FUZZ_MAX_PACKET).decode(&mut stable) {
            Ok(Some(decoded)) => assert_eq!(&decoded, item, "re-encoding is not stable"),
            other => panic!("the re-encoded {item:?} does not decode: {other:?}"),
        }
    }

    // decode_eof on whatever is left must not panic either, and agrees with decode
    let mut rest = BytesMut::from(data);
    let mut codec = FilterCodec::new(FUZZ_MAX_PACKET);
    loop {
        match codec.decode_eof(&mut rest) {
            Ok(Some(_)) => {}
            Ok(None) => {
                assert!(rest.is_empty());
                assert!(command_error.is_none());
                break;
            }
            Err(_) => break,
        }
    }
}

/// The seed corpus of a fuzz target (`fuzz/corpus/<target>/seed-*`): byte streams captured
/// from Postfix 3.7 talking to the gateway (and the gateway's replies), for tests.
#[cfg(test)]
pub(crate) fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("seed-"))
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, bytes)
        })
        .collect();
    seeds.sort();
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_postfix_streams_decode_whole_and_re_encode_exactly() {
        let seeds = seeds("milter_codec");
        assert!(
            seeds.len() >= 8,
            "seed corpus missing: {} files",
            seeds.len()
        );
        for (name, bytes) in &seeds {
            let replies = name.starts_with("seed-gateway-replies");
            let mut src = BytesMut::from(&bytes[..]);
            let mut again = BytesMut::new();
            let mut n_packets = 0;
            if replies {
                let mut codec = MtaCodec::new(FUZZ_MAX_PACKET);
                while let Some(response) = codec
                    .decode_eof(&mut src)
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
                {
                    FilterCodec::new(FUZZ_MAX_PACKET)
                        .encode(response, &mut again)
                        .unwrap_or_else(|e| panic!("{e}"));
                    n_packets += 1;
                }
            } else {
                let mut codec = FilterCodec::new(FUZZ_MAX_PACKET);
                while let Some(command) = codec
                    .decode_eof(&mut src)
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
                {
                    MtaCodec::new(FUZZ_MAX_PACKET)
                        .encode(command, &mut again)
                        .unwrap_or_else(|e| panic!("{e}"));
                    n_packets += 1;
                }
            }
            assert!(n_packets >= 3, "{name}: {n_packets} packets");
            assert_eq!(
                &again[..],
                &bytes[..],
                "{name}: Postfix's packets are canonical"
            );
            fuzz_codec(bytes);
        }
    }
}
