//! proptest strategies for every [`Command`] and [`Response`] variant, shared by the codec's
//! and the session's property tests. Strings never hold NUL (the wire cannot carry it inside
//! a string); byte payloads (header values excepted) may hold anything.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use super::{Command, Family, Response};

/// Text as the MTA sends it: no NUL, mostly printable, sometimes any other character.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{0,24}",
        1 => "[^\\x00]{0,12}",
    ]
}

/// Bytes without NUL (header values).
pub fn bytes_without_nul() -> impl Strategy<Value = Bytes> {
    vec(1u8..=255, 0..32).prop_map(Bytes::from)
}

/// Any bytes (body chunks).
pub fn any_bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

pub fn family() -> impl Strategy<Value = Family> {
    prop_oneof![
        Just(Family::Unknown),
        Just(Family::Unix),
        Just(Family::Inet),
        Just(Family::Inet6),
    ]
}

/// Every command, with the fields the wire can carry back (no port or address for family
/// `U`, a port for every other family).
pub fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(version, actions, protocol)| {
            Command::OptNeg {
                version,
                actions,
                protocol,
            }
        }),
        (any::<u8>(), vec((text(), text()), 0..4))
            .prop_map(|(stage, macros)| Command::Macro { stage, macros }),
        (text(), family(), any::<u16>(), text()).prop_map(|(hostname, family, port, address)| {
            if family == Family::Unknown {
                Command::Connect {
                    hostname,
                    family,
                    port: None,
                    address: String::new(),
                }
            } else {
                Command::Connect {
                    hostname,
                    family,
                    port: Some(port),
                    address,
                }
            }
        }),
        text().prop_map(Command::Helo),
        vec(text(), 0..4).prop_map(Command::Mail),
        vec(text(), 0..4).prop_map(Command::Rcpt),
        Just(Command::Data),
        (text(), bytes_without_nul()).prop_map(|(name, value)| Command::Header { name, value }),
        Just(Command::EndOfHeaders),
        any_bytes().prop_map(Command::Body),
        any_bytes().prop_map(Command::EndOfMessage),
        Just(Command::Abort),
        Just(Command::Quit),
        Just(Command::QuitNewConnection),
        text().prop_map(Command::Unknown),
    ]
}

/// Every response.
pub fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            vec((any::<u32>(), text()), 0..4)
        )
            .prop_map(|(version, actions, protocol, macros)| Response::OptNeg {
                version,
                actions,
                protocol,
                macros,
            }),
        Just(Response::Continue),
        Just(Response::Accept),
        Just(Response::Reject),
        Just(Response::Tempfail),
        Just(Response::Discard),
        text().prop_map(Response::ReplyCode),
        Just(Response::Progress),
        Just(Response::Skip),
        (text(), text()).prop_map(|(name, value)| Response::AddHeader { name, value }),
        (any::<u32>(), text(), text()).prop_map(|(index, name, value)| Response::InsertHeader {
            index,
            name,
            value
        }),
        (any::<u32>(), text(), text()).prop_map(|(index, name, value)| Response::ChangeHeader {
            index,
            name,
            value
        }),
        (text(), proptest::option::of(text()))
            .prop_map(|(sender, args)| Response::ChangeFrom { sender, args }),
        text().prop_map(Response::AddRecipient),
        (text(), text())
            .prop_map(|(recipient, args)| Response::AddRecipientWithArgs { recipient, args }),
        text().prop_map(Response::DeleteRecipient),
        any_bytes().prop_map(Response::ReplaceBody),
        text().prop_map(Response::Quarantine),
    ]
}

/// The variant's position in its enum; exhaustive, so a new variant must be added here (and
/// to the strategy, or `every_variant_is_generated` fails).
fn command_variant(command: &Command) -> usize {
    match command {
        Command::OptNeg { .. } => 0,
        Command::Macro { .. } => 1,
        Command::Connect { .. } => 2,
        Command::Helo(_) => 3,
        Command::Mail(_) => 4,
        Command::Rcpt(_) => 5,
        Command::Data => 6,
        Command::Header { .. } => 7,
        Command::EndOfHeaders => 8,
        Command::Body(_) => 9,
        Command::EndOfMessage(_) => 10,
        Command::Abort => 11,
        Command::Quit => 12,
        Command::QuitNewConnection => 13,
        Command::Unknown(_) => 14,
    }
}
const COMMAND_VARIANTS: usize = 15;

fn response_variant(response: &Response) -> usize {
    match response {
        Response::OptNeg { .. } => 0,
        Response::Continue => 1,
        Response::Accept => 2,
        Response::Reject => 3,
        Response::Tempfail => 4,
        Response::Discard => 5,
        Response::ReplyCode(_) => 6,
        Response::Progress => 7,
        Response::Skip => 8,
        Response::AddHeader { .. } => 9,
        Response::InsertHeader { .. } => 10,
        Response::ChangeHeader { .. } => 11,
        Response::ChangeFrom { .. } => 12,
        Response::AddRecipient(_) => 13,
        Response::AddRecipientWithArgs { .. } => 14,
        Response::DeleteRecipient(_) => 15,
        Response::ReplaceBody(_) => 16,
        Response::Quarantine(_) => 17,
    }
}
const RESPONSE_VARIANTS: usize = 18;

#[test]
fn every_variant_is_generated() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut commands = [false; COMMAND_VARIANTS];
    let mut responses = [false; RESPONSE_VARIANTS];
    for _ in 0..2000 {
        if let Ok(tree) = command().new_tree(&mut runner) {
            commands[command_variant(&tree.current())] = true;
        }
        if let Ok(tree) = response().new_tree(&mut runner) {
            responses[response_variant(&tree.current())] = true;
        }
    }
    assert!(
        commands.iter().all(|seen| *seen),
        "commands seen: {commands:?}"
    );
    assert!(
        responses.iter().all(|seen| *seen),
        "responses seen: {responses:?}"
    );
}
