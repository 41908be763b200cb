//! Asking for a password on the terminal without echoing it (`auditor web add-user` and
//! `hash-password`): the prompt on stderr, echo off while the line is typed, the terminal's
//! settings restored afterwards whatever happened.

use std::io::{BufRead as _, Write as _};
use std::os::fd::AsFd as _;

use rustix::termios::{self, LocalModes, OptionalActions};

/// Writes `prompt` to stderr and reads one line from the terminal on stdin with echo off.
///
/// # Errors
/// stdin is not a terminal, or reading it failed.
pub fn ask_hidden(prompt: &str) -> std::io::Result<String> {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let original = termios::tcgetattr(fd)?;
    let mut quiet = original.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    // the newline the user types is still echoed, so the next output starts on a line of its own
    quiet.local_modes.insert(LocalModes::ECHONL);
    let mut stderr = std::io::stderr();
    write!(stderr, "{prompt}")?;
    stderr.flush()?;
    termios::tcsetattr(fd, OptionalActions::Flush, &quiet)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let restored = termios::tcsetattr(fd, OptionalActions::Now, &original);
    read?;
    restored?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
