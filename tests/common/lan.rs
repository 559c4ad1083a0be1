//! Network namespaces on a bridge of their own, as control nodes on a LAN: the test's side
//! of the bridge has the first address, namespace `i` the address after it.

use std::process::Command;

pub struct Lan {
    bridge: String,
    namespaces: Vec<String>,
    prefix: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    /// A bridge and `n` namespaces on it, on a /24 of 10.79/16 chosen by the process id
    /// (the lab of `scripts/lab.sh` uses 10.77, 10.78 and 10.99).
    pub fn new(n: usize) -> Lan {
        let id = std::process::id() % 250;
        let lan = Lan {
            bridge: format!("kvmfsbr{id}"),
            namespaces: (0..n).map(|i| format!("kvmfs-ctl{id}-{i}")).collect(),
            prefix: format!("10.79.{id}"),
        };
        ip(&["link", "add", &lan.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lan.host()),
            "dev",
            &lan.bridge,
        ]);
        ip(&["link", "set", &lan.bridge, "up"]);
        for (i, ns) in lan.namespaces.iter().enumerate() {
            let (outside, inside) = (format!("kvmfsv{id}o{i}"), format!("kvmfsv{id}i{i}"));
            ip(&["netns", "add", ns]);
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            ip(&["link", "set", &outside, "master", &lan.bridge, "up"]);
            ip(&["link", "set", &inside, "netns", ns]);
            let addr = format!("{}.{}/24", lan.prefix, i + 2);
            ip(&["-n", ns, "addr", "add", &addr, "dev", &inside]);
            ip(&["-n", ns, "link", "set", &inside, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        lan
    }

    /// The test's own address on the LAN.
    pub fn host(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// The LAN's addresses as a MariaDB host pattern (`10.79.N.%`).
    pub fn host_pattern(&self) -> String {
        format!("{}.%", self.prefix)
    }

    /// The name of namespace `i` (for `Mounted::with_config_env_in_netns`).
    pub fn netns(&self, i: usize) -> &str {
        &self.namespaces[i]
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
