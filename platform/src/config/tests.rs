//! The configuration's tests: the shipped example against the defaults, overrides, validation.
#![allow(clippy::unwrap_used)]

use super::*;
use std::time::Duration;

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluegetter.example.toml")
}

#[test]
fn shipped_example_loads_and_equals_the_defaults() {
    let loaded = load(Some(&example_path()), HashMap::new()).unwrap();
    assert_eq!(loaded, Config::default());
}

#[test]
fn shipped_example_documents_every_key() {
    // Every key of the defaults, serialized, must appear (uncommented) in the example.
    let text = std::fs::read_to_string(example_path()).unwrap();
    let example: toml::Table = toml::from_str(&text).unwrap();
    let defaults: toml::Table = toml::Value::try_from(Config::default())
        .unwrap()
        .try_into()
        .unwrap();
    fn walk(prefix: &str, want: &toml::Table, have: &toml::Table) {
        for (key, value) in want {
            let path = format!("{prefix}{key}");
            let Some(other) = have.get(key) else {
                panic!("cluegetter.example.toml lacks `{path}`");
            };
            if let (toml::Value::Table(w), toml::Value::Table(h)) = (value, other) {
                walk(&format!("{path}."), w, h);
            }
        }
    }
    walk("", &defaults, &example);
}

/// docker-compose.yml's configuration, with the environment the compose file gives every
/// cluegetter container (host networking's listeners, scaled workers' metrics port 0).
#[test]
fn compose_configuration_loads_with_the_compose_environment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluegetter.compose.toml");
    let env: HashMap<String, String> = [
        (
            "CLUEGETTER_BROKER__URL",
            "amqp://cluegetter:pw@127.0.0.1:5673/%2f",
        ),
        (
            "CLUEGETTER_DATABASE__URL",
            "mysql://cluegetter:pw@127.0.0.1:3307/cluegetter",
        ),
        ("CLUEGETTER_GATEWAY__LISTEN", "127.0.0.1:10043"),
        ("CLUEGETTER_CHECK_WORKERS__METRICS_LISTEN", "127.0.0.1:0"),
        (
            "CLUEGETTER_BOUNCE_INGEST__ALLOW",
            "127.0.0.0/8,172.16.0.0/12",
        ),
        ("CLUEGETTER_RSPAMD__PORT", "11343"),
        ("CLUEGETTER_CLAMAV__ADDRESS", "tcp://clamav:3310"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = load(Some(&path), env).unwrap();
    assert!(config.rspamd.enabled && config.quotas.enabled);
    assert_eq!(config.rspamd.port, 11343);
    assert_eq!(config.check_workers.metrics_listen.port(), 0);
    assert_eq!(config.bounce_ingest.allow.len(), 2);
}

#[test]
fn stage_checks_name_enabled_modules() {
    let mut config = Config::default();
    config.stage_checks.rcpt = vec!["rspamd".to_owned()];
    let error = config.validate().unwrap_err();
    assert!(
        error.contains("[stage-checks] rcpt") && error.contains("rspamd"),
        "{error}"
    );
    config.rspamd.enabled = true;
    config.validate().unwrap();
    assert_eq!(config.stage_checks.stages_of("rspamd"), [CheckStage::Rcpt]);
    assert!(config.stage_checks.modules(CheckStage::Eom).is_empty());
}

#[test]
fn no_file_means_defaults() {
    assert_eq!(load(None, HashMap::new()).unwrap(), Config::default());
}

#[test]
fn environment_overrides_top_level_and_section_keys() {
    let env = HashMap::from([
        ("CLUEGETTER_NOOP".to_owned(), "true".to_owned()),
        (
            "CLUEGETTER_MESSAGE_REJECT_SCORE".to_owned(),
            "6.5".to_owned(),
        ),
        ("CLUEGETTER_RSPAMD__ENABLED".to_owned(), "true".to_owned()),
        ("CLUEGETTER_RSPAMD__TIMEOUT".to_owned(), "3s".to_owned()),
        (
            "CLUEGETTER_BROKER__URL".to_owned(),
            "amqp://x:y@127.0.0.1:5672/v".to_owned(),
        ),
        (
            "CLUEGETTER_WHITELIST".to_owned(),
            "127.0.0.0/8,::1".to_owned(),
        ),
    ]);
    let config = load(None, env).unwrap();
    assert!(config.noop);
    assert_eq!(config.message_reject_score, 6.5);
    assert!(config.rspamd.enabled);
    assert_eq!(config.rspamd.timeout, Duration::from_secs(3));
    assert_eq!(config.broker.url, "amqp://x:y@127.0.0.1:5672/v");
    assert!(config.is_whitelisted("127.0.0.9".parse().unwrap()));
    assert!(config.is_whitelisted("::1".parse().unwrap()));
    assert!(!config.is_whitelisted("192.0.2.1".parse().unwrap()));
}

fn load_text(text: &str) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("cg-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    let result = load(Some(&path), HashMap::new());
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

#[test]
fn unknown_key_is_a_one_line_error_naming_it() {
    let err = load_text("noop = true\nbreaker-scor = 3\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("breaker-scor"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn bad_whitelist_entry_is_named() {
    let err = load_text("whitelist = [\"10.0.0.0/8\", \"nonsense\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nonsense"), "{err}");
}

#[test]
fn module_in_two_groups_is_refused() {
    let err = load_text("[module-groups.a]\nrspamd = 0.5\n[module-groups.b]\nrspamd = 0.5\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("two module groups"), "{err}");
}

#[test]
fn add_header_lines_parse_with_the_unique_flag() {
    let config = load_text(
        "add-header = [\"X-Scanned: ClueGetter at %{hostname}\", \"[U] X-Spam-Score: %{rejectScore}\", \"[U] X-Foo:\"]\n",
    )
    .unwrap();
    assert_eq!(config.add_header.len(), 3);
    assert!(!config.add_header[0].unique);
    assert_eq!(config.add_header[0].template, "ClueGetter at %{hostname}");
    assert!(config.add_header[1].unique);
    assert_eq!(config.add_header[2].template, "");
    for bad in ["[X] A: b", "no colon", ": empty name", "Bad Name: x"] {
        let err = load_text(&format!("add-header = [\"{bad}\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("add-header"), "{bad}: {err}");
    }
}

#[test]
fn a_zero_reject_score_is_refused() {
    let err = load_text("message-reject-score = 0\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("message-reject-score"), "{err}");
}

#[test]
fn bounce_ingest_allow_list_is_overridden_from_the_environment() {
    let env = HashMap::from([(
        "CLUEGETTER_BOUNCE_INGEST__ALLOW".to_owned(),
        "172.16.0.0/12,127.0.0.1".to_owned(),
    )]);
    let config = load(None, env).unwrap();
    assert_eq!(
        config.bounce_ingest.allow,
        vec![
            "172.16.0.0/12".parse::<IpNet>().unwrap(),
            "127.0.0.1/32".parse().unwrap()
        ]
    );
}

#[test]
fn bounce_ingest_limits_are_checked_and_its_allow_list_read() {
    let config =
        load_text("[bounce-ingest]\nallow = [\"10.1.2.3\", \"192.0.2.0/24\"]\nmax-size = 2048\n")
            .unwrap();
    assert_eq!(
        config.bounce_ingest.allow,
        vec![
            "10.1.2.3/32".parse::<IpNet>().unwrap(),
            "192.0.2.0/24".parse().unwrap()
        ]
    );
    for (text, key) in [
        ("max-size = 16777216", "max-size"),
        ("max-size = 10", "max-size"),
        ("read-timeout = \"0s\"", "read-timeout"),
        ("spool-max-size = 4194304", "spool-max-size"),
        ("allow = [\"loopback\"]", "loopback"),
    ] {
        let err = load_text(&format!("[bounce-ingest]\n{text}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn durations_are_human() {
    let config = load_text("[gateway]\nmessage-deadline = \"1m 30s\"\n").unwrap();
    assert_eq!(config.gateway.message_deadline, Duration::from_secs(90));
}

#[test]
fn quotas_tally_status_must_name_verdicts_and_reservations_outlive_the_deadline() {
    let config = load_text("[quotas]\ntally-status = [\"permit\", \"reject\"]\n").unwrap();
    assert_eq!(
        config.quotas.tally_status,
        [wire::Action::Permit, wire::Action::Reject]
    );
    for (text, key) in [
        ("[quotas]\ntally-status = []\n", "tally-status"),
        ("[quotas]\ntally-status = [\"accept\"]\n", "accept"),
        ("[quotas]\nreservation-ttl = \"10s\"\n", "reservation-ttl"),
    ] {
        let err = load_text(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn verdict_msg_lines_are_upper_cased_and_collapsed() {
    let config = load_text(
        "[spamassassin]\nverdict-msg = [\"gtube:  This   is\\tGTUBE \", \"RDNS_NONE: No rDNS for %{clientIp}\"]\n",
    )
    .unwrap();
    assert_eq!(
        config.spamassassin.verdict_msg,
        [
            VerdictMsg {
                rule: "GTUBE".into(),
                message: "This is GTUBE".into()
            },
            VerdictMsg {
                rule: "RDNS_NONE".into(),
                message: "No rDNS for %{clientIp}".into()
            }
        ]
    );
    for bad in ["no colon", "BAD RULE: x", "EMPTY:  "] {
        let err = load_text(&format!("[spamassassin]\nverdict-msg = [\"{bad}\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("verdict-msg"), "{bad}: {err}");
    }
}

#[test]
fn d33_a_verdict_msg_rule_listed_twice_in_any_case_is_refused() {
    let err = load_text("[spamassassin]\nverdict-msg = [\"GTUBE: a\", \"gtube: b\"]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`GTUBE` is listed twice"), "{err}");
}

#[test]
fn clamd_addresses_parse_in_the_three_forms() {
    assert_eq!(
        ClamdAddress::parse("tcp://127.0.0.1:3310").unwrap(),
        ClamdAddress::Tcp("127.0.0.1:3310".into())
    );
    assert_eq!(
        ClamdAddress::parse("tcp://[::1]:3310").unwrap(),
        ClamdAddress::Tcp("[::1]:3310".into())
    );
    assert_eq!(
        ClamdAddress::parse("unix:///run/clamav/clamd.ctl").unwrap(),
        ClamdAddress::Unix("/run/clamav/clamd.ctl".into())
    );
    assert_eq!(
        ClamdAddress::parse("/var/run/clamav/clamd.ctl").unwrap(),
        ClamdAddress::Unix("/var/run/clamav/clamd.ctl".into())
    );
    for bad in [
        "tcp://127.0.0.1",
        "tcp://:3310",
        "clamd.ctl",
        "http://x:1",
        "",
    ] {
        assert!(ClamdAddress::parse(bad).is_err(), "{bad}");
    }
    let config = load_text("[clamav]\naddress = \"unix:///tmp/c.sock\"\n").unwrap();
    assert_eq!(config.clamav.address.to_string(), "unix:///tmp/c.sock");
    let err = load_text("[clamav]\naddress = \"localhost\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("localhost"), "{err}");
}

#[test]
fn greylisting_durations_and_resolver_are_read() {
    let config = load_text(
        "[greylisting]\ninitial-period = \"2s\"\nretry-window = \"90m\"\n\
         dns-resolver = \"127.0.0.1:5353\"\nwhitelist-spf = [\"example.test\"]\n",
    )
    .unwrap();
    let g = &config.greylisting;
    assert_eq!(g.initial_period, Duration::from_secs(2));
    assert_eq!(g.retry_window, Duration::from_secs(90 * 60));
    assert_eq!(g.whitelist_period, Duration::from_secs(40 * 24 * 3600));
    assert_eq!(g.dns_resolver, Some("127.0.0.1:5353".parse().unwrap()));
    assert_eq!(g.whitelist_spf, ["example.test"]);
    assert_eq!(config.module("greylisting").unwrap().max_size(), None);
    assert_eq!(
        config.module("clamav").unwrap().max_size(),
        Some(10_485_760)
    );
    assert_eq!(
        config.module("spamassassin").unwrap().max_size(),
        Some(500_000)
    );
}

#[test]
fn srs_is_read_and_asked_at_rcpt_about_srs_addresses_only() {
    let config = load_text(
        "[srs]\nenabled = true\ndomain = \"srs.example.net\"\n\
         local-domains = [\"example.net\", \"Example.ORG\"]\nrewrite = \"always\"\n\
         separator = \"+\"\nmax-age = \"30d\"\n",
    )
    .unwrap();
    let srs = &config.srs;
    assert_eq!(srs.rewrite, SrsRewrite::Always);
    assert_eq!(srs.separator, '+');
    assert_eq!(srs.max_age_days(), 30);
    assert!(srs.is_local_domain("example.org") && srs.is_local_domain("SRS.example.NET"));
    assert!(!srs.is_local_domain("example.com"));
    assert_eq!(config.module("srs").unwrap().max_size(), None);
    assert_eq!(config.enabled_modules(), ["srs"]);
    // asked at RCPT without a [stage-checks] entry, about SRS-looking recipients only
    assert!(config.checks_early_at(CheckStage::Rcpt));
    assert!(!config.checks_early_at(CheckStage::Helo));
    assert!(config.asks_early("srs", CheckStage::Rcpt, "srs0=x@example.net"));
    assert!(!config.asks_early("srs", CheckStage::Rcpt, "bob@example.net"));
    assert!(!config.asks_early("srs", CheckStage::Helo, "SRS0=x@example.net"));
    assert!(!config.asks_early("rspamd", CheckStage::Rcpt, "SRS0=x@example.net"));
    let env = HashMap::from([(
        "CLUEGETTER_SRS__LOCAL_DOMAINS".to_owned(),
        "a.test,b.test".to_owned(),
    )]);
    assert_eq!(
        load(None, env).unwrap().srs.local_domains,
        ["a.test", "b.test"]
    );
    // disabled: nothing asked
    let config = Config::default();
    assert!(!config.checks_early_at(CheckStage::Rcpt));
    assert!(!config.asks_early("srs", CheckStage::Rcpt, "SRS0=x@example.net"));
}

#[test]
fn srs_values_that_make_no_sense_are_refused() {
    for (text, key) in [
        ("enabled = true", "domain must be set"),
        (
            "enabled = true\ndomain = \"d\"\nsecrets-file = \"\"",
            "secrets-file",
        ),
        ("hash-length = 0", "hash-length"),
        ("hash-length = 28", "hash-length"),
        ("hash-length = 4\nhash-min-length = 5", "hash-min-length"),
        ("separator = \"/\"", "separator"),
        ("max-age = \"36h\"", "max-age"),
        ("max-age = \"1024d\"", "max-age"),
        ("local-domains = [\"a@b\"]", "not a domain name"),
        ("local-domains = [\"\"]", "empty name"),
        ("recipient-header = \"X Original\"", "recipient-header"),
        ("rewrite = \"sometimes\"", "rewrite"),
    ] {
        let err = load_text(&format!("[srs]\n{text}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn greylisting_values_that_make_no_sense_are_refused() {
    for (text, key) in [
        ("client-ipv4-prefix = 33", "client-ipv4-prefix"),
        ("client-ipv6-prefix = 129", "client-ipv6-prefix"),
        ("initial-period = \"3d\"", "retry-window"),
        ("whitelist-spf = [\"not a domain\"]", "whitelist-spf"),
        ("dns-resolver = \"127.0.0.1\"", "dns-resolver"),
    ] {
        let err = load_text(&format!("[greylisting]\n{text}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    let err = load_text("[spamassassin]\nconnect-timeout = \"0s\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("connect-timeout"), "{err}");
}

#[test]
fn auditor_web_users_need_argon2_hashes_and_tokens_sha256_digests() {
    let text = format!(
        "[auditor]\n[[auditor.web-users]]\nname = \"pm\"\npassword-hash = \"$argon2id$x\"\n\
         [[auditor.web-api-tokens]]\nname = \"cron\"\nsha256 = \"{}\"\n",
        "ab".repeat(32)
    );
    let config = load_text(&text).unwrap();
    assert_eq!(config.auditor.web_users[0].name, "pm");
    assert_eq!(config.auditor.web_api_tokens[0].sha256, "ab".repeat(32));
    let err =
        load_text("[auditor]\n[[auditor.web-users]]\nname = \"pm\"\npassword-hash = \"secret\"\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("argon2"), "{err}");
    let err = load_text("[auditor]\n[[auditor.web-api-tokens]]\nname = \"x\"\nsha256 = \"abc\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("64 hex"), "{err}");
}

#[test]
fn auditor_roles_are_read_and_domains_go_with_domain_admin_only() {
    let user = |extra: &str| {
        format!(
            "[auditor]\n[[auditor.web-users]]\nname = \"pm\"\npassword-hash = \"$argon2id$x\"\n{extra}"
        )
    };
    let config = load_text(&user("")).unwrap();
    assert_eq!(config.auditor.web_users[0].role, WebRole::Admin);
    let config = load_text(&user(
        "role = \"domain-admin\"\ndomains = [\"one.example\", \"two.example\"]\n",
    ))
    .unwrap();
    assert_eq!(config.auditor.web_users[0].role, WebRole::DomainAdmin);
    assert_eq!(config.auditor.web_users[0].domains.len(), 2);
    let config = load_text(&user("role = \"auditor\"\n")).unwrap();
    assert_eq!(config.auditor.web_users[0].role, WebRole::Auditor);
    for (extra, expected) in [
        ("role = \"domain-admin\"\n", "no domains"),
        ("role = \"domain-admin\"\ndomains = []\n", "no domains"),
        ("domains = [\"one.example\"]\n", "takes none"),
        (
            "role = \"auditor\"\ndomains = [\"one.example\"]\n",
            "takes none",
        ),
        (
            "role = \"domain-admin\"\ndomains = [\"*.example\"]\n",
            "plain domain",
        ),
        ("role = \"root\"\n", "role"),
    ] {
        let err = load_text(&user(extra)).unwrap_err().to_string();
        assert!(err.contains(expected), "{extra}: {err}");
    }
    let token = format!(
        "[auditor]\n[[auditor.web-api-tokens]]\nname = \"x\"\nsha256 = \"{}\"\nrole = \"domain-admin\"\n",
        "ab".repeat(32)
    );
    let err = load_text(&token).unwrap_err().to_string();
    assert!(
        err.contains("web-api-tokens") && err.contains("no domains"),
        "{err}"
    );
    let err = load_text("[auditor]\nweb-csv-max-rows = 0\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("web-csv-max-rows"), "{err}");
}

#[test]
fn auditor_login_throttling_is_read_and_checked() {
    let defaults = AuditorConfig::default();
    assert_eq!(defaults.web_login_max_failures, 5);
    assert_eq!(defaults.web_login_failure_window, Duration::from_secs(900));
    let config =
        load_text("[auditor]\nweb-login-max-failures = 3\nweb-login-failure-window = \"2m 30s\"\n")
            .unwrap();
    assert_eq!(config.auditor.web_login_max_failures, 3);
    assert_eq!(
        config.auditor.web_login_failure_window,
        Duration::from_secs(150)
    );
    for (text, key) in [
        ("web-login-max-failures = 0", "web-login-max-failures"),
        ("web-login-max-failures = 1001", "web-login-max-failures"),
        (
            "web-login-failure-window = \"0s\"",
            "web-login-failure-window",
        ),
        (
            "web-login-failure-window = \"500ms\"",
            "web-login-failure-window",
        ),
    ] {
        let err = load_text(&format!("[auditor]\n{text}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn auditor_retention_is_in_weeks_and_messages_outlive_their_parts() {
    let config = load_text(
        "[auditor]\narchive-retention-message = \"4w\"\narchive-retention-header = \"4w\"\n\
         archive-retention-body = \"0s\"\narchive-prune-interval = \"0s\"\n",
    )
    .unwrap();
    let auditor = &config.auditor;
    assert_eq!(
        auditor.archive_retention_message,
        Duration::from_secs(4 * 604_800)
    );
    assert_eq!(auditor.archive_retention_body, Duration::ZERO);
    assert_eq!(auditor.archive_prune_interval, Duration::ZERO);
    assert_eq!(
        AuditorConfig::default()
            .archive_retention_safeguard
            .as_secs_f64()
            / 604_800.0,
        1.01
    );
    let err = load_text("[auditor]\narchive-retention-message = \"25w\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("archive-retention-message (25w)")
            && err.contains("archive-retention-header (26w)"),
        "{err}"
    );
}

#[test]
fn broker_and_database_url_are_one_url_or_a_list() {
    let dir = std::env::temp_dir().join(format!("cg-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "[broker]\nurl = [\"amqp://a:pw@127.0.0.2:5672/v\", \"amqp://a:pw@127.0.0.3:5672/v\"]\n",
    )
    .unwrap();
    let config = load(Some(&file), HashMap::new()).unwrap();
    assert_eq!(config.broker.url.len(), 2);
    assert_eq!(config.broker.url.first(), "amqp://a:pw@127.0.0.2:5672/v");
    let shown = config.broker.url.to_string();
    assert!(!shown.contains("pw"), "passwords are not shown: {shown}");

    std::fs::write(&file, "[broker]\nurl = []\n").unwrap();
    assert!(load(Some(&file), HashMap::new()).is_err(), "an empty list");

    std::fs::write(
        &file,
        "[database]\nurl = [\"mysql://root@127.0.0.2/c\", \"mysql://root@127.0.0.3/c\"]\n",
    )
    .unwrap();
    let config = load(Some(&file), HashMap::new()).unwrap();
    assert_eq!(config.database.url.len(), 2, "a Galera cluster's nodes");
    assert_eq!(config.database.url.first(), "mysql://root@127.0.0.2/c");
    std::fs::remove_dir_all(&dir).unwrap();
}
