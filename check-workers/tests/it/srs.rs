//! The SRS scheme against the real PostSRSd 1.x (Debian's `postsrsd`, installed by
//! `scripts/start-peers.sh postsrsd`): each test runs its own `postsrsd` on free loopback ports
//! with its own secrets file and domain, and talks to its Postfix `tcp_table` lookups
//! (`get <address>` → `200 <address>` or `500 <reason>`) as Postfix would.
//!
//! Both ways, with the same secrets file: an address we forward is byte for byte PostSRSd's and
//! PostSRSd reverses it; an address PostSRSd forwards is reversed by us. For SRS0, SRS1 and
//! local parts with odd characters, another separator and hash length, a rotated secret, and
//! the addresses both refuse (tampered, expired, malformed).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use check_workers::modules::srs::{Kind, ReverseError, Secrets, Separator, Settings, Srs};
use test_support::postfix::free_port;

const POSTSRSD: &str = "/usr/sbin/postsrsd";
const DAY: Duration = Duration::from_secs(86_400);

/// Senders with the local parts mail has: plain, dotted, tagged, quoted (with a space),
/// apostrophes, `=` and `%`, capitals, non-ASCII, and an SRS-looking one in lower case.
const SENDERS: &[&str] = &[
    "alice@example.com",
    "first.last+tag@sub.example.org",
    "\"quoted string\"@example.net",
    "o'brien@example.ie",
    "x=y==z@example.com",
    "user%relay@example.com",
    "MiXeD.Case@Example.COM",
    "#!$&*/{|}~^`@example.com",
    "jürgen@exämple.de",
    "srs0x@example.com",
];

/// One `postsrsd` of the test's own: forward and reverse tables on free ports of 127.0.0.1.
/// Killed on drop; its secrets file lives in a directory of its own, removed on drop.
struct PostSrsd {
    child: Child,
    forward: SocketAddr,
    reverse: SocketAddr,
    dir: PathBuf,
}

impl PostSrsd {
    /// Starts `postsrsd -d domain` reading `secrets` (the file's bytes as written) and `extra`
    /// options (`-a+`, `-n8`, …).
    fn start(domain: &str, secrets: &[u8], extra: &[&str]) -> Self {
        assert!(
            Path::new(POSTSRSD).exists(),
            "{POSTSRSD} is missing: run scripts/start-peers.sh postsrsd"
        );
        let dir = std::env::temp_dir().join(format!(
            "cluegetter-postsrsd-{}-{}",
            std::process::id(),
            free_port().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let secrets_file = dir.join("secrets");
        std::fs::write(&secrets_file, secrets).unwrap();
        for _ in 0..5 {
            let (forward, reverse) = (free_port().unwrap(), free_port().unwrap());
            if forward == reverse {
                continue;
            }
            let mut child = Command::new(POSTSRSD)
                .arg("-l127.0.0.1")
                .arg(format!("-f{forward}"))
                .arg(format!("-r{reverse}"))
                .arg(format!("-d{domain}"))
                .arg(format!("-s{}", secrets_file.display()))
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run postsrsd");
            let forward = SocketAddr::from(([127, 0, 0, 1], forward));
            let reverse = SocketAddr::from(([127, 0, 0, 1], reverse));
            let deadline = Instant::now() + Duration::from_secs(5);
            let up = loop {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break false; // a port was taken after all
                }
                // both are bound before it accepts anything
                if TcpStream::connect(reverse).is_ok() {
                    break true;
                }
                assert!(
                    Instant::now() < deadline,
                    "postsrsd does not listen on {reverse}"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            if up {
                return Self {
                    child,
                    forward,
                    reverse,
                    dir,
                };
            }
        }
        panic!("cannot start postsrsd");
    }

    fn secrets(&self) -> Secrets {
        Secrets::read(&self.dir.join("secrets")).unwrap()
    }

    /// Asks the forward table about each address, on one connection as Postfix does.
    fn forward(&self, addresses: &[&str]) -> Vec<Lookup> {
        lookup(self.forward, addresses)
    }

    /// Asks the reverse table about each address.
    fn reverse(&self, addresses: &[&str]) -> Vec<Lookup> {
        lookup(self.reverse, addresses)
    }
}

impl Drop for PostSrsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `tcp_table` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Lookup {
    /// `200 <value>`, decoded
    Found(String),
    /// `500 <reason>`
    Refused(String),
}

impl Lookup {
    fn found(&self) -> &str {
        match self {
            Lookup::Found(value) => value,
            Lookup::Refused(reason) => panic!("postsrsd refused: {reason}"),
        }
    }
}

fn lookup(table: SocketAddr, addresses: &[&str]) -> Vec<Lookup> {
    let stream = TcpStream::connect(table).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    addresses
        .iter()
        .map(|address| {
            writer
                .write_all(format!("get {}\n", encode(address)).as_bytes())
                .unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end_matches('\n');
            match line.split_once(' ') {
                Some(("200", value)) => Lookup::Found(decode(value)),
                Some(("500", reason)) => Lookup::Refused(reason.to_owned()),
                _ => panic!("postsrsd answered {line:?} to {address:?}"),
            }
        })
        .collect()
}

/// Postfix's `tcp_table` encoding: `%XX` for `%`, whitespace, controls and non-ASCII bytes.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_graphic() && b != b'%' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Runs `ask` (a lookup at PostSRSd, which reads its own clock) and gives it `now` too; again
/// if midnight UTC passed meanwhile, so that both sides stamp the same day.
fn same_day<T>(mut ask: impl FnMut(SystemTime) -> T) -> T {
    loop {
        let before = SystemTime::now();
        let answer = ask(before);
        let day =
            |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() / 86_400;
        if day(before) == day(SystemTime::now()) {
            return answer;
        }
    }
}

/// The same secrets for both, in a file PostSRSd and we must read alike: CRLF, blank lines.
const SECRETS_FILE: &[u8] = b"\r\nfirst secret\r\n\r\nsecond secret\n";

#[test]
fn both_read_the_secrets_file_alike() {
    let postsrsd = PostSrsd::start("srs.example", SECRETS_FILE, &[]);
    // signed with the second secret alone, so PostSRSd must have read it as we do
    let second = Srs::new(
        &Secrets::new(vec![b"second secret".to_vec()]).unwrap(),
        Settings::default(),
    )
    .unwrap();
    let ours = second
        .forward("alice@example.com", "srs.example", SystemTime::now())
        .unwrap();
    assert_eq!(
        postsrsd.reverse(&[&ours]),
        [Lookup::Found("alice@example.com".into())]
    );
    let secrets = postsrsd.secrets();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets.signing(), b"first secret");
}

#[test]
fn postsrsd_forwards_exactly_as_we_do_and_we_reverse_it() {
    let postsrsd = PostSrsd::start("srs.example", SECRETS_FILE, &[]);
    let srs = Srs::new(&postsrsd.secrets(), Settings::default()).unwrap();

    let (theirs, ours) = same_day(|now| {
        let theirs = postsrsd.forward(SENDERS);
        let ours: Vec<String> = SENDERS
            .iter()
            .map(|s| srs.forward(s, "srs.example", now).unwrap())
            .collect();
        (theirs, ours)
    });
    for ((sender, theirs), ours) in SENDERS.iter().zip(&theirs).zip(&ours) {
        let theirs = theirs.found();
        assert_eq!(theirs, ours, "{sender}");
        assert!(theirs.starts_with("SRS0="), "{theirs}");
        let reversed = srs.reverse(theirs, SystemTime::now()).unwrap().unwrap();
        assert_eq!(reversed.kind, Kind::Srs0);
        assert_eq!(reversed.address, *sender);
    }
}

#[test]
fn postsrsd_reverses_what_we_forward() {
    let postsrsd = PostSrsd::start("srs.example", SECRETS_FILE, &[]);
    let srs = Srs::new(&postsrsd.secrets(), Settings::default()).unwrap();
    let now = SystemTime::now();
    let ours: Vec<String> = SENDERS
        .iter()
        .map(|s| srs.forward(s, "srs.example", now).unwrap())
        .collect();
    let ours: Vec<&str> = ours.iter().map(String::as_str).collect();
    let reversed = postsrsd.reverse(&ours);
    for (sender, reversed) in SENDERS.iter().zip(reversed) {
        assert_eq!(reversed, Lookup::Found((*sender).to_owned()), "{sender}");
    }
    // PostSRSd does not look at the domain either
    let elsewhere = ours[0].replace("@srs.example", "@other.example");
    assert_eq!(
        postsrsd.reverse(&[&elsewhere]),
        [Lookup::Found(SENDERS[0].into())]
    );
}

#[test]
fn srs1_chains_agree_both_ways() {
    // three forwarders with secrets of their own: PostSRSd leaves an address alone that already
    // reverses with its own secrets ("Already rewritten"), so a hop sharing the secret would not
    // write SRS1
    let hops: Vec<(PostSrsd, Srs, &str)> = ["fwd1.example", "fwd2.example", "fwd3.example"]
        .into_iter()
        .map(|domain| {
            let postsrsd = PostSrsd::start(domain, format!("{domain} secret\n").as_bytes(), &[]);
            let srs = Srs::new(&postsrsd.secrets(), Settings::default()).unwrap();
            (postsrsd, srs, domain)
        })
        .collect();
    // forwards `address` at hop `i` on both sides: they must agree
    let forward = |i: usize, address: &str| {
        let (postsrsd, srs, domain) = &hops[i];
        same_day(|now| {
            let theirs = postsrsd.forward(&[address])[0].found().to_owned();
            assert_eq!(
                srs.forward(address, domain, now).unwrap(),
                theirs,
                "hop {i}: {address}"
            );
            theirs
        })
    };

    for sender in [
        "bob@orig.example",
        "\"o d d\"@orig.example",
        "Zoë+x@orig.example",
    ] {
        let srs0 = forward(0, sender);
        let srs1 = forward(1, &srs0);
        let again = forward(2, &srs1);
        assert!(
            srs0.starts_with("SRS0=") && srs0.ends_with("@fwd1.example"),
            "{srs0}"
        );
        assert!(
            srs1.starts_with("SRS1=") && srs1.ends_with("@fwd2.example"),
            "{srs1}"
        );
        // re-forwarding SRS1 keeps the first hop, so bounces skip the middle one
        assert!(
            again.starts_with("SRS1=") && again.ends_with("@fwd3.example"),
            "{again}"
        );
        assert!(again.contains("=fwd1.example=="), "{again}");

        // each hop reverses, on both sides, to the SRS0 address at the first hop …
        for (i, address) in [(1, &srs1), (2, &again)] {
            let (postsrsd, srs, _) = &hops[i];
            let reversed = srs.reverse(address, SystemTime::now()).unwrap().unwrap();
            assert_eq!(reversed.kind, Kind::Srs1);
            assert_eq!(reversed.address, srs0);
            assert_eq!(postsrsd.reverse(&[address]), [Lookup::Found(srs0.clone())]);
        }
        // … which takes it home
        let (postsrsd, srs, _) = &hops[0];
        assert_eq!(
            srs.reverse(&srs0, SystemTime::now())
                .unwrap()
                .unwrap()
                .address,
            sender
        );
        assert_eq!(postsrsd.reverse(&[&srs0]), [Lookup::Found(sender.into())]);
    }
    // an SRS0 address from elsewhere (not ours, not checked) is wrapped alike
    let foreign = "SRS0=abcd=AB=orig.example=carol@far.example";
    let wrapped = forward(1, foreign);
    assert_eq!(
        hops[1]
            .1
            .reverse(&wrapped, SystemTime::now())
            .unwrap()
            .unwrap()
            .address,
        foreign
    );
}

#[test]
fn another_separator_and_hash_length_agree() {
    let postsrsd = PostSrsd::start("srs.example", SECRETS_FILE, &["-a+", "-n8", "-N6"]);
    let settings = Settings {
        separator: Separator::Plus,
        hash_length: 8,
        hash_min: 6,
        ..Settings::default()
    };
    let srs = Srs::new(&postsrsd.secrets(), settings).unwrap();
    let (theirs, ours) = same_day(|now| {
        (
            postsrsd.forward(&SENDERS[..4]),
            SENDERS[..4]
                .iter()
                .map(|s| srs.forward(s, "srs.example", now).unwrap())
                .collect::<Vec<_>>(),
        )
    });
    for ((sender, theirs), ours) in SENDERS.iter().zip(&theirs).zip(&ours) {
        assert_eq!(theirs.found(), ours, "{sender}");
        assert!(ours.starts_with("SRS0+"), "{ours}");
        assert_eq!(
            srs.reverse(ours, SystemTime::now())
                .unwrap()
                .unwrap()
                .address,
            *sender
        );
        // a hash cut to 6 characters still passes both, to 5 neither
        let hash_end = 5 + 8;
        let cut6 = format!("{}{}", &ours[..hash_end - 2], &ours[hash_end..]);
        let cut5 = format!("{}{}", &ours[..hash_end - 3], &ours[hash_end..]);
        assert_eq!(
            postsrsd.reverse(&[&cut6]),
            [Lookup::Found((*sender).into())]
        );
        assert!(srs.reverse(&cut6, SystemTime::now()).is_ok());
        assert!(matches!(postsrsd.reverse(&[&cut5])[0], Lookup::Refused(_)));
        assert_eq!(
            srs.reverse(&cut5, SystemTime::now()),
            Err(ReverseError::HashTooShort { hash_min: 6 })
        );
    }
}

#[test]
fn a_rotated_secret_still_verifies_on_both_sides() {
    // PostSRSd signs with "new", still verifies "old"; we were left with "old" first
    let postsrsd = PostSrsd::start("srs.example", b"new\nold\n", &[]);
    let before_rotation = Srs::new(
        &Secrets::new(vec![b"old".to_vec()]).unwrap(),
        Settings::default(),
    )
    .unwrap();
    let rotated = Srs::new(&postsrsd.secrets(), Settings::default()).unwrap();
    let now = SystemTime::now();

    let signed_old = before_rotation
        .forward("alice@example.com", "srs.example", now)
        .unwrap();
    assert_eq!(
        postsrsd.reverse(&[&signed_old]),
        [Lookup::Found("alice@example.com".into())]
    );
    let signed_new = postsrsd.forward(&["alice@example.com"])[0]
        .found()
        .to_owned();
    assert!(rotated.reverse(&signed_new, now).unwrap().is_some());
    assert_eq!(
        before_rotation.reverse(&signed_new, now),
        Err(ReverseError::BadHash)
    );
}

#[test]
fn both_refuse_tampered_expired_and_malformed_addresses() {
    let postsrsd = PostSrsd::start("srs.example", SECRETS_FILE, &[]);
    let srs = Srs::new(&postsrsd.secrets(), Settings::default()).unwrap();
    let now = SystemTime::now();
    let good = srs
        .forward("alice@example.com", "srs.example", now)
        .unwrap();
    let srs1 = srs.forward(&good, "srs.example", now).unwrap();

    // one hash character changed (not only its case)
    let flip = |address: &str| {
        let mut bytes = address.as_bytes().to_vec();
        bytes[5] = if bytes[5].eq_ignore_ascii_case(&b'a') {
            b'B'
        } else {
            b'A'
        };
        String::from_utf8(bytes).unwrap()
    };
    let tampered = flip(&good);
    let tampered_srs1 = flip(&srs1);
    let other_user = good.replace("=alice@", "=mallory@");
    // the oldest address both accept, and a day older
    let oldest = srs
        .forward("alice@example.com", "srs.example", now - 21 * DAY)
        .unwrap();
    let expired = srs
        .forward("alice@example.com", "srs.example", now - 22 * DAY)
        .unwrap();
    let hash_case = format!("SRS0={}", good[5..].to_ascii_lowercase());

    let cases: [(&str, Result<&str, ReverseError>); 7] = [
        (&good, Ok("alice@example.com")),
        (&hash_case, Ok("alice@example.com")),
        (&oldest, Ok("alice@example.com")),
        (&tampered, Err(ReverseError::BadHash)),
        (&tampered_srs1, Err(ReverseError::BadHash)),
        (&other_user, Err(ReverseError::BadHash)),
        (
            &expired,
            Err(ReverseError::Expired {
                age_days: 22,
                max_age_days: 21,
            }),
        ),
    ];
    let addresses: Vec<&str> = cases.iter().map(|(a, _)| *a).collect();
    let theirs = postsrsd.reverse(&addresses);
    for ((address, expected), theirs) in cases.iter().zip(theirs) {
        let ours = srs
            .reverse(address, SystemTime::now())
            .map(|r| r.unwrap().address);
        match expected {
            Ok(original) => {
                assert_eq!(ours.as_deref(), Ok(*original), "{address}");
                assert_eq!(theirs, Lookup::Found((*original).into()), "{address}");
            }
            Err(error) => {
                assert_eq!(ours, Err(*error), "{address}");
                assert!(
                    matches!(theirs, Lookup::Refused(_)),
                    "{address}: {theirs:?}"
                );
            }
        }
    }
    assert_eq!(
        postsrsd.reverse(&[&expired]),
        [Lookup::Refused("Time stamp out of date.".into())]
    );
    assert_eq!(
        postsrsd.reverse(&[&tampered]),
        [Lookup::Refused("Hash invalid in SRS address.".into())]
    );

    // malformed: PostSRSd refuses these too
    for address in [
        "SRS0=@srs.example",
        "SRS0=abcd@srs.example",
        "SRS0=abcd=AB@srs.example",
        "SRS0=abcd=AB=host@srs.example",
        "SRS0=abcd=A1=host=user@srs.example",
        "SRS1=abcd@srs.example",
        "SRS1=abcd=host@srs.example",
    ] {
        assert!(
            matches!(
                srs.reverse(address, now),
                Err(ReverseError::Malformed { .. })
            ),
            "{address}"
        );
        assert!(
            matches!(postsrsd.reverse(&[address])[0], Lookup::Refused(_)),
            "{address}"
        );
    }
    // and neither touches an address that is no SRS address
    assert_eq!(srs.reverse("alice@srs.example", now), Ok(None));
    assert_eq!(
        postsrsd.reverse(&["alice@srs.example"]),
        [Lookup::Refused("Not an SRS address.".into())]
    );
}
