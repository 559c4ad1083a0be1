//! libvirt XML documents kvmfs writes: instance domains and their volumes. Every value from
//! outside goes through `xml_escape`.

use std::fmt::Write as _;

/// Escapes text for XML character data and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Namespace of kvmfs's `<metadata>` element, which marks a domain as kvmfs-managed.
pub const METADATA_NS: &str = "https://kvmfs.dev/xmlns/instance/1";

/// Where a disk of a domain is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A file on the node (a volume of its pool).
    File(String),
    /// A file on an NFS server that QEMU opens itself (libnfs): `path` is its path on the
    /// server, export included (`/cloud/web1.disk.qcow2`).
    Nfs { host: String, path: String },
}

impl DiskSource {
    /// The `<disk>` element: `device` is `disk` or `cdrom`, `format` `qcow2` or `raw`,
    /// `rest` the target and flags.
    fn disk_xml(&self, device: &str, format: &str, rest: &str) -> String {
        let e = xml_escape;
        match self {
            DiskSource::File(path) => format!(
                "<disk type='file' device='{device}'><driver name='qemu' type='{format}'/>\
                 <source file='{}'/>{rest}</disk>",
                e(path)
            ),
            // libvirt's schema takes an NFS source only with an `<identity>`: QEMU's
            // libnfs then speaks as root, as kvmfs did when it made the file.
            DiskSource::Nfs { host, path } => format!(
                "<disk type='network' device='{device}'><driver name='qemu' type='{format}'/>\
                 <source protocol='nfs' name='{}'><host name='{}'/>\
                 <identity user='root' group='root'/></source>{rest}</disk>",
                e(path),
                e(host)
            ),
        }
    }
}

/// A domain to define.
#[derive(Debug, Clone)]
pub struct DomainDef {
    pub name: String,
    /// `kvm`, `qemu` or `test`.
    pub domain_type: String,
    pub vcpus: u32,
    pub ram_mb: u64,
    pub disk: DiskSource,
    /// NoCloud seed image, attached as a cdrom.
    pub seed: Option<DiskSource>,
    /// (libvirt network, MAC address)
    pub interfaces: Vec<(String, String)>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub owner_uid: u32,
}

impl DomainDef {
    pub fn to_xml(&self) -> String {
        let e = xml_escape;
        let mut x = String::new();
        let _ = writeln!(x, "<domain type='{}'>", e(&self.domain_type));
        let _ = writeln!(x, "  <name>{}</name>", e(&self.name));
        let _ = writeln!(
            x,
            "  <metadata><kvmfs:instance xmlns:kvmfs='{METADATA_NS}' owner='{}'/></metadata>",
            self.owner_uid
        );
        let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", self.ram_mb);
        let _ = writeln!(x, "  <vcpu>{}</vcpu>", self.vcpus);
        let _ = writeln!(x, "  <os><type arch='x86_64'>hvm</type>");
        if let Some(k) = &self.kernel {
            let _ = writeln!(x, "    <kernel>{}</kernel>", e(k));
            if let Some(i) = &self.initrd {
                let _ = writeln!(x, "    <initrd>{}</initrd>", e(i));
            }
            if let Some(c) = &self.cmdline {
                let _ = writeln!(x, "    <cmdline>{}</cmdline>", e(c));
            }
        } else {
            let _ = writeln!(x, "    <boot dev='hd'/>");
        }
        let _ = writeln!(x, "  </os>");
        // Without ACPI the guest cannot see the power button (`ctl stop` would do nothing)
        // nor power itself off, and without the APIC it gets one CPU.
        let _ = writeln!(x, "  <features><acpi/><apic/></features>");
        let _ = writeln!(
            x,
            "  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
        );
        let _ = writeln!(x, "  <devices>");
        let _ = writeln!(
            x,
            "    {}",
            self.disk
                .disk_xml("disk", "qcow2", "<target dev='vda' bus='virtio'/>")
        );
        if let Some(seed) = &self.seed {
            let _ = writeln!(
                x,
                "    {}",
                seed.disk_xml("cdrom", "raw", "<target dev='hdc' bus='ide'/><readonly/>")
            );
        }
        for (net, mac) in &self.interfaces {
            let _ = writeln!(
                x,
                "    <interface type='network'><source network='{}'/><mac address='{}'/>\
                 <model type='virtio'/></interface>",
                e(net),
                e(mac)
            );
        }
        let _ = writeln!(x, "    <serial type='pty'><target port='0'/></serial>");
        let _ = writeln!(
            x,
            "    <console type='pty'><target type='serial' port='0'/></console>"
        );
        let _ = writeln!(x, "  </devices>");
        let _ = writeln!(x, "</domain>");
        x
    }
}

/// A qcow2 overlay on `backing` (a path in the same pool), sized `gib`.
pub fn overlay_volume_xml(name: &str, gib: u64, backing: &str) -> String {
    format!(
        "<volume><name>{}</name><capacity unit='G'>{gib}</capacity>\
         <target><format type='qcow2'/></target>\
         <backingStore><path>{}</path><format type='qcow2'/></backingStore></volume>",
        xml_escape(name),
        xml_escape(backing)
    )
}

/// A raw volume of `bytes` bytes (the seed image).
pub fn raw_volume_xml(name: &str, bytes: u64) -> String {
    format!(
        "<volume><name>{}</name><capacity unit='bytes'>{bytes}</capacity>\
         <target><format type='raw'/></target></volume>",
        xml_escape(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_xml_parses_and_escapes() {
        let d = DomainDef {
            name: "web1".into(),
            domain_type: "test".into(),
            vcpus: 2,
            ram_mb: 1024,
            disk: DiskSource::File("/p/web1'.qcow2".into()),
            seed: Some(DiskSource::File("/p/web1-seed.iso".into())),
            interfaces: vec![("default".into(), "52:54:00:00:00:01".into())],
            kernel: None,
            initrd: None,
            cmdline: None,
            owner_uid: 1000,
        };
        let xml = d.to_xml();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(doc.root_element().attribute("type"), Some("test"));
        assert!(xml.contains("web1&apos;.qcow2"));
        let features: Vec<&str> = doc
            .descendants()
            .find(|n| n.has_tag_name("features"))
            .map(|f| {
                f.children()
                    .filter(|c| c.is_element())
                    .map(|c| c.tag_name().name())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(features, ["acpi", "apic"]);
        let devs = super::super::libvirt::parse_domain_devices(&xml);
        assert_eq!(devs.disks.len(), 2);
        assert_eq!(devs.interfaces[0].mac.as_deref(), Some("52:54:00:00:00:01"));
        roxmltree::Document::parse(&overlay_volume_xml("a", 10, "/b")).unwrap();
    }

    #[test]
    fn disks_on_nfs_are_network_disks_with_an_identity() {
        let nfs = |path: &str| DiskSource::Nfs {
            host: "10.99.0.5".into(),
            path: path.into(),
        };
        let d = DomainDef {
            name: "web1".into(),
            domain_type: "qemu".into(),
            vcpus: 1,
            ram_mb: 512,
            disk: nfs("/cloud/web1.disk.qcow2"),
            seed: Some(nfs("/cloud/web1.seed.iso")),
            interfaces: Vec::new(),
            kernel: None,
            initrd: None,
            cmdline: None,
            owner_uid: 0,
        };
        let xml = d.to_xml();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let disks: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("disk"))
            .collect();
        assert_eq!(disks.len(), 2);
        for (disk, (device, format, name, target)) in disks.iter().zip([
            ("disk", "qcow2", "/cloud/web1.disk.qcow2", "vda"),
            ("cdrom", "raw", "/cloud/web1.seed.iso", "hdc"),
        ]) {
            assert_eq!(disk.attribute("type"), Some("network"));
            assert_eq!(disk.attribute("device"), Some(device));
            let child = |tag: &str| disk.descendants().find(|n| n.has_tag_name(tag)).unwrap();
            assert_eq!(child("driver").attribute("type"), Some(format));
            let source = child("source");
            assert_eq!(source.attribute("protocol"), Some("nfs"));
            assert_eq!(source.attribute("name"), Some(name));
            assert_eq!(child("host").attribute("name"), Some("10.99.0.5"));
            // Without it libvirt 9.0's schema refuses the disk.
            let id = child("identity");
            assert_eq!(
                (id.attribute("user"), id.attribute("group")),
                (Some("root"), Some("root"))
            );
            assert_eq!(child("target").attribute("dev"), Some(target));
        }
        // kvmfs reads its own XML back as network disks, with where they are.
        let devs = super::super::libvirt::parse_domain_devices(&xml);
        assert!(devs.disks.iter().all(|d| d.network));
        assert_eq!(
            devs.disks[0].source.as_deref(),
            Some("/cloud/web1.disk.qcow2")
        );
        assert_eq!(devs.disks[0].protocol.as_deref(), Some("nfs"));
        assert_eq!(devs.disks[0].host.as_deref(), Some("10.99.0.5"));
        assert_eq!(devs.disks[1].storage, "shared");
    }
}
