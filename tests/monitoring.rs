//! Monitoring with the agents people run, from Debian's packages, as their own unprivileged
//! users against an `--allow-other` mount, with nothing written for them but the files in
//! `mount/`: node_exporter's textfile collector serves `/metrics/kvmfs.prom` (and `promtool`
//! accepts it), the alert rules pass `promtool check rules` and their unit tests, and
//! `zabbix_agentd` answers every item key of `mount/zabbix/kvmfs_template.yaml` with what the
//! tree shows. Each program is started here on a loopback port chosen free, and polled until
//! it answers (bounded), never slept for.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

const SPEC: &str = r#"{"flavor":"m1.small"}"#;
const READY: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Two nodes, a domain kvmfs did not make (`alien`), and a built instance (`web1`).
fn cloud(args: &[&str]) -> (tempfile::TempDir, Mounted) {
    let nodes = tempfile::tempdir().unwrap();
    let n1 = sim_node(
        nodes.path(),
        "n1",
        &SimNode::new(16, 32768).domain("alien", 2, 2048, true),
    );
    let n2 = sim_node(nodes.path(), "n2", &SimNode::new(8, 16384));
    let m = Mounted::with_config_args(
        &format!(
            "[timing]\nrefresh_ms = 200\n\
             [[node]]\nname = 'n1'\nuri = '{n1}'\n[[node]]\nname = 'n2'\nuri = '{n2}'\n"
        ),
        args,
    );
    wait_online(&m, &["n1", "n2"]);
    std::fs::create_dir(m.path("instances/web1")).unwrap();
    write_spec(&m, "web1", SPEC).unwrap();
    wait_status(&m, "web1", "running");
    (nodes, m)
}

/// A program started by a test, stopped (SIGTERM, then SIGKILL) when dropped.
struct Started {
    child: Child,
    what: &'static str,
    /// Its standard error (a file, so a chatty program never blocks on a full pipe).
    log: tempfile::NamedTempFile,
}

impl Started {
    fn spawn(what: &'static str, cmd: &mut Command) -> Started {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Started { child, what, log }
    }

    /// Fails the test if the program has exited (with its output).
    fn alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            let out = std::fs::read_to_string(self.log.path()).unwrap_or_default();
            panic!("{} exited ({st}):\n{out}", self.what);
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let _ = wait_exit(&mut self.child, Duration::from_secs(10));
    }
}

/// Runs `cmd` as the system user `user` (its own uid and gid, no other groups).
fn as_system_user(user: &str, program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={user}"))
        .arg(format!("--regid={user}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    c
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `GET path` on a loopback port; `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, body) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_string())
        .or_else(|| panic!("GET {path}: {head}"))
}

/// node_exporter as Debian ships it, as the `prometheus` user, with kvmfs's folder as its
/// textfile directory, on a free loopback port; returns it with its port once it answers.
fn node_exporter(dir: &Path) -> (Started, u16) {
    let port = free_port();
    let mut ne = Started::spawn(
        "prometheus-node-exporter",
        as_system_user("prometheus", "prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--collector.textfile.directory={}", dir.display())),
    );
    wait_for(READY, "node_exporter to answer", || {
        ne.alive();
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (ne, port)
}

/// The value of the sample `series` (name and labels, as written) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The families a Prometheus text declares (`# TYPE name kind`).
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn node_exporter_serves_kvmfs_prom_and_promtool_accepts_it_and_the_rules() {
    let (_nodes, m) = cloud(&["--allow-other"]);
    let metrics = m.path("metrics");
    let prom = metrics.join("kvmfs.prom");

    // promtool, as the prometheus user, reading the file through the mount.
    let out = as_system_user("prometheus", "sh")
        .arg("-c")
        .arg("exec promtool check metrics < \"$1\"")
        .arg("sh")
        .arg(&prom)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}",
        text(&out)
    );
    // promtool is not a rubber stamp: the same text with a line cut short fails.
    let mut broken = read(&prom);
    broken.push_str("kvmfs_node_up{node=\"n1\" 1\n");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(broken.as_bytes())
        .unwrap();
    assert!(!check.wait_with_output().unwrap().status.success());

    // node_exporter, as it is, with the mount's folder as its textfile directory.
    let (mut ne, port) = node_exporter(&metrics);
    let mut scrape = String::new();
    wait_for(READY, "node_exporter to serve kvmfs's families", || {
        ne.alive();
        scrape = http_get(port, "/metrics").unwrap_or_default();
        scrape.contains("kvmfs_build_info")
    });
    assert_eq!(
        sample(&scrape, "node_textfile_scrape_error"),
        Some(0.0),
        "{scrape}"
    );
    let file = read(&prom);
    for f in families(&file) {
        assert!(
            scrape.contains(&format!("# TYPE {f} ")),
            "{f} is not in node_exporter's /metrics"
        );
    }
    assert_eq!(
        sample(
            &scrape,
            r#"kvmfs_instance_state{instance="web1",node="n1",state="running"}"#
        )
        .or_else(|| sample(
            &scrape,
            r#"kvmfs_instance_state{instance="web1",node="n2",state="running"}"#
        )),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            r#"kvmfs_instance_state{instance="alien",node="n1",state="running"}"#
        ),
        Some(1.0)
    );
    // Numbers are the tree's.
    for n in ["n1", "n2"] {
        let info = read_json(m.path(&format!("nodes/{n}/info.json")));
        assert_eq!(
            sample(&scrape, &format!("kvmfs_node_up{{node=\"{n}\"}}")),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &scrape,
                &format!("kvmfs_node_vcpus_committed{{node=\"{n}\"}}")
            ),
            info["committed_vcpus"].as_f64()
        );
        assert_eq!(
            sample(
                &scrape,
                &format!("kvmfs_node_memory_committed_bytes{{node=\"{n}\"}}")
            ),
            info["committed_ram_mb"].as_f64().map(|mb| mb * 1048576.0)
        );
    }
    // What kvmfs counted is there: the build, FUSE reads, no failed build.
    assert!(sample(&scrape, r#"kvmfs_fuse_operations_total{op="read"}"#).unwrap() > 0.0);
    assert_eq!(sample(&scrape, "kvmfs_instances_created_total"), Some(1.0));
    assert_eq!(sample(&scrape, "kvmfs_builds_failed_total"), Some(0.0));
    let builds: f64 = ["n1", "n2"]
        .iter()
        .filter_map(|n| {
            sample(
                &scrape,
                &format!("kvmfs_build_duration_seconds_count{{node=\"{n}\"}}"),
            )
        })
        .sum();
    assert_eq!(builds, 1.0);
    drop(ne);

    // The rules: valid, their unit tests pass, and every family they use is in the file.
    let rules_dir = root().join("mount/prometheus");
    for args in [
        ["check", "rules", "kvmfs-alerts.yml"],
        ["test", "rules", "kvmfs-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&rules_dir)
            .output()
            .expect("promtool");
        assert!(out.status.success(), "promtool {args:?}: {}", text(&out));
    }
    let rules = read(rules_dir.join("kvmfs-alerts.yml"));
    let declared = families(&file);
    let mut used = 0;
    for (i, _) in rules.match_indices("kvmfs_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `kvmfs_…` in prose (a path, a file name) is not a metric name.
        if name.ends_with('_') || rules[..i].ends_with('/') {
            continue;
        }
        assert!(
            declared.contains(&name),
            "the rules use {name}, not in kvmfs.prom"
        );
        used += 1;
    }
    assert!(used >= 6, "found only {used} metric names in the rules");
}

#[test]
fn node_exporter_reports_a_scrape_error_on_a_mount_without_allow_other() {
    // Without --allow-other, the kernel keeps every other user out of the mount.
    let m = Mounted::demo();
    let (mut ne, port) = node_exporter(&m.path("metrics"));
    let mut scrape = String::new();
    wait_for(
        READY,
        "node_exporter's textfile collector to report",
        || {
            ne.alive();
            scrape = http_get(port, "/metrics").unwrap_or_default();
            scrape.contains("node_textfile_scrape_error")
        },
    );
    assert_eq!(sample(&scrape, "node_textfile_scrape_error"), Some(1.0));
    assert!(!scrape.contains("kvmfs_build_info"));
}

/// Zabbix agent 6.0 as Debian ships it: started as root, dropping to its `zabbix` user, on a
/// free loopback port, with its pid file and log in a folder of its own.
struct Agent {
    dir: tempfile::TempDir,
    started: Started,
    port: u16,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("kvmfs-zabbix")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let st = Command::new("chown")
            .arg("zabbix:zabbix")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "chown zabbix");
        let port = zabbix_port();
        let d = dir.path().display();
        let conf = dir.path().join("zabbix_agentd.conf");
        std::fs::write(
            &conf,
            format!(
                "Server=127.0.0.1\nListenIP=127.0.0.1\nListenPort={port}\nStartAgents=2\n\
                 AllowRoot=0\nUser=zabbix\nHostname=kvmfs-test\nPidFile={d}/agent.pid\n\
                 LogType=file\nLogFile={d}/agent.log\nTimeout=10\n"
            ),
        )
        .unwrap();
        let started = Started::spawn(
            "zabbix_agentd",
            Command::new("zabbix_agentd").arg("-f").arg("-c").arg(&conf),
        );
        let mut a = Agent { dir, started, port };
        wait_for(READY, "zabbix_agentd to answer agent.ping", || {
            a.started.alive();
            a.try_ask("agent.ping").is_some_and(|r| r == Ok("1".into()))
        });
        a
    }

    /// Asks the agent for `key` over its own protocol (`ZBXD\x01`, a little-endian u64
    /// length, the key; the answer has the same header). `Err` carries ZBX_NOTSUPPORTED's
    /// reason; `None` while it does not answer.
    fn try_ask(&self, key: &str) -> Option<Result<String, String>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        let mut req = b"ZBXD\x01".to_vec();
        req.extend_from_slice(&(key.len() as u64).to_le_bytes());
        req.extend_from_slice(key.as_bytes());
        s.write_all(&req).ok()?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).ok()?;
        assert!(
            reply.len() >= 13 && reply.starts_with(b"ZBXD"),
            "{key}: {reply:?}"
        );
        let len = u64::from_le_bytes(reply[5..13].try_into().unwrap());
        let body = &reply[13..];
        assert_eq!(body.len() as u64, len, "{key}: the reply's length");
        let body = String::from_utf8_lossy(body).into_owned();
        Some(match body.strip_prefix("ZBX_NOTSUPPORTED\0") {
            Some(why) => Err(why.to_string()),
            None => Ok(body),
        })
    }

    fn ask(&self, key: &str) -> String {
        match self.try_ask(key) {
            Some(Ok(v)) => v,
            Some(Err(why)) => panic!("the agent does not support {key}: {why}"),
            None => panic!("the agent did not answer {key}"),
        }
    }
}

/// A loopback port nobody listens on, in the range the agent takes (1024–32767; the
/// kernel's ephemeral ports, which `free_port` gives, are above it).
fn zabbix_port() -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    (0..2000u64)
        .map(|i| 20000 + ((seed + i * 7919) % 12000) as u16)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port between 20000 and 32000")
}

/// The item keys of a Zabbix YAML export (`key: '…'`, YAML's single quotes undone).
fn template_keys(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("key: "))
        .map(|k| {
            let k = k.trim();
            match k.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')) {
                Some(q) => q.replace("''", "'"),
                None => k.to_string(),
            }
        })
        .collect()
}

/// What the tree shows for a `vfs.file.*` key, as the agent gives it (trailing newlines
/// trimmed). Knows the key shapes the template uses; a new shape fails here until taught.
fn expected(key: &str) -> String {
    if let Some(path) = key
        .strip_prefix("vfs.file.contents[")
        .and_then(|k| k.strip_suffix(']'))
    {
        return read(path).trim_end_matches('\n').to_string();
    }
    let args = key
        .strip_prefix("vfs.file.regexp[")
        .and_then(|k| k.strip_suffix(",,,,\\1]"))
        .unwrap_or_else(|| panic!("a key shape this test does not know: {key}"));
    let (path, re) = args.split_once(',').unwrap();
    let re = re.trim_matches('"');
    if re == "^([a-z]+)" {
        let status = read(path);
        return status
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
    }
    let field = re
        .split_once(".: (")
        .map(|(f, _)| f)
        .unwrap_or_else(|| panic!("a regexp this test does not know: {re}"));
    let v = read_json(path)[field].clone();
    assert!(v.is_number(), "{path}: {field} is {v}");
    v.to_string()
}

#[test]
fn zabbix_agent_answers_every_key_of_the_template_with_the_trees_values() {
    let (_nodes, m) = cloud(&["--allow-other"]);
    let agent = Agent::start();
    let mount = m.mnt.path().display().to_string();
    let yaml = read(root().join("mount/zabbix/kvmfs_template.yaml"));
    let keys: Vec<String> = template_keys(&yaml)
        .into_iter()
        .map(|k| k.replace("{$KVMFS.MOUNT}", &mount))
        .collect();
    assert!(keys.len() >= 12, "{keys:?}");

    // The agent really dropped to its own user.
    let pid = std::fs::read_to_string(agent.dir.path().join("agent.pid")).unwrap();
    let status = read(format!("/proc/{}/status", pid.trim()));
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let zabbix_uid = Command::new("id").args(["-u", "zabbix"]).output().unwrap();
    let zabbix_uid = String::from_utf8_lossy(&zabbix_uid.stdout)
        .trim()
        .to_string();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == zabbix_uid),
        "{uid_line}"
    );

    // Discovery: the rules' keys parse as JSON arrays of macros, equal to the files.
    let discover = |file: &str| -> Vec<serde_json::Value> {
        let key = keys
            .iter()
            .find(|k| k.ends_with(&format!("/metrics/zabbix/{file}]")))
            .unwrap_or_else(|| panic!("no discovery rule reads {file}"));
        let got: serde_json::Value = serde_json::from_str(&agent.ask(key))
            .unwrap_or_else(|e| panic!("{key} is not JSON: {e}"));
        assert_eq!(got, read_json(m.path(&format!("metrics/zabbix/{file}"))));
        got.as_array().expect("an array").clone()
    };
    let nodes = discover("nodes.json");
    let instances = discover("instances.json");
    let macro_of = |o: &serde_json::Value, k: &str| o[k].as_str().unwrap().to_string();
    assert_eq!(
        nodes
            .iter()
            .map(|n| macro_of(n, "{#NODE}"))
            .collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    let names: Vec<String> = instances
        .iter()
        .map(|i| macro_of(i, "{#INSTANCE}"))
        .collect();
    assert_eq!(names, ["alien", "web1"]);
    for i in &instances {
        assert!(
            i.get("{#NODE}").is_some() && i.get("{#PURPOSE}").is_some(),
            "{i}"
        );
    }

    // Every other key, for every node and instance discovered: the agent's answer is what
    // the tree shows.
    let mut asked = 0;
    for key in keys.iter().filter(|k| !k.contains("/metrics/zabbix/")) {
        let concrete: Vec<String> = if key.contains("{#NODE}") {
            nodes
                .iter()
                .map(|n| key.replace("{#NODE}", &macro_of(n, "{#NODE}")))
                .collect()
        } else if key.contains("{#INSTANCE}") {
            instances
                .iter()
                .map(|i| key.replace("{#INSTANCE}", &macro_of(i, "{#INSTANCE}")))
                .collect()
        } else {
            vec![key.clone()]
        };
        for k in concrete {
            assert!(
                !k.contains("{#"),
                "an LLD macro the discovery does not give: {k}"
            );
            let got = agent.ask(&k);
            let want = expected(&k);
            match (got.parse::<f64>(), want.parse::<f64>()) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{k}"),
                _ => assert_eq!(got, want, "{k}"),
            }
            asked += 1;
        }
    }
    assert!(asked >= 20, "asked only {asked} keys");
    assert_eq!(
        agent.ask(&format!("vfs.file.contents[{mount}/status]")),
        "ok"
    );

    // Triggers name only items of the template.
    let host = "/kvmfs by Zabbix agent/";
    let template_keys = template_keys(&yaml);
    let mut refs = 0;
    for line in yaml
        .lines()
        .filter(|l| l.trim_start().starts_with("expression: "))
    {
        for (i, _) in line.match_indices(host) {
            let rest = &line[i + host.len()..].replace("''", "'");
            assert!(
                template_keys.iter().any(|k| rest.starts_with(k.as_str())),
                "a trigger names an item the template does not have: {line}"
            );
            refs += 1;
        }
    }
    assert!(refs >= 5, "{refs}");
}
