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
            if s.len() == scheme.len() {
                return bad("nothing after the scheme");
            }
            return Ok(GitUrl(s.to_string()));
        }
        if s.contains("://") {
            return bad("only https, http, git, ssh, file and user@host:path are allowed");
        }
        // scp-style: [user@]host:path, with a host that is not a path.
        match s.split_once(':') {
            Some((host, path))
                if !host.is_empty()
                    && !path.is_empty()
                    && !host.contains('/')
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

impl Spec {
    /// Parses and resolves `spec.json` against the configuration.
    pub fn parse(text: &[u8], cfg: &Config) -> Result<Spec, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(SpecError::Invalid(format!(
                "larger than {MAX_SPEC_BYTES} bytes"
            )));
        }
        let raw: RawSpec =
            serde_json::from_slice(text).map_err(|e| SpecError::Json(e.to_string()))?;
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
            (r#"[1,2]"#, "invalid type"),
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

    proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,300}") {
            let _ = Spec::parse(s.as_bytes(), &cfg());
            let _ = GitUrl::parse(&s);
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
