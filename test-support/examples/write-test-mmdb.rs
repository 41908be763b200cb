//! Writes the test MaxMind databases of [`test_support::mmdb`] into a directory:
//! `test-country.mmdb` (TEST-NET-1 NL, TEST-NET-2 US, TEST-NET-3 CN, 2001:db8::/32 DE) and
//! `test-asn.mmdb`, for trying the geoip module by hand (`mmdblookup` reads them) and as the
//! fuzz seeds of `geoip_database`; with `--city N`, also `test-city.mmdb` of N networks.
//!
//! `cargo run -p test-support --example write-test-mmdb -- DIR [--city N]`

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use test_support::mmdb;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: write-test-mmdb DIR [--city N]"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in [
        ("test-country.mmdb", mmdb::test_country_db()),
        ("test-asn.mmdb", mmdb::test_asn_db()),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
        println!("wrote {}", dir.join(name).display());
    }
    if args.next().as_deref() == Some("--city") {
        let networks: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
        std::fs::write(dir.join("test-city.mmdb"), mmdb::city_db(networks).0).unwrap();
        println!("wrote {}", dir.join("test-city.mmdb").display());
    }
}
