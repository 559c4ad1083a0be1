//! The NoCloud seed an instance boots with (volume label `cidata`): `meta-data`,
//! `user-data` and `network-config` v2, packed into an ISO 9660 image by `genisoimage`.
//! User-supplied values only ever appear as JSON-quoted YAML scalars, and `runcmd` entries
//! are argument lists (run without a shell), so nothing a user writes is parsed as YAML
//! structure or shell.

use std::net::Ipv4Addr;
use std::process::Command;

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

/// Packs the three files into an ISO image labelled `cidata`.
pub fn build_iso(meta: &str, user: &str, network: &str) -> Result<Vec<u8>, SeedError> {
    let dir = tempfile::tempdir().map_err(|e| SeedError(e.to_string()))?;
    for (f, c) in [
        ("meta-data", meta),
        ("user-data", user),
        ("network-config", network),
    ] {
        std::fs::write(dir.path().join(f), c).map_err(|e| SeedError(e.to_string()))?;
    }
    let iso = dir.path().join("seed.iso");
    let out = Command::new("genisoimage")
        .arg("-quiet")
        .arg("-output")
        .arg(&iso)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(dir.path().join("user-data"))
        .arg(dir.path().join("meta-data"))
        .arg(dir.path().join("network-config"))
        .output()
        .map_err(|e| SeedError(format!("genisoimage: {e} (apt-get install genisoimage)")))?;
    if !out.status.success() {
        return Err(SeedError(format!(
            "genisoimage: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::read(&iso).map_err(|e| SeedError(e.to_string()))
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
}
