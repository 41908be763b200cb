//! The SRS secrets: PostSRSd 1.x's secrets file read the way PostSRSd reads it, so that both
//! sign and verify with the same keys.
//!
//! The file holds one secret per line. The first secret signs new addresses; every secret
//! verifies, so a new secret is put on the first line and the old ones stay below it until the
//! addresses they signed have expired (`max-age`). As in PostSRSd 1.10 (which reads lines with
//! `fgets` and keeps the first `strtok(line, "\r\n")` token):
//! - empty lines (also lines of only `\r`) are skipped, not counted;
//! - leading `\r`s are dropped and a secret ends at the next `\r` (so CRLF files work);
//! - a secret ends at a NUL byte (C strings);
//! - spaces are part of the secret.
//!
//! Departures, on purpose: a line longer than PostSRSd's buffer (1023 bytes), which PostSRSd
//! would silently cut into several secrets, is refused; and a file with no secret is an error
//! here, where PostSRSd starts and then answers every lookup with "No secrets".
//!
//! Nothing here knows about addresses; see [`super::scheme`].

use std::fmt;
use std::path::{Path, PathBuf};

/// The longest line PostSRSd 1.x reads as one secret (its `fgets` buffer is 1024 bytes).
pub const MAX_LINE_BYTES: usize = 1023;

/// The secrets, in order: the first signs, all verify. Never empty, no secret empty.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets(Vec<Vec<u8>>);

impl Secrets {
    /// Secrets given directly (the first signs).
    ///
    /// # Errors
    /// [`SecretsError::NoSecret`] when `secrets` is empty; [`SecretsError::EmptySecret`] when
    /// one of them is empty.
    pub fn new(secrets: Vec<Vec<u8>>) -> Result<Self, SecretsError> {
        if secrets.is_empty() {
            return Err(SecretsError::NoSecret);
        }
        if let Some(index) = secrets.iter().position(Vec::is_empty) {
            return Err(SecretsError::EmptySecret { index });
        }
        Ok(Self(secrets))
    }

    /// The secrets in the contents of a PostSRSd secrets file (see the module's notes).
    ///
    /// # Errors
    /// [`SecretsError::NoSecret`] when no line holds a secret; [`SecretsError::LineTooLong`]
    /// for a line PostSRSd would have cut into pieces.
    pub fn parse(contents: &[u8]) -> Result<Self, SecretsError> {
        let mut secrets = Vec::new();
        for (index, line) in contents.split(|&b| b == b'\n').enumerate() {
            if line.len() > MAX_LINE_BYTES {
                return Err(SecretsError::LineTooLong {
                    line: index + 1,
                    bytes: line.len(),
                });
            }
            // C's string ends at the first NUL; strtok skips leading delimiters and stops at
            // the next one.
            let line = line.split(|&b| b == 0).next().unwrap_or_default();
            let secret = line
                .split(|&b| b == b'\r')
                .find(|token| !token.is_empty())
                .unwrap_or_default();
            if !secret.is_empty() {
                secrets.push(secret.to_vec());
            }
        }
        Self::new(secrets)
    }

    /// Reads and parses a PostSRSd secrets file.
    ///
    /// # Errors
    /// The file cannot be read, or its contents are refused by [`Secrets::parse`]; both name
    /// the file.
    pub fn read(path: &Path) -> Result<Self, SecretsFileError> {
        let contents = std::fs::read(path).map_err(|source| SecretsFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&contents).map_err(|source| SecretsFileError::Contents {
            path: path.to_owned(),
            source,
        })
    }

    /// The secret that signs new addresses: the first.
    pub fn signing(&self) -> &[u8] {
        // `new` refuses an empty list
        self.0.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// Every secret, the signing one first.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(Vec::as_slice)
    }

    /// How many secrets there are (at least 1).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: there is at least one secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Never prints the secrets themselves (they end up in logs otherwise).
impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} secrets, redacted)", self.0.len())
    }
}

/// Secrets that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("no secret (one secret per line, the first signs, all verify)")]
    NoSecret,
    #[error("secret {index} is empty")]
    EmptySecret { index: usize },
    #[error(
        "line {line} is {bytes} bytes long; PostSRSd reads at most {MAX_LINE_BYTES} bytes a line"
    )]
    LineTooLong { line: usize, bytes: usize },
}

/// A secrets file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsFileError {
    #[error("cannot read the SRS secrets file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SRS secrets file {}", path.display())]
    Contents {
        path: PathBuf,
        #[source]
        source: SecretsError,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parsed(contents: &[u8]) -> Vec<Vec<u8>> {
        Secrets::parse(contents)
            .unwrap()
            .iter()
            .map(<[u8]>::to_vec)
            .collect()
    }

    #[test]
    fn one_secret_per_line_the_first_signs() {
        let secrets = Secrets::parse(b"new secret\nold secret\n").unwrap();
        assert_eq!(secrets.signing(), b"new secret");
        assert_eq!(
            parsed(b"new secret\nold secret\n"),
            [b"new secret".to_vec(), b"old secret".to_vec()]
        );
        assert_eq!(secrets.len(), 2);
    }

    #[test]
    fn lines_are_read_as_postsrsd_reads_them() {
        // no final newline, CRLF, empty and CR-only lines, leading CR, spaces kept
        assert_eq!(
            parsed(b"\n\r\n a b \r\n\rcr\rignored\nlast"),
            [b" a b ".to_vec(), b"cr".to_vec(), b"last".to_vec()]
        );
        // a NUL ends the C string; a line that starts with one holds nothing
        assert_eq!(parsed(b"ab\0cd\n\0x\ny"), [b"ab".to_vec(), b"y".to_vec()]);
    }

    #[test]
    fn a_file_without_secrets_is_refused() {
        assert_eq!(Secrets::parse(b""), Err(SecretsError::NoSecret));
        assert_eq!(Secrets::parse(b"\n\r\n\n"), Err(SecretsError::NoSecret));
        assert_eq!(Secrets::new(vec![]), Err(SecretsError::NoSecret));
        assert_eq!(
            Secrets::new(vec![b"a".to_vec(), vec![]]),
            Err(SecretsError::EmptySecret { index: 1 })
        );
    }

    #[test]
    fn a_line_postsrsd_would_cut_is_refused() {
        let fits = vec![b'x'; MAX_LINE_BYTES];
        assert_eq!(parsed(&fits), std::slice::from_ref(&fits));
        let mut long = b"ok\n".to_vec();
        long.extend(vec![b'x'; MAX_LINE_BYTES + 1]);
        assert_eq!(
            Secrets::parse(&long),
            Err(SecretsError::LineTooLong {
                line: 2,
                bytes: MAX_LINE_BYTES + 1
            })
        );
    }

    #[test]
    fn missing_and_empty_files_are_clear_errors() {
        let dir =
            std::env::temp_dir().join(format!("cluegetter-srs-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        let error = Secrets::read(&missing).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("cannot read the SRS secrets file {}", missing.display())
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let error = Secrets::read(&empty).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("SRS secrets file {}", empty.display())
        );
        assert!(matches!(
            error,
            SecretsFileError::Contents {
                source: SecretsError::NoSecret,
                ..
            }
        ));
        let good = dir.join("good");
        std::fs::write(&good, "s3cret\n").unwrap();
        assert_eq!(Secrets::read(&good).unwrap().signing(), b"s3cret");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let secrets = Secrets::parse(b"hunter2\n").unwrap();
        assert_eq!(format!("{secrets:?}"), "Secrets(1 secrets, redacted)");
    }
}
