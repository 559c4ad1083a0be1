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

/// A domain to define.
#[derive(Debug, Clone)]
pub struct DomainDef {
    pub name: String,
    /// `kvm`, `qemu` or `test`.
    pub domain_type: String,
    pub vcpus: u32,
    pub ram_mb: u64,
    pub disk_path: String,
    /// NoCloud seed image, attached as a cdrom.
    pub seed_path: Option<String>,
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
            "    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/></disk>",
            e(&self.disk_path)
        );
        if let Some(seed) = &self.seed_path {
            let _ = writeln!(
                x,
                "    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
                 <source file='{}'/><target dev='hdc' bus='ide'/><readonly/></disk>",
                e(seed)
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
            disk_path: "/p/web1'.qcow2".into(),
            seed_path: Some("/p/web1-seed.iso".into()),
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
}
