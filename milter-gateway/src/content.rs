//! The message as content modules see it (spec/modules.md §3): a synthetic `Received` header
//! for the hop into Postfix, the headers as received, a blank line, the body; cut at the
//! module's `max-size`.

use std::net::IpAddr;

use crate::session::FinishedMessage;

/// Builds the content, at most `max_size` bytes; the flag says whether anything was cut
/// (here or already when the gateway stopped keeping the body).
pub fn build(message: &FinishedMessage, max_size: usize) -> (Vec<u8>, bool) {
    let session = &message.session;
    let client_ip = session
        .client_addr
        .map_or_else(|| "unknown".to_owned(), |ip: IpAddr| ip.to_string());
    let client_name = if session.client_name.is_empty() {
        "unknown"
    } else {
        session.client_name.as_str()
    };
    let by = if session.mta_hostname.is_empty() {
        "localhost"
    } else {
        session.mta_hostname.as_str()
    };
    let mut out = Vec::with_capacity(message.body.len().min(max_size) + 1024);
    out.extend_from_slice(
        format!(
            "Received: from {helo} ({client_name} [{client_ip}])\r\n\tby {by} with SMTP id {qid}\r\n\t(envelope-from <{sender}>);\r\n\t{date}\r\n",
            helo = if session.helo.is_empty() { "unknown" } else { &session.helo },
            qid = message.queue_id,
            sender = message.sender,
            date = message.received_at.to_rfc2822(),
        )
        .as_bytes(),
    );
    for header in &message.headers {
        out.extend_from_slice(header.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&message.body);
    let mut truncated = message.body_truncated;
    if out.len() > max_size {
        out.truncate(max_size);
        truncated = true;
    }
    (out, truncated)
}
