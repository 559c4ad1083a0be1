//! Simulated KVM nodes for libvirt's built-in test driver (`test:///abs/path/node.xml`).
//! The embedded demo and the test suites describe nodes with `SimNode` and write them out
//! here, so the XML shape the test driver accepts lives in one place.
//!
//! The test driver keeps a node's state in the connection that opened it: every new
//! connection starts again from this file.

use std::fmt::Write as _;
use std::path::Path;

use crate::hv::xml::xml_escape;

/// One simulated node.
#[derive(Debug, Clone)]
pub struct SimNode {
    pub cpus: u32,
    pub memory_mib: u64,
    pub domains: Vec<SimDomain>,
    pub networks: Vec<SimNetwork>,
    /// Storage pool name and the base image volumes it holds (name, GiB).
    pub pool: String,
    pub volumes: Vec<(String, u64)>,
    /// An NFS export (host, path) the pool mounts, as the original mounted its storage
    /// node's `/cloud` on every KVM node; `None` for a local directory.
    pub nfs: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct SimDomain {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub running: bool,
}

#[derive(Debug, Clone)]
pub struct SimNetwork {
    pub name: String,
    pub bridge: String,
    /// Gateway address with prefix, e.g. `192.168.122.1/24`.
    pub address: String,
}

impl SimNode {
    pub fn new(cpus: u32, memory_mib: u64) -> SimNode {
        SimNode {
            cpus,
            memory_mib,
            domains: Vec::new(),
            networks: vec![SimNetwork {
                name: "default".into(),
                bridge: "virbr0".into(),
                address: "192.168.122.1/24".into(),
            }],
            pool: "default".into(),
            volumes: vec![("debian-12.qcow2".into(), 2)],
            nfs: None,
        }
    }

    pub fn domain(mut self, name: &str, vcpus: u32, memory_mib: u64, running: bool) -> Self {
        self.domains.push(SimDomain {
            name: name.into(),
            vcpus,
            memory_mib,
            running,
        });
        self
    }

    pub fn network(mut self, name: &str, bridge: &str, address: &str) -> Self {
        self.networks.push(SimNetwork {
            name: name.into(),
            bridge: bridge.into(),
            address: address.into(),
        });
        self
    }

    /// Makes the pool an NFS (`netfs`) pool named `pool` on `host:path`.
    pub fn nfs_pool(mut self, pool: &str, host: &str, path: &str) -> Self {
        self.pool = pool.into();
        self.nfs = Some((host.into(), path.into()));
        self
    }

    pub fn volume(mut self, name: &str, gib: u64) -> Self {
        self.volumes.push((name.into(), gib));
        self
    }

    /// The `<node>` document the test driver reads.
    pub fn to_xml(&self) -> String {
        let mut x = String::new();
        let _ = writeln!(x, "<node>");
        let _ = writeln!(
            x,
            "  <cpu><mhz>2400</mhz><model>x86_64</model><active>{c}</active><nodes>1</nodes>\
             <sockets>1</sockets><cores>{c}</cores><threads>1</threads></cpu>",
            c = self.cpus
        );
        let _ = writeln!(x, "  <memory>{}</memory>", self.memory_mib * 1024);
        for d in &self.domains {
            // runstate 5 is VIR_DOMAIN_SHUTOFF; the test driver starts every other domain.
            let runstate = if d.running {
                String::new()
            } else {
                "<test:runstate>5</test:runstate>".into()
            };
            let _ = writeln!(
                x,
                "  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\
                 <name>{n}</name>{runstate}<memory>{m}</memory><vcpu>{v}</vcpu>\
                 <os><type arch='x86_64'>hvm</type></os><devices>\
                 <disk type='file' device='disk'><source file='/var/lib/libvirt/images/{n}.qcow2'/>\
                 <target dev='vda' bus='virtio'/></disk>\
                 <interface type='network'><source network='default'/></interface>\
                 </devices></domain>",
                n = xml_escape(&d.name),
                m = d.memory_mib * 1024,
                v = d.vcpus
            );
        }
        for n in &self.networks {
            let (addr, prefix) = n.address.split_once('/').unwrap_or((&n.address, "24"));
            let _ = writeln!(
                x,
                "  <network><name>{}</name><bridge name='{}'/><forward mode='nat'/>\
                 <ip address='{}' prefix='{}'/></network>",
                xml_escape(&n.name),
                xml_escape(&n.bridge),
                xml_escape(addr),
                xml_escape(prefix)
            );
        }
        match &self.nfs {
            None => {
                let _ = writeln!(
                    x,
                    "  <pool type='dir'><name>{}</name>\
                     <target><path>/var/lib/libvirt/images</path></target>",
                    xml_escape(&self.pool)
                );
            }
            Some((host, path)) => {
                let _ = writeln!(
                    x,
                    "  <pool type='netfs'><name>{}</name><source><host name='{}'/>\
                     <dir path='{}'/><format type='nfs'/></source>\
                     <target><path>/var/lib/libvirt/{}</path></target>",
                    xml_escape(&self.pool),
                    xml_escape(host),
                    xml_escape(path),
                    xml_escape(&self.pool)
                );
            }
        }
        for (v, gib) in &self.volumes {
            let _ = writeln!(
                x,
                "    <volume type='file'><name>{}</name><capacity unit='G'>{gib}</capacity>\
                 <target><format type='qcow2'/></target></volume>",
                xml_escape(v)
            );
        }
        let _ = writeln!(x, "  </pool>");
        let _ = writeln!(x, "</node>");
        x
    }

    /// Writes the node file and returns its `test:///…` URI.
    pub fn write(&self, path: &Path) -> std::io::Result<String> {
        std::fs::write(path, self.to_xml())?;
        let abs = std::fs::canonicalize(path)?;
        Ok(format!("test://{}", abs.display()))
    }
}
