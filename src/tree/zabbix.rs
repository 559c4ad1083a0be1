//! `/metrics/zabbix/*.json`: Zabbix low-level discovery, read by the agent's built-in
//! `vfs.file.contents[…]` as a discovery rule: a JSON array of objects whose keys are LLD
//! macros. Rendered from one view.
//!
//! Invariants: one object per line, compact, so the files stay small (the agent refuses
//! files over 64 KiB for `vfs.file.contents`: `instances.json` holds about 750 instances
//! with 24-character names; see SEMANTICS.md for what to use beyond); every macro is present
//! in every object (an empty string when the instance has no node or purpose).

use crate::cluster::view::View;

/// The size past which the Zabbix agent refuses a file for `vfs.file.contents`.
pub const AGENT_FILE_LIMIT: usize = 64 * 1024;

/// A JSON string (quoted and escaped).
fn string(s: &str) -> String {
    // Serialising a `str` cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A JSON array of objects whose values are strings, one object a line.
fn array<'a>(objects: impl Iterator<Item = Vec<(&'static str, &'a str)>>) -> Vec<u8> {
    let mut out = String::from("[");
    let mut first = true;
    for o in objects {
        out.push_str(if first { "\n{" } else { ",\n{" });
        first = false;
        for (i, (k, v)) in o.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&string(k));
            out.push(':');
            out.push_str(&string(v));
        }
        out.push('}');
    }
    out.push_str("\n]\n");
    out.into_bytes()
}

/// `nodes.json`: `{"{#NODE}": name}` per configured node.
pub fn nodes(v: &View) -> Vec<u8> {
    array(v.nodes.keys().map(|n| vec![("{#NODE}", n.as_str())]))
}

/// `instances.json`: `{"{#INSTANCE}", "{#NODE}", "{#PURPOSE}"}` per instance.
pub fn instances(v: &View) -> Vec<u8> {
    array(v.instances.iter().map(|(name, i)| {
        let purpose = i.row.as_ref().and_then(|r| r.purpose.as_deref());
        vec![
            ("{#INSTANCE}", name.as_str()),
            ("{#NODE}", i.node.as_deref().unwrap_or("")),
            ("{#PURPOSE}", purpose.unwrap_or("")),
        ]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::fixtures::{domain, online, probe, view_of};
    use crate::hv::DomainState;

    #[test]
    fn discovery_files_are_json_arrays_of_macros() {
        let empty = View::default();
        for f in [nodes(&empty), instances(&empty)] {
            let v: serde_json::Value = serde_json::from_slice(&f).unwrap();
            assert_eq!(v, serde_json::json!([]));
        }
        let v = view_of(&[online(
            "n1",
            probe(8, 16384),
            vec![
                domain("a", 1, 512, DomainState::Running),
                domain("q\"uote", 1, 512, DomainState::Running),
            ],
        )]);
        let n: serde_json::Value = serde_json::from_slice(&nodes(&v)).unwrap();
        assert_eq!(n, serde_json::json!([{"{#NODE}": "n1"}]));
        let i: serde_json::Value = serde_json::from_slice(&instances(&v)).unwrap();
        assert_eq!(
            i,
            serde_json::json!([
                {"{#INSTANCE}": "a", "{#NODE}": "n1", "{#PURPOSE}": ""},
                {"{#INSTANCE}": "q\"uote", "{#NODE}": "n1", "{#PURPOSE}": ""},
            ])
        );
    }

    #[test]
    fn seven_hundred_instances_fit_what_the_agent_reads() {
        let domains = (0..700)
            .map(|k| {
                domain(
                    &format!("web-{k:04}-abcdefghijklmn"),
                    1,
                    512,
                    DomainState::Running,
                )
            })
            .collect();
        let v = view_of(&[online("kvm-node-01", probe(4096, 1 << 22), domains)]);
        let f = instances(&v);
        assert!(f.len() < AGENT_FILE_LIMIT, "{} bytes", f.len());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&f)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            700
        );
    }
}
