//! `spec.json`: parsed into `#[serde(deny_unknown_fields)]` structs, then resolved against
//! the configuration (flavors, default image) into a `Spec` that can only hold valid values.
//! Nothing downstream re-checks a spec.

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::model::NodeName;

/// Largest `spec.json` accepted; larger writes are refused with EFBIG.
pub const MAX_SPEC_BYTES: usize = 16 * 1024;
const MAX_GIT_URL: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.json is not valid JSON: {0}")]
    Json(String),
    #[error("spec.json: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    Web,
    Custom,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Web => "web",
            Purpose::Custom => "custom",
        }
    }
}

/// The file as a user writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    image: Option<String>,
    flavor: Option<String>,
    vcpus: Option<u32>,
    ram_mb: Option<u64>,
    disk_gb: Option<u64>,
    purpose: Option<Purpose>,
    git: Option<String>,
    node: Option<NodeName>,
}

/// A git URL kvmfs will hand to `git`: one of the allowed schemes, never something git could
/// read as an option or a remote helper (`ext::`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GitUrl(String);

impl GitUrl {
    pub fn parse(s: &str) -> Result<GitUrl, SpecError> {
        let bad = |why: &str| Err(SpecError::Invalid(format!("git url {s:?}: {why}")));
        if s.is_empty() {
            return bad("empty");
        }
        if s.len() > MAX_GIT_URL {
            return bad("longer than 2048 bytes");
        }
        if s.starts_with('-') {
            return bad("must not start with '-'");
        }
        if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return bad("must not contain spaces or control characters");
        }
        if s.contains("::") {
            return bad("remote helpers (transport::address) are not allowed");
        }
        const SCHEMES: [&str; 5] = ["https://", "http://", "git://", "ssh://", "file://"];
        if let Some(scheme) = SCHEMES.iter().find(|p| s.starts_with(**p)) {
            let rest = &s[scheme.len()..];
            if rest.is_empty() {
                return bad("nothing after the scheme");
            }
            // ssh would read `ssh://-oProxyCommand=…` as an option.
            let authority = rest.split('/').next().unwrap_or("");
            if authority.split(['@', ':']).any(|p| p.starts_with('-')) {
                return bad("user, host and port must not start with '-'");
            }
            return Ok(GitUrl(s.to_string()));
        }
        if s.contains("://") {
            return bad("only https, http, git, ssh, file and user@host:path are allowed");
        }
        // scp-style: [user@]host:path, with a host that is not a path. As for URLs, no part
        // of what precedes the first `/` may look like an option (ssh and git take the user,
        // the host and the path as arguments).
        let authority = s.split('/').next().unwrap_or("");
        match s.split_once(':') {
            Some((host, path))
                if !host.is_empty()
                    && !path.is_empty()
                    && !host.contains('/')
                    && !authority.split(['@', ':']).any(|p| p.starts_with('-'))
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "@.-_".contains(c)) =>
            {
                Ok(GitUrl(s.to_string()))
            }
            _ => bad("only https, http, git, ssh, file and user@host:path are allowed"),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A complete, valid instance specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    pub image: String,
    pub flavor: Option<String>,
    pub vcpus: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    pub purpose: Purpose,
    pub git: Option<GitUrl>,
    pub node: Option<NodeName>,
}

pub const MAX_VCPUS: u32 = 64;
pub const MIN_RAM_MB: u64 = 128;
pub const MAX_RAM_MB: u64 = 1024 * 1024;
pub const MAX_DISK_GB: u64 = 4096;

/// Whether `text` is an incomplete JSON document (more writes may complete it), as opposed
/// to a finished one that is wrong.
pub fn is_incomplete(text: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(text) {
        Ok(_) => false,
        Err(e) => e.is_eof(),
    }
}

/// The parser quotes keys as they were written (`unknown field \`a\nb\``): control characters
/// are escaped, so a reason stays one line in the `error` file and in the log.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Spec {
    /// Parses and resolves `spec.json` against the configuration.
    pub fn parse(text: &[u8], cfg: &Config) -> Result<Spec, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(SpecError::Invalid(format!(
                "larger than {MAX_SPEC_BYTES} bytes"
            )));
        }
        let json = |e: serde_json::Error| SpecError::Json(one_line(&e.to_string()));
        // serde would also read a struct from an array of its fields in order.
        let value: serde_json::Value = serde_json::from_slice(text).map_err(json)?;
        let kind = match value {
            serde_json::Value::Object(_) => None,
            serde_json::Value::Array(_) => Some("an array"),
            serde_json::Value::String(_) => Some("a string"),
            serde_json::Value::Number(_) => Some("a number"),
            serde_json::Value::Bool(_) => Some("a boolean"),
            serde_json::Value::Null => Some("null"),
        };
        if let Some(kind) = kind {
            return Err(SpecError::Invalid(format!(
                "must be one JSON object ({{\"flavor\": …}}), not {kind}"
            )));
        }
        let raw: RawSpec = serde_json::from_slice(text).map_err(json)?;
        let inv = |m: String| Err(SpecError::Invalid(m));
        let (flavor, vcpus, ram_mb) = match (&raw.flavor, raw.vcpus, raw.ram_mb) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return inv("give either flavor or vcpus + ram_mb, not both".into());
            }
            (Some(f), None, None) => match cfg.flavors.get(f) {
                Some(fl) => (Some(f.clone()), fl.vcpus, fl.ram_mb),
                None => {
                    let known: Vec<&str> = cfg.flavors.keys().map(String::as_str).collect();
                    return inv(format!(
                        "unknown flavor {f:?} (known: {})",
                        known.join(", ")
                    ));
                }
            },
            (None, Some(v), Some(r)) => (None, v, r),
            (None, Some(_), None) | (None, None, Some(_)) => {
                return inv("vcpus and ram_mb go together".into());
            }
            (None, None, None) => match cfg.flavors.get(&cfg.instances.default_flavor) {
                Some(fl) => (
                    Some(cfg.instances.default_flavor.clone()),
                    fl.vcpus,
                    fl.ram_mb,
                ),
                None => {
                    return inv("no flavor given and the default flavor is not configured".into());
                }
            },
        };
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return inv(format!("vcpus must be 1..={MAX_VCPUS}, not {vcpus}"));
        }
        if !(MIN_RAM_MB..=MAX_RAM_MB).contains(&ram_mb) {
            return inv(format!(
                "ram_mb must be {MIN_RAM_MB}..={MAX_RAM_MB}, not {ram_mb}"
            ));
        }
        let disk_gb = raw.disk_gb.unwrap_or(cfg.instances.default_disk_gb);
        if disk_gb == 0 || disk_gb > MAX_DISK_GB {
            return inv(format!("disk_gb must be 1..={MAX_DISK_GB}, not {disk_gb}"));
        }
        let image = raw
            .image
            .unwrap_or_else(|| cfg.instances.default_image.clone());
        if image.is_empty()
            || image.len() > 255
            || image.starts_with('.')
            || image.starts_with('-')
            || !image
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return inv(format!("image {image:?} is not a volume name"));
        }
        let purpose = raw.purpose.unwrap_or(Purpose::Custom);
        let git = match (purpose, raw.git) {
            (Purpose::Web, Some(g)) => Some(GitUrl::parse(&g)?),
            (Purpose::Web, None) => return inv("purpose web needs a git url".into()),
            (Purpose::Custom, Some(_)) => {
                return inv("git is only used with purpose web".into());
            }
            (Purpose::Custom, None) => None,
        };
        Ok(Spec {
            image,
            flavor,
            vcpus,
            ram_mb,
            disk_gb,
            purpose,
            git,
            node: raw.node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> Config {
        Config::for_tests()
    }

    #[test]
    fn flavors_and_defaults() {
        let s = Spec::parse(br#"{"flavor":"m1.medium"}"#, &cfg()).unwrap();
        assert_eq!((s.vcpus, s.ram_mb, s.disk_gb), (2, 2048, 10));
        assert_eq!(s.purpose, Purpose::Custom);
        assert_eq!(s.image, "debian-12.qcow2");
        let s = Spec::parse(b"{}", &cfg()).unwrap();
        assert_eq!(s.flavor.as_deref(), Some("m1.small"));
        let s = Spec::parse(br#"{"vcpus":3,"ram_mb":1536,"disk_gb":20}"#, &cfg()).unwrap();
        assert_eq!((s.vcpus, s.ram_mb, s.disk_gb), (3, 1536, 20));
        let s = Spec::parse(
            br#"{"purpose":"web","git":"https://example.org/site.git","node":"kvm2"}"#,
            &cfg(),
        )
        .unwrap();
        assert_eq!(s.git.unwrap().as_str(), "https://example.org/site.git");
        assert_eq!(s.node.unwrap().as_str(), "kvm2");
    }

    #[test]
    fn bad_specs_say_why() {
        for (text, why) in [
            (r#"{"flavor":"m1.huge"}"#, "unknown flavor"),
            (r#"{"flavor":"m1.small","vcpus":2}"#, "not both"),
            (r#"{"vcpus":2}"#, "go together"),
            (r#"{"vcpus":0,"ram_mb":512}"#, "vcpus"),
            (r#"{"vcpus":2,"ram_mb":5}"#, "ram_mb"),
            (r#"{"disk_gb":0}"#, "disk_gb"),
            (r#"{"disk_gb":-1}"#, "invalid value"),
            (r#"{"purpose":"web"}"#, "needs a git"),
            (r#"{"git":"https://x/y"}"#, "only used with purpose web"),
            (r#"{"colour":"red"}"#, "unknown field"),
            (r#"{"purpose":"db"}"#, "unknown variant"),
            (r#"{"image":"../etc/passwd"}"#, "not a volume name"),
            (r#"{"node":"Bad"}"#, "lowercase"),
            (r#"[1,2]"#, "must be one JSON object"),
            (r#"["debian-12.qcow2","m1.small"]"#, "not an array"),
            (r#"null"#, "not null"),
            (r#"{"vcpus":"2","ram_mb":512}"#, "invalid type"),
        ] {
            let e = Spec::parse(text.as_bytes(), &cfg())
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn git_urls() {
        for ok in [
            "https://github.com/a/b.git",
            "http://h/r",
            "git://h/r",
            "ssh://git@h/r",
            "file:///srv/git/site.git",
            "git@github.com:a/b.git",
        ] {
            assert!(GitUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-uhttps://x",
            "--upload-pack=touch /tmp/x",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "fd::3",
            "https://x y",
            "https://x\n",
            "ftp://h/r",
            "/local/path",
            "https://",
            "h:",
            "ssh://-oProxyCommand=touch%20x/r",
            "ssh://git@-oProxyCommand=x/r",
            "ssh://h:-p/r",
            "git@-oProxyCommand=x:r",
            "-oProxyCommand=x:r",
            "ext::ssh -oProxyCommand=x h",
            "https::x",
            "x::y",
            "transport::address",
        ] {
            assert!(GitUrl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn incomplete_json_is_told_apart() {
        assert!(is_incomplete(br#"{"flavor":"#));
        assert!(is_incomplete(b""));
        assert!(!is_incomplete(br#"{"flavor":"x"}"#));
        assert!(!is_incomplete(br#"{"flavor" 1}"#));
    }

    /// The fields a spec may have.
    const KEYS: [&str; 8] = [
        "image", "flavor", "vcpus", "ram_mb", "disk_gb", "purpose", "git", "node",
    ];

    /// Strings a user might type, with the characters that break naive code: path
    /// separators, dots, spaces, newlines, quotes, shell and SQL metacharacters, `-`, `:`.
    fn nasty_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9.-]{0,20}",
            "[ -~]{0,40}",
            r#"[-./ \n\t'";$`|&<>(){}*?!#%:@\\a-zA-Z0-9]{0,40}"#,
            Just("m1.small".to_string()),
            Just("debian-12.qcow2".to_string()),
            Just("web".to_string()),
            Just("https://example.org/a.git".to_string()),
            Just("'; DROP TABLE vm; --".to_string()),
            Just("$(reboot)".to_string()),
            Just("../../etc/passwd".to_string()),
            Just("ext::sh -c reboot".to_string()),
        ]
    }

    /// Any JSON value, nested a few levels, with nasty strings and numbers of every kind.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            (0u64..200).prop_map(serde_json::Value::from),
            nasty_string().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        proptest::sample::select(KEYS.to_vec()).prop_map(String::from),
                        nasty_string()
                    ],
                    inner,
                    0..5,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A spec object whose values are any JSON: mostly wrong, sometimes right.
    fn spec_object() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
        proptest::collection::btree_map(
            proptest::sample::select(KEYS.to_vec()).prop_map(String::from),
            json_value(),
            0..6,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    fn check_valid(s: &Spec) -> Result<(), TestCaseError> {
        prop_assert!((1..=MAX_VCPUS).contains(&s.vcpus));
        prop_assert!((MIN_RAM_MB..=MAX_RAM_MB).contains(&s.ram_mb));
        prop_assert!((1..=MAX_DISK_GB).contains(&s.disk_gb));
        prop_assert!(!s.image.is_empty() && s.image.len() <= 255);
        prop_assert!(!s.image.starts_with(['.', '-']));
        prop_assert!(
            s.image
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        );
        prop_assert_eq!(s.git.is_some(), s.purpose == Purpose::Web);
        if let Some(g) = &s.git {
            prop_assert!(!g.as_str().starts_with('-') && !g.as_str().contains("::"));
            prop_assert!(
                !g.as_str()
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            );
        }
        if let Some(n) = &s.node {
            prop_assert!(crate::model::NodeName::new(n.as_str()).is_ok());
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,300}") {
            let _ = Spec::parse(s.as_bytes(), &cfg());
            let _ = GitUrl::parse(&s);
        }

        #[test]
        fn any_bytes_are_answered(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = is_incomplete(&b);
            if let Ok(s) = Spec::parse(&b, &cfg()) {
                check_valid(&s)?;
            }
        }

        #[test]
        fn reasons_are_one_line(key in "[a-z\n\r\t\u{1b}]{1,10}", v in json_value()) {
            let mut m = serde_json::Map::new();
            m.insert(key, v);
            if let Err(e) = Spec::parse(&serde_json::to_vec(&m).unwrap(), &cfg()) {
                prop_assert!(!e.to_string().chars().any(char::is_control), "{:?}", e);
            }
        }

        #[test]
        fn any_json_is_refused_or_valid(v in json_value()) {
            let text = serde_json::to_vec(&v).unwrap();
            prop_assert!(!is_incomplete(&text), "a whole document is complete");
            match Spec::parse(&text, &cfg()) {
                Ok(s) => check_valid(&s)?,
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn spec_objects_are_refused_with_a_reason_or_valid(m in spec_object()) {
            let text = serde_json::to_vec(&m).unwrap();
            match Spec::parse(&text, &cfg()) {
                Ok(s) => check_valid(&s)?,
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(e.starts_with("spec.json"), "{}", e);
                    prop_assert!(e.len() > "spec.json: ".len() + 3, "{}", e);
                }
            }
        }

        #[test]
        fn unknown_keys_are_refused(key in "[ -~]{1,30}", v in json_value()) {
            prop_assume!(!KEYS.contains(&key.as_str()));
            let mut m = serde_json::Map::new();
            m.insert(key, v);
            let e = Spec::parse(&serde_json::to_vec(&m).unwrap(), &cfg()).unwrap_err();
            // Either the key or, first, its value's type is named.
            prop_assert!(e.to_string().contains("unknown field"), "{}", e);
        }

        #[test]
        fn numbers_out_of_range_are_refused(
            key in proptest::sample::select(vec!["vcpus", "ram_mb", "disk_gb"]),
            n in prop_oneof![
                i64::MIN..0i64,
                Just(0i64),
                (MAX_DISK_GB as i64 + 1)..i64::MAX,
            ],
        ) {
            let mut m = serde_json::Map::new();
            m.insert(key.to_string(), n.into());
            if key != "disk_gb" {
                // vcpus and ram_mb come as a pair; the other one is fine.
                let other = if key == "vcpus" { ("ram_mb", 512) } else { ("vcpus", 1) };
                m.insert(other.0.to_string(), other.1.into());
            }
            let r = Spec::parse(&serde_json::to_vec(&m).unwrap(), &cfg());
            // 65..=4096 vCPUs, or RAM under 128 MiB, are refused by their own bounds.
            prop_assert!(r.is_err(), "{} = {} accepted", key, n);
        }

        #[test]
        fn huge_and_fractional_numbers_are_refused(
            key in proptest::sample::select(vec!["vcpus", "ram_mb", "disk_gb"]),
            text in prop_oneof![
                Just("18446744073709551616".to_string()),
                Just("1e400".to_string()),
                Just("-0.5".to_string()),
                Just("99999999999999999999999999".to_string()),
                (1u32..100).prop_map(|n| format!("{n}.5")),
            ],
        ) {
            let doc = format!(r#"{{"{key}":{text}}}"#);
            let e = Spec::parse(doc.as_bytes(), &cfg()).unwrap_err().to_string();
            prop_assert!(
                e.contains("invalid type") || e.contains("out of range") || e.contains("invalid value"),
                "{}: {}", doc, e
            );
        }

        #[test]
        fn wrong_types_are_refused(
            key in proptest::sample::select(KEYS.to_vec()),
            v in prop_oneof![
                Just(serde_json::json!([1])),
                Just(serde_json::json!({"a": 1})),
                Just(serde_json::json!(true)),
            ],
        ) {
            let mut m = serde_json::Map::new();
            m.insert(key.to_string(), v);
            let e = Spec::parse(&serde_json::to_vec(&m).unwrap(), &cfg()).unwrap_err();
            // serde reads `purpose`, an enum, as a variant name or a map first.
            prop_assert!(
                e.to_string().contains("invalid type")
                    || (key == "purpose" && matches!(e, SpecError::Json(_))),
                "{}", e
            );
        }

        #[test]
        fn a_document_is_never_committed_early(
            vcpus in 1u32..=MAX_VCPUS,
            ram in MIN_RAM_MB..=8192,
            disk in 1u64..=MAX_DISK_GB,
            junk in r"[a-z}\]]{1,5}",
        ) {
            let doc = format!(r#"{{ "vcpus": {vcpus}, "ram_mb": {ram}, "disk_gb": {disk} }}"#);
            prop_assert!(Spec::parse(doc.as_bytes(), &cfg()).is_ok());
            prop_assert!(!is_incomplete(doc.as_bytes()));
            // Every proper prefix may still become this document: the tree waits for more.
            for cut in 1..doc.len() {
                prop_assert!(is_incomplete(&doc.as_bytes()[..cut]), "{}", &doc[..cut]);
            }
            // Anything after it makes it wrong for good: refused at once, never waited on.
            let bad = format!("{doc}{junk}");
            prop_assert!(!is_incomplete(bad.as_bytes()));
            prop_assert!(Spec::parse(bad.as_bytes(), &cfg()).is_err());
        }

        #[test]
        fn oversized_specs_are_refused(pad in (MAX_SPEC_BYTES - 8)..(MAX_SPEC_BYTES * 2)) {
            let doc = format!(r#"{{"image":"{}"}}"#, "a".repeat(pad));
            prop_assume!(doc.len() > MAX_SPEC_BYTES);
            let e = Spec::parse(doc.as_bytes(), &cfg()).unwrap_err();
            prop_assert!(e.to_string().contains("larger than"), "{}", e);
        }

        #[test]
        fn git_urls_that_are_accepted_are_safe(s in prop_oneof![
            nasty_string(),
            nasty_string().prop_map(|s| format!("https://{s}")),
            nasty_string().prop_map(|s| format!("ssh://{s}")),
            nasty_string().prop_map(|s| format!("{s}:{s}")),
            nasty_string().prop_map(|s| format!("ext::{s}")),
            nasty_string().prop_map(|s| format!("-{s}")),
        ]) {
            if let Ok(g) = GitUrl::parse(&s) {
                let g = g.as_str();
                prop_assert!(!g.starts_with('-'));
                prop_assert!(!g.contains("::"));
                prop_assert!(!g.chars().any(|c| c.is_whitespace() || c.is_control()));
                prop_assert!(g.len() <= MAX_GIT_URL);
                let authority = g.split_once("://").map_or(g, |(_, r)| r);
                let authority = authority.split('/').next().unwrap_or("");
                prop_assert!(!authority.split(['@', ':']).any(|p| p.starts_with('-')), "{}", g);
            }
        }

        #[test]
        fn accepted_specs_are_in_bounds(
            v in proptest::option::of(0u32..200),
            r in proptest::option::of(0u64..2_000_000),
            d in proptest::option::of(0u64..10_000),
        ) {
            let mut m = serde_json::Map::new();
            if let Some(v) = v { m.insert("vcpus".into(), v.into()); }
            if let Some(r) = r { m.insert("ram_mb".into(), r.into()); }
            if let Some(d) = d { m.insert("disk_gb".into(), d.into()); }
            let text = serde_json::to_vec(&m).unwrap();
            if let Ok(s) = Spec::parse(&text, &cfg()) {
                prop_assert!(s.vcpus >= 1 && s.vcpus <= MAX_VCPUS);
                prop_assert!(s.ram_mb >= MIN_RAM_MB && s.ram_mb <= MAX_RAM_MB);
                prop_assert!(s.disk_gb >= 1 && s.disk_gb <= MAX_DISK_GB);
            }
        }
    }
}
