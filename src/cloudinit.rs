//! The NoCloud seed an instance boots with (volume label `cidata`): `meta-data`,
//! `user-data` and `network-config` v2, packed into an ISO 9660 image (`build_iso`).
//! User-supplied values only ever appear as JSON-quoted YAML scalars, and `runcmd` entries
//! are argument lists (run without a shell), so nothing a user writes is parsed as YAML
//! structure or shell.

use std::net::Ipv4Addr;

use crate::config::InstancesConfig;
use crate::spec::{Purpose, Spec};

/// One interface with its static address.
#[derive(Debug, Clone)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the cloud-init seed: {0}")]
pub struct SeedError(String);

fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

pub fn meta_data(name: &str, instance_id: &str) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        q(instance_id),
        q(name)
    )
}

pub fn network_config(nics: &[Nic]) -> String {
    let mut s = String::from("version: 2\nethernets:\n");
    for n in nics {
        s.push_str(&format!(
            "  {name}:\n    match:\n      macaddress: {mac}\n    set-name: {name}\n    addresses: [{addr}]\n",
            name = n.name,
            mac = q(&n.mac),
            addr = q(&format!("{}/{}", n.address, n.prefix)),
        ));
        if let Some(gw) = n.gateway {
            // `0.0.0.0/0`, not `default`: cloud-init 22.4 (Debian 12) rejects `to: default`
            // and then configures no interface at all.
            s.push_str(&format!(
                "    routes:\n      - to: \"0.0.0.0/0\"\n        via: {}\n",
                q(&gw.to_string())
            ));
        }
        if !n.dns.is_empty() {
            let d: Vec<String> = n.dns.iter().map(|a| q(&a.to_string())).collect();
            s.push_str(&format!(
                "    nameservers:\n      addresses: [{}]\n",
                d.join(", ")
            ));
        }
    }
    s
}

pub fn user_data(name: &str, spec: &Spec, public_key: &str, cfg: &InstancesConfig) -> String {
    let mut s = String::from("#cloud-config\n");
    s.push_str(&format!("hostname: {}\n", q(name)));
    s.push_str("ssh_pwauth: false\n");
    s.push_str(&format!("ssh_authorized_keys:\n  - {}\n", q(public_key)));
    if spec.purpose == Purpose::Web {
        let root = &cfg.web_root;
        let pkg = &cfg.web_package;
        let git = spec.git.as_ref().map(|g| g.as_str()).unwrap_or_default();
        s.push_str("package_update: false\n");
        // cloud-init refreshes the package lists before installing anything, whatever
        // `package_update` says: an image that carries both packages gets no `packages:`.
        if cfg.install_web_packages {
            s.push_str(&format!("packages:\n  - {}\n  - \"git\"\n", q(pkg)));
        }
        s.push_str("runcmd:\n");
        for cmd in [
            vec!["rm", "-rf", root.as_str()],
            vec!["git", "clone", "--depth", "1", "--", git, root.as_str()],
            vec!["systemctl", "enable", pkg.as_str()],
            vec!["systemctl", "restart", pkg.as_str()],
        ] {
            let args: Vec<String> = cmd.iter().map(|a| q(a)).collect();
            s.push_str(&format!("  - [{}]\n", args.join(", ")));
        }
    }
    s
}

/// Packs the three files into an ISO 9660 image labelled `cidata`, with Rock Ridge and
/// Joliet names (plain ISO 9660 names are upper case 8.3, which cloud-init would not find).
/// Built in memory, with no process to start per build (a `genisoimage` process per build
/// was a quarter of a create's CPU; docs/BENCHMARKS.md).
pub fn build_iso(meta: &str, user: &str, network: &str) -> Result<Vec<u8>, SeedError> {
    use hadris_iso::joliet::JolietLevel;
    use hadris_iso::read::PathSeparator;
    use hadris_iso::write::options::{CreationFeatures, IsoFormatOptions};
    use hadris_iso::write::{File, InputFiles, IsoImageWriter};

    let file = |name: &str, contents: &str| File::File {
        name: std::sync::Arc::new(name.to_string()),
        contents: contents.as_bytes().to_vec(),
    };
    let files = InputFiles {
        path_separator: PathSeparator::ForwardSlash,
        files: vec![
            file("meta-data", meta),
            file("network-config", network),
            file("user-data", user),
        ],
    };
    let options = IsoFormatOptions {
        volume_name: "cidata".into(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("KVMFS".into()),
        sector_size: 2048,
        features: CreationFeatures {
            joliet: Some(JolietLevel::Level3),
            ..CreationFeatures::rock_ridge()
        },
        path_separator: PathSeparator::ForwardSlash,
        // The label is `cidata` as written: cloud-init looks for that name.
        strict_charset: false,
    };
    IsoImageWriter::create(std::io::Cursor::new(Vec::new()), files, options)
        .map(std::io::Cursor::into_inner)
        .map_err(|e| SeedError(format!("cannot build the seed image: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn web_user_data_runs_argument_lists() {
        let cfg = Config::for_tests();
        let spec = Spec::parse(
            br#"{"purpose":"web","git":"https://example.org/a\"b.git"}"#,
            &cfg,
        );
        // A quote in a URL is allowed by the parser; it must stay inside one scalar.
        let spec = spec.unwrap();
        let u = user_data("web1", &spec, "ssh-ed25519 AAAA k", &cfg.instances);
        assert!(u.starts_with("#cloud-config\n"));
        assert!(u.contains(r#"["git", "clone", "--depth", "1", "--", "https://example.org/a\"b.git", "/var/www/html"]"#), "{u}");
        let n = network_config(&[Nic {
            name: "eth0".into(),
            mac: "52:54:00:00:00:01".into(),
            address: Ipv4Addr::new(10, 0, 0, 5),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 0, 0, 1)],
        }]);
        assert!(n.contains("addresses: [\"10.0.0.5/24\"]"));
        assert!(
            n.contains("      - to: \"0.0.0.0/0\"\n        via: \"10.0.0.1\"\n"),
            "{n}"
        );
    }

    #[test]
    fn preinstalled_web_packages_are_not_installed_again() {
        let mut cfg = Config::for_tests();
        let spec = Spec::parse(br#"{"purpose":"web","git":"git://10.0.0.1/site"}"#, &cfg).unwrap();
        let u = user_data("web1", &spec, "ssh-ed25519 AAAA k", &cfg.instances);
        assert!(u.contains("packages:\n  - \"nginx\"\n  - \"git\"\n"), "{u}");
        cfg.instances.install_web_packages = false;
        let u = user_data("web1", &spec, "ssh-ed25519 AAAA k", &cfg.instances);
        assert!(!u.contains("packages:"), "{u}");
        assert!(u.contains("package_update: false\n"), "{u}");
        assert!(u.contains(r#"["systemctl", "restart", "nginx"]"#), "{u}");
        // Not a web instance: nothing about packages at all.
        let plain = Spec::parse(b"{}", &cfg).unwrap();
        let u = user_data("db1", &plain, "ssh-ed25519 AAAA k", &cfg.instances);
        assert!(!u.contains("package") && !u.contains("runcmd"), "{u}");
    }

    #[test]
    fn user_data_sets_no_password_and_refuses_password_logins() {
        let cfg = Config::for_tests();
        for text in [
            &br#"{}"#[..],
            br#"{"purpose":"web","git":"https://example.org/site.git"}"#,
        ] {
            let spec = Spec::parse(text, &cfg).unwrap();
            let u = user_data("web1", &spec, "ssh-ed25519 AAAA k", &cfg.instances);
            assert!(u.contains("\nssh_pwauth: false\n"), "{u}");
            // No password for any user, and no module that sets one (each of cloud-init's
            // password keys has the first word in its name).
            for bad in ["passwd", "password", "users:"] {
                assert!(!u.contains(bad), "{bad} in {u}");
            }
        }
    }

    #[test]
    fn iso_has_the_cidata_label() {
        let iso = build_iso("instance-id: x\n", "#cloud-config\n", "version: 2\n").unwrap();
        // ISO 9660 primary volume descriptor at 32 KiB: volume id at offset 40.
        assert_eq!(&iso[0x8001..0x8006], b"CD001");
        assert_eq!(&iso[0x8028..0x802e], b"cidata");
    }

    /// Reads the image back with `isoinfo` (from genisoimage, an independent reader): the
    /// Rock Ridge names the Linux kernel shows and the Joliet names hold every file whole.
    #[test]
    fn iso_files_read_back_by_name_with_rock_ridge_and_joliet() {
        let user = format!("#cloud-config\n{}\n", "x".repeat(5000));
        let iso = build_iso("instance-id: web1\n", &user, "version: 2\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.iso");
        std::fs::write(&path, &iso).unwrap();
        let isoinfo = |args: &[&str]| {
            let out = std::process::Command::new("isoinfo")
                .args(args)
                .arg("-i")
                .arg(&path)
                .output()
                .expect("isoinfo (apt-get install genisoimage)");
            assert!(out.status.success(), "isoinfo {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let d = isoinfo(&["-d"]);
        assert!(d.contains("Volume id: cidata"), "{d}");
        assert!(d.contains("Rock Ridge signatures"), "{d}");
        assert!(d.contains("Joliet"), "{d}");
        for ext in ["-R", "-J"] {
            let listing = isoinfo(&[ext, "-l"]);
            for name in ["meta-data", "network-config", "user-data"] {
                assert!(listing.contains(&format!(" {name} ")), "{ext}: {listing}");
            }
            for (name, want) in [
                ("/meta-data", "instance-id: web1\n"),
                ("/user-data", user.as_str()),
                ("/network-config", "version: 2\n"),
            ] {
                assert_eq!(isoinfo(&[ext, "-x", name]), want, "{ext} {name}");
            }
        }
    }
}
