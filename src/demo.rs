//! The embedded demo cluster: three simulated KVM nodes sized like the original design
//! (4 GiB of RAM each) with different CPU counts and some pre-existing, unmanaged domains,
//! so `ls` has something to show and placement has something to decide.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, NodeConfig, default_state_dir};
use crate::model::NodeName;
use crate::testnode::SimNode;

/// The embedded demo: its three simulated nodes written under `STATE_DIR/demo`, SQLite in
/// the state directory.
pub fn config(state_dir: Option<PathBuf>) -> Result<Config, ConfigError> {
    let state_dir = state_dir.unwrap_or_else(default_state_dir);
    let dir = state_dir.join("demo");
    let nodes = write_demo_nodes(&dir).map_err(|source| ConfigError::Demo { path: dir, source })?;
    Config::demo(state_dir, nodes)
}

/// Writes `kvm1.xml` … `kvm3.xml` under `dir` and returns their node configs.
pub fn write_demo_nodes(dir: &Path) -> std::io::Result<Vec<NodeConfig>> {
    std::fs::create_dir_all(dir)?;
    let nodes = [
        (
            "kvm1",
            SimNode::new(4, 4096)
                .domain("legacy-web", 1, 1024, true)
                .domain("legacy-db", 2, 2048, true)
                .network("overlay", "vswitch02", "172.16.123.1/24")
                .volume("centos-7.qcow2", 8),
        ),
        (
            "kvm2",
            SimNode::new(2, 4096)
                .domain("legacy-build", 1, 512, false)
                .network("overlay", "vswitch02", "172.16.123.1/24"),
        ),
        (
            "kvm3",
            SimNode::new(8, 4096).domain("monitor", 2, 1024, true),
        ),
    ];
    let mut out = Vec::new();
    for (name, sim) in nodes {
        let uri = sim.write(&dir.join(format!("{name}.xml")))?;
        out.push(NodeConfig {
            name: NodeName::new(name).expect("demo node names are valid labels"),
            uri,
            ip: Some("127.0.0.1".into()),
            pool: sim.pool.clone(),
            // The simulated nodes' pools stand for one shared storage, so instances can
            // be moved between them (`echo kvm2 > instances/NAME/node`).
            pool_shared: true,
        });
    }
    Ok(out)
}
