//! clamd's protocol, the part we use: `zPING`, `zVERSION` and `zINSTREAM` over TCP or a Unix
//! socket, with NUL-terminated commands and replies (the `z` prefix). About eighty lines that
//! read more plainly than a client crate without timeouts (../shared/CRATES.md).
//!
//! INSTREAM: the command, then chunks of `<u32 big-endian length><bytes>`, then a zero length;
//! the reply is `stream: OK`, `stream: <name> FOUND` (with `ExtendedDetectionInfo`,
//! `<name>(<md5>:<size>) FOUND`), or `<text> ERROR` (e.g. `INSTREAM size limit exceeded. ERROR`
//! when the stream passes clamd's `StreamMaxLength`).
//!
//! Every function here has a deadline of its own: [`ping`] runs outside any check (at start-up),
//! so nothing else would bound it.

use std::io;
use std::path::Path;
use std::time::Duration;

use platform::config::ClamdAddress;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};

/// Bytes per INSTREAM chunk.
const CHUNK: usize = 64 * 1024;

/// The most reply bytes read; clamd's replies are one short line.
const MAX_REPLY_BYTES: usize = 4096;

/// What clamd said about a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Found {
        /// The signature name, e.g. `Win.Test.EICAR_HDB-1` (`.UNOFFICIAL` for local ones).
        name: String,
        /// With `ExtendedDetectionInfo`: the MD5 and size of what matched.
        hash: Option<String>,
        size: Option<u64>,
    },
    /// clamd could not scan: `INSTREAM size limit exceeded.`, a file system or engine error.
    Error(String),
}

/// A reply that is none of OK, FOUND or ERROR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply `{0}`")]
pub struct UnexpectedReply(pub String);

/// Reads one INSTREAM reply (its trailing NUL and line end, if any, are ignored).
///
/// # Errors
/// Anything but `stream: OK`, `stream: <name> FOUND` and `<text> ERROR`.
pub fn parse_reply(bytes: &[u8]) -> Result<Verdict, UnexpectedReply> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\0', '\n', '\r']).trim();
    let unexpected = || UnexpectedReply(text.chars().take(200).collect());
    if let Some(message) = text.strip_suffix("ERROR") {
        return Ok(Verdict::Error(message.trim().to_owned()));
    }
    let result = text.strip_prefix("stream:").ok_or_else(unexpected)?.trim();
    if result == "OK" {
        return Ok(Verdict::Clean);
    }
    let found = result
        .strip_suffix("FOUND")
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .ok_or_else(unexpected)?;
    // `Name(md5:size)` with ExtendedDetectionInfo
    if let Some((name, details)) = found.split_once('(')
        && let Some(details) = details.strip_suffix(')')
        && let Some((hash, size)) = details.rsplit_once(':')
        && !name.is_empty()
    {
        return Ok(Verdict::Found {
            name: name.to_owned(),
            hash: Some(hash.to_owned()),
            size: size.parse().ok(),
        });
    }
    Ok(Verdict::Found {
        name: found.to_owned(),
        hash: None,
        size: None,
    })
}

/// Why talking to clamd failed.
#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    #[error("cannot connect to clamd at {address}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("clamd at {address} did not answer within {}", humantime::format_duration(*.timeout))]
    Timeout { address: String, timeout: Duration },
    #[error("lost the connection to clamd")]
    Io(#[source] io::Error),
    #[error("clamd's reply is longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
    #[error("clamd answered PING with `{0}`")]
    NoPong(String),
    #[error(transparent)]
    Unexpected(#[from] UnexpectedReply),
    /// clamd refused or failed the scan.
    #[error("clamd could not scan the message: {0}")]
    ScanFailed(String),
}

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

async fn connect(address: &ClamdAddress) -> Result<Box<dyn Duplex>, ClamdError> {
    let connected: io::Result<Box<dyn Duplex>> = match address {
        ClamdAddress::Tcp(host_port) => match TcpStream::connect(host_port.as_str()).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
            Err(e) => Err(e),
        },
        ClamdAddress::Unix(path) => UnixStream::connect(Path::new(path))
            .await
            .map(|s| Box::new(s) as Box<dyn Duplex>),
    };
    connected.map_err(|source| ClamdError::Connect {
        address: address.to_string(),
        source,
    })
}

/// `work` (which connects itself), bounded by `timeout`.
async fn within<T>(
    address: &ClamdAddress,
    timeout: Duration,
    work: impl Future<Output = Result<T, ClamdError>>,
) -> Result<T, ClamdError> {
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ClamdError::Timeout {
            address: address.to_string(),
            timeout,
        })?
}

/// Reads up to the first NUL (or the end of the connection).
async fn read_reply(stream: &mut Box<dyn Duplex>) -> Result<Vec<u8>, ClamdError> {
    let mut reply = Vec::with_capacity(64);
    let mut buffer = [0u8; 256];
    loop {
        let n = stream.read(&mut buffer).await.map_err(ClamdError::Io)?;
        if n == 0 {
            return Ok(reply);
        }
        if let Some(nul) = buffer[..n].iter().position(|&b| b == 0) {
            reply.extend_from_slice(&buffer[..nul]);
            return Ok(reply);
        }
        reply.extend_from_slice(&buffer[..n]);
        if reply.len() > MAX_REPLY_BYTES {
            return Err(ClamdError::TooLong);
        }
    }
}

/// `zPING` → `PONG`.
///
/// # Errors
/// clamd cannot be reached in time, or answers something else.
pub async fn ping(address: &ClamdAddress, timeout: Duration) -> Result<(), ClamdError> {
    within(address, timeout, async {
        let mut stream = connect(address).await?;
        stream.write_all(b"zPING\0").await.map_err(ClamdError::Io)?;
        let reply = read_reply(&mut stream).await?;
        if reply == b"PONG" {
            Ok(())
        } else {
            Err(ClamdError::NoPong(
                String::from_utf8_lossy(&reply).chars().take(80).collect(),
            ))
        }
    })
    .await
}

/// `zVERSION` → e.g. `ClamAV 1.0.9/…`.
///
/// # Errors
/// clamd cannot be reached in time.
pub async fn version(address: &ClamdAddress, timeout: Duration) -> Result<String, ClamdError> {
    within(address, timeout, async {
        let mut stream = connect(address).await?;
        stream
            .write_all(b"zVERSION\0")
            .await
            .map_err(ClamdError::Io)?;
        let reply = read_reply(&mut stream).await?;
        Ok(String::from_utf8_lossy(&reply).trim().to_owned())
    })
    .await
}

/// Streams `data` to clamd with INSTREAM and returns its verdict; the reply text as read
/// comes along for the determinants.
///
/// # Errors
/// clamd cannot be reached or does not finish in time, answers something unreadable, or
/// answers ERROR ([`ClamdError::ScanFailed`], e.g. the stream passed its `StreamMaxLength`).
pub async fn instream(
    address: &ClamdAddress,
    data: &[u8],
    timeout: Duration,
) -> Result<(Verdict, String), ClamdError> {
    let (verdict, reply) = within(address, timeout, async {
        let mut stream = connect(address).await?;
        let sent = send_stream(&mut stream, data).await;
        // clamd answers and closes as soon as the stream passes its limit: what it said
        // matters more than our broken pipe.
        let reply = match (sent, read_reply(&mut stream).await) {
            (_, Ok(reply)) if !reply.is_empty() => reply,
            (Err(error), _) => return Err(ClamdError::Io(error)),
            (Ok(()), Err(error)) => return Err(error),
            (Ok(()), Ok(_)) => {
                return Err(ClamdError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        };
        let verdict = parse_reply(&reply)?;
        Ok((verdict, String::from_utf8_lossy(&reply).trim().to_owned()))
    })
    .await?;
    match verdict {
        Verdict::Error(message) => Err(ClamdError::ScanFailed(message)),
        verdict => Ok((verdict, reply)),
    }
}

async fn send_stream(stream: &mut Box<dyn Duplex>, data: &[u8]) -> io::Result<()> {
    stream.write_all(b"zINSTREAM\0").await?;
    for chunk in data.chunks(CHUNK) {
        // CHUNK fits in a u32
        let length = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        stream.write_all(&length.to_be_bytes()).await?;
        stream.write_all(chunk).await?;
    }
    stream.write_all(&[0, 0, 0, 0]).await?;
    stream.flush().await
}

/// The reply parser's fuzz oracle (`fuzz_targets/clamd_reply.rs` may call it): any bytes give
/// a verdict or an error, and a FOUND verdict names something.
#[cfg(any(test, fuzzing))]
pub fn fuzz_reply(data: &[u8]) {
    if let Ok(Verdict::Found { name, .. }) = parse_reply(data) {
        assert!(!name.is_empty());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replies_as_clamd_1_0_writes_them() {
        assert_eq!(parse_reply(b"stream: OK\0").unwrap(), Verdict::Clean);
        assert_eq!(
            parse_reply(b"stream: Peers.Test.EICAR-NDB.UNOFFICIAL FOUND").unwrap(),
            Verdict::Found {
                name: "Peers.Test.EICAR-NDB.UNOFFICIAL".into(),
                hash: None,
                size: None
            }
        );
        assert_eq!(
            parse_reply(
                b"stream: Peers.Test.EICAR-HDB.UNOFFICIAL(44d88612fea8a8f36de82e1278abb02f:68) FOUND\0"
            )
            .unwrap(),
            Verdict::Found {
                name: "Peers.Test.EICAR-HDB.UNOFFICIAL".into(),
                hash: Some("44d88612fea8a8f36de82e1278abb02f".into()),
                size: Some(68)
            }
        );
        assert_eq!(
            parse_reply(b"INSTREAM size limit exceeded. ERROR\0").unwrap(),
            Verdict::Error("INSTREAM size limit exceeded.".into())
        );
    }

    #[test]
    fn anything_else_is_unexpected() {
        for bad in [
            &b""[..],
            b"PONG",
            b"stream:",
            b"stream: FOUND",
            b"stream: maybe",
        ] {
            assert!(
                parse_reply(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
            fuzz_reply(bad);
        }
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_give_a_verdict_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
                fuzz_reply(&bytes);
            }

            #[test]
            fn found_names_come_back(name in "[A-Za-z0-9._-]{1,40}") {
                let reply = format!("stream: {name} FOUND\0");
                prop_assert_eq!(
                    parse_reply(reply.as_bytes()).unwrap(),
                    Verdict::Found { name, hash: None, size: None }
                );
            }
        }
    }
}
