//! kvmfs over a MariaDB Galera cluster (`[database] urls`): three real servers on this
//! machine, two mounts on different servers, two nodes (real libvirtds serving the test
//! driver, so both mounts see the same domains).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::galera::Galera;
use common::libvirtd::Libvirtd;
use common::*;

const IMAGE: &str = "base.qcow2";
const NODES: [&str; 2] = ["n1", "n2"];
/// Instances each node has room for in this test (the spec's RAM is chosen for it).
const PER_NODE: usize = 8;

/// (node, space-separated sorted names) for each node.
type PerNode = Vec<(String, String)>;

struct Rig {
    galera: Galera,
    nodes: Vec<Libvirtd>,
}

impl Rig {
    /// A configuration whose servers are the cluster's, in the order `order` (indexes).
    fn config(&self, order: [usize; 3]) -> String {
        let urls: Vec<String> = order
            .iter()
            .map(|&i| format!("'{}'", self.galera.servers[i].url()))
            .collect();
        let mut c = format!(
            "[database]\nurls = [{}]\n\
             [timing]\nrefresh_ms = 200\nlibvirt_timeout_ms = 5000\n\
             [instances]\ndefault_image = '{IMAGE}'\n\
             [[network]]\nname = 'default'\ncidr = '192.168.122.0/24'\n\
             first = '192.168.122.10'\nlast = '192.168.122.200'\n",
            urls.join(", ")
        );
        for (name, node) in NODES.iter().zip(&self.nodes) {
            c.push_str(&format!(
                "[[node]]\nname = '{name}'\nuri = '{}'\npool = 'default-pool'\n",
                node.uri()
            ));
        }
        c
    }

    /// The rows, addresses and placement lock as server `i` holds them.
    fn tables(&self, i: usize) -> String {
        self.galera.servers[i].sql(
            "SELECT vmname, hostname, state, vmip FROM kvmfs.vm ORDER BY vmname; \
             SELECT pool, address, vmname FROM kvmfs.ip_alloc ORDER BY pool, address; \
             SELECT generation FROM kvmfs.placement_lock",
        )
    }

    /// Each node's domains but the test driver's own `test`, and the instances the
    /// database puts there, as (node, sorted names) pairs: they must be the same.
    fn domains_and_rows(&self) -> (PerNode, PerNode) {
        let mut domains = Vec::new();
        let mut rows = Vec::new();
        for (name, node) in NODES.iter().zip(&self.nodes) {
            let mut d: Vec<String> = node.domains().into_iter().filter(|d| d != "test").collect();
            d.sort();
            domains.push((name.to_string(), d.join(" ")));
            let r = self.galera.servers[0].sql(&format!(
                "SELECT vmname FROM kvmfs.vm WHERE hostname = '{name}' ORDER BY vmname"
            ));
            rows.push((
                name.to_string(),
                r.split_whitespace().collect::<Vec<_>>().join(" "),
            ));
        }
        (domains, rows)
    }
}

/// Room left on `node` as the mount shows it: (vCPUs, RAM MB).
fn room(m: &Mounted, node: &str) -> (u64, u64) {
    let info = read_json(m.path(&format!("nodes/{node}/info.json")));
    let n = |k: &str| info[k].as_u64().unwrap_or_else(|| panic!("{k} in {info}"));
    (
        n("capacity_vcpus") - n("committed_vcpus"),
        n("capacity_ram_mb") - n("committed_ram_mb"),
    )
}

/// Retries `op` while it answers `EIO` (the database server it used died under it), for
/// at most `limit`; its last answer, and how many `EIO`s it saw.
fn through_eio(limit: Duration, mut op: impl FnMut() -> std::io::Result<()>) -> (i32, u32) {
    let start = Instant::now();
    let mut eios = 0;
    loop {
        match op() {
            Ok(()) => return (0, eios),
            Err(e) if errno(&e) == libc::EIO && start.elapsed() < limit => {
                eios += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return (errno(&e), eios),
        }
    }
}

/// `through_eio`, where an answer of `done` after an `EIO` (`EEXIST` for a `mkdir`, `ENOENT`
/// for an `rmdir`) means the attempt that answered `EIO` was applied after all (SEMANTICS:
/// "When the database fails"): the errno of the operation as a whole, 0 when it is done.
fn until_applied(limit: Duration, done: i32, op: impl FnMut() -> std::io::Result<()>) -> i32 {
    match through_eio(limit, op) {
        (code, eios) if code == done && eios > 0 => 0,
        (code, _) => code,
    }
}

/// Writes `spec` to instance `name`'s `spec.json` through `m` whenever it takes one (a
/// draft, or a commit that was applied late and undone as interrupted), until it runs; a
/// write may answer `EIO` or `EBUSY` meanwhile.
fn commit_until_running(m: &Mounted, name: &str, spec: &str) {
    let spec_path = m.path(&format!("instances/{name}/spec.json"));
    let status = m.path(&format!("instances/{name}/status"));
    wait_for(Duration::from_secs(120), &format!("{name} to run"), || {
        let now = std::fs::read_to_string(&status).unwrap_or_default();
        if (now.starts_with("draft") || now.starts_with("failed"))
            && let Err(e) = std::fs::write(&spec_path, spec)
        {
            assert!(
                [libc::EIO, libc::EBUSY].contains(&errno(&e)),
                "spec of {name}: {e}"
            );
        }
        now.starts_with("running")
    });
}

#[test]
fn two_mounts_on_two_galera_servers_place_what_fits_and_go_on_when_a_server_dies() {
    let mut rig = Rig {
        galera: Galera::start(3),
        nodes: vec![Libvirtd::start(IMAGE), Libvirtd::start(IMAGE)],
    };
    // A uses servers 1, 2, 3 in that order; B uses 2, 3, 1: they write on different
    // servers, and B must move when server 2 dies.
    let a = Mounted::with_config(&rig.config([0, 1, 2]));
    wait_online(&a, &NODES);
    let b = Mounted::with_config(&rig.config([1, 2, 0]));
    wait_online(&b, &NODES);
    assert!(
        a.log()
            .contains(&format!("127.0.0.1:{}", rig.galera.servers[0].port))
    );

    // RAM for exactly PER_NODE instances on each node.
    let rooms: Vec<(u64, u64)> = NODES.iter().map(|n| room(&a, n)).collect();
    assert_eq!(rooms[0], rooms[1], "the two nodes are alike");
    let (cpus, ram) = rooms[0];
    assert!(cpus >= PER_NODE as u64, "{rooms:?}");
    let per = ram / PER_NODE as u64;
    assert!(per * (PER_NODE as u64 + 1) > ram && per >= 128, "{rooms:?}");
    let spec = format!(r#"{{"vcpus":1,"ram_mb":{per},"disk_gb":1}}"#);

    // 40 creates at once, alternating between the mounts.
    let mounts: [PathBuf; 2] = [a.mnt.path().into(), b.mnt.path().into()];
    let names: Vec<String> = (0..40).map(|i| format!("g{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        std::fs::create_dir(mounts[i % 2].join("instances").join(n)).unwrap();
    }
    let writers: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = mounts[i % 2].join("instances").join(n).join("spec.json");
            let spec = spec.clone();
            std::thread::spawn(move || std::fs::write(p, spec))
        })
        .collect();
    let results: Vec<_> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(errno(r), libc::ENOSPC, "{r}");
    }
    let placed: Vec<&String> = names
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(placed.len(), 2 * PER_NODE, "{results:?}");
    for n in NODES {
        assert_eq!(
            rig.galera.servers[0].sql(&format!(
                "SELECT COUNT(*) FROM kvmfs.vm WHERE hostname = '{n}' AND state <> 'draft'"
            )),
            format!("{PER_NODE}\n"),
            "node {n} holds exactly what fits"
        );
    }
    for n in &placed {
        wait_status(&a, n, "running");
    }
    let ips = rig.galera.servers[1].sql("SELECT vmip FROM kvmfs.vm WHERE vmip IS NOT NULL");
    let mut seen = std::collections::HashSet::new();
    for ip in ips.lines() {
        assert!(seen.insert(ip.to_string()), "address {ip} twice");
    }
    assert_eq!(seen.len(), 2 * PER_NODE);
    // The drafts that found no room go.
    for (n, r) in names.iter().zip(&results) {
        if r.is_err() {
            std::fs::remove_dir(a.mnt.path().join("instances").join(n)).unwrap();
        }
    }

    // Server 2, B's, is killed while B deletes half the instances and creates new ones.
    let (gone, kept) = placed.split_at(PER_NODE);
    let deleter = {
        let root = b.mnt.path().join("instances");
        let gone: Vec<String> = gone.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            gone.iter()
                .map(|n| {
                    let p = root.join(n);
                    until_applied(Duration::from_secs(60), libc::ENOENT, || {
                        std::fs::remove_dir(&p)
                    })
                })
                .collect::<Vec<_>>()
        })
    };
    wait_for(Duration::from_secs(60), "B's first delete", || {
        !b.mnt.path().join("instances").join(gone[0]).exists()
    });
    rig.galera.servers[1].kill();
    let deleted = deleter.join().unwrap();
    for (n, code) in gone.iter().zip(&deleted) {
        assert_eq!(*code, 0, "rmdir {n} through B: {deleted:?}");
    }
    for i in 0..4 {
        let n = format!("after{i}");
        let dir = b.mnt.path().join("instances").join(&n);
        let code = until_applied(Duration::from_secs(60), libc::EEXIST, || {
            std::fs::create_dir(&dir)
        });
        assert_eq!(code, 0, "mkdir {n} through B after the kill");
        wait_for(Duration::from_secs(30), "B to list it", || dir.exists());
        commit_until_running(&b, &n, &spec);
    }
    let log = b.log();
    assert!(
        log.contains("database server changed"),
        "B moved to another server; its log:\n{log}"
    );
    let prom = read(b.path("metrics/kvmfs.prom"));
    assert!(
        prom.lines()
            .any(|l| l == "kvmfs_database_failovers_total 1"),
        "{prom}"
    );

    // What was deleted is gone everywhere, what was kept is there, nothing is half-made.
    for n in gone {
        assert!(!a.mnt.path().join("instances").join(n).exists(), "{n}");
    }
    for n in kept {
        assert!(read(a.path(&format!("instances/{n}/status"))).starts_with("running"));
    }
    wait_for(Duration::from_secs(20), "domains to match rows", || {
        let (d, r) = rig.domains_and_rows();
        d == r
    });
    assert_eq!(
        rig.galera.servers[0].sql(
            "SELECT COUNT(*) FROM kvmfs.ip_alloc a LEFT JOIN kvmfs.vm v \
             ON v.vmname = a.vmname WHERE v.vmname IS NULL"
        ),
        "0\n",
        "no address without its instance"
    );

    // Server 2 rejoins and all three hold the same rows.
    rig.galera.servers[1].rejoin();
    rig.galera.wait_size(3);
    let want = rig.tables(0);
    assert!(want.contains("after3"), "{want}");
    for i in 1..3 {
        wait_for(
            Duration::from_secs(30),
            "every server to hold the same rows",
            || rig.tables(i) == want,
        );
    }
    let (d, r) = rig.domains_and_rows();
    assert_eq!(d, r);

    // Server 1, A's, freezes (SIGSTOP: connections stay open, nothing answers). A answers
    // within its deadlines meanwhile, moves to another server, and creates go on through it.
    rig.galera.servers[0].freeze();
    let dir = a.mnt.path().join("instances/frozen1");
    let started = Instant::now();
    let code = until_applied(Duration::from_secs(90), libc::EEXIST, || {
        std::fs::create_dir(&dir)
    });
    assert_eq!(code, 0, "mkdir through A with its server frozen");
    wait_for(Duration::from_secs(30), "A to list frozen1", || {
        dir.exists()
    });
    commit_until_running(&a, "frozen1", &spec);
    assert!(
        a.log().contains("database server changed"),
        "A moved after {:?}; its log:\n{}",
        started.elapsed(),
        a.log()
    );
    // Nothing half-made: the new instance is a row and a domain, once.
    let rows = rig.galera.servers[1].sql("SELECT COUNT(*) FROM kvmfs.vm WHERE vmname = 'frozen1'");
    assert_eq!(rows, "1\n");
    rig.galera.servers[0].thaw();
}
