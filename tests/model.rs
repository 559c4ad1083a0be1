//! A model test of the lifecycle: random sequences of `mkdir`, `spec.json` writes (good, bad,
//! too big for any node), `ctl` commands and `rmdir` on a few names, run through the mount and
//! against a small model of what each must answer. After every step the errno, the listing
//! and each instance's status must be what the model says; at the end every address shown is
//! distinct.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Draft,
    Running,
    Shutoff,
}

#[derive(Debug, Clone)]
enum Op {
    Mkdir(usize),
    Spec(usize, SpecKind),
    Ctl(usize, &'static str),
    Rmdir(usize),
}

#[derive(Debug, Clone, Copy)]
enum SpecKind {
    Good,
    Bad,
    TooBig,
}

const NAMES: &[&str] = &["m0", "m1", "m2"];

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    prop_oneof![
        2 => name.clone().prop_map(Op::Mkdir),
        3 => (name.clone(), prop_oneof![
            3 => Just(SpecKind::Good),
            1 => Just(SpecKind::Bad),
            1 => Just(SpecKind::TooBig),
        ])
            .prop_map(|(n, k)| Op::Spec(n, k)),
        2 => (name.clone(), prop_oneof![Just("start"), Just("stop"), Just("destroy"), Just("bogus")])
            .prop_map(|(n, w)| Op::Ctl(n, w)),
        2 => name.prop_map(Op::Rmdir),
    ]
}

/// What the model expects of `op` (`None`: success) and the state after it.
fn expect(model: &BTreeMap<usize, State>, op: &Op) -> (Option<i32>, Option<Option<State>>) {
    use State::*;
    match *op {
        Op::Mkdir(n) => match model.get(&n) {
            None => (None, Some(Some(Draft))),
            Some(_) => (Some(libc::EEXIST), None),
        },
        Op::Spec(n, kind) => match (model.get(&n), kind) {
            (None, _) => (Some(libc::ENOENT), None),
            (Some(Running | Shutoff), _) => (Some(libc::EBUSY), None),
            (Some(_), SpecKind::Good) => (None, Some(Some(Running))),
            (Some(_), SpecKind::Bad) => (Some(libc::EINVAL), None),
            (Some(_), SpecKind::TooBig) => (Some(libc::ENOSPC), None),
        },
        Op::Ctl(n, word) => match (model.get(&n), word) {
            (None, _) => (Some(libc::ENOENT), None),
            (Some(_), "bogus") => (Some(libc::EINVAL), None),
            (Some(Draft), _) => (Some(libc::EBUSY), None),
            (Some(Running), "stop" | "destroy") => (None, Some(Some(Shutoff))),
            (Some(Shutoff), "start") => (None, Some(Some(Running))),
            (Some(_), _) => (Some(libc::EBUSY), None),
        },
        Op::Rmdir(n) => match model.get(&n) {
            None => (Some(libc::ENOENT), None),
            Some(_) => (None, Some(None)),
        },
    }
}

fn status_prefix(s: State) -> &'static str {
    match s {
        State::Draft => "draft",
        State::Running => "running",
        State::Shutoff => "shutoff",
    }
}

fn run(m: &Mounted, op: &Op) -> Result<(), i32> {
    let dir = |n: usize| m.path(&format!("instances/{}", NAMES[n]));
    let r = match *op {
        Op::Mkdir(n) => std::fs::create_dir(dir(n)),
        Op::Spec(n, kind) => {
            let spec = match kind {
                SpecKind::Good => r#"{"vcpus":1,"ram_mb":256}"#,
                SpecKind::Bad => r#"{"vcpus":1,"ram_mb":256,"colour":"blue"}"#,
                SpecKind::TooBig => r#"{"vcpus":1,"ram_mb":65536}"#,
            };
            std::fs::write(dir(n).join("spec.json"), spec)
        }
        Op::Ctl(n, word) => std::fs::write(dir(n).join("ctl"), word),
        Op::Rmdir(n) => std::fs::remove_dir(dir(n)),
    };
    r.map_err(|e| errno(&e))
}

fn check(m: &Mounted, model: &BTreeMap<usize, State>, history: &[Op]) {
    let listed: Vec<String> = list(m.path("instances"))
        .into_iter()
        .filter(|n| NAMES.contains(&n.as_str()))
        .collect();
    let expected: Vec<String> = model.keys().map(|n| NAMES[*n].to_string()).collect();
    assert_eq!(listed, expected, "after {history:?}");
    for (n, state) in model {
        let status = read(m.path(&format!("instances/{}/status", NAMES[*n])));
        assert!(
            status.starts_with(status_prefix(*state)),
            "{} reads {status:?}, the model says {state:?}, after {history:?}",
            NAMES[*n]
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn the_lifecycle_follows_its_model(ops in proptest::collection::vec(op(), 1..40)) {
        let nodes = tempfile::tempdir().unwrap();
        let a = sim_node(nodes.path(), "a", &SimNode::new(8, 4096));
        let b = sim_node(nodes.path(), "b", &SimNode::new(4, 4096));
        let m = Mounted::with_config(&format!(
            "[timing]\nrefresh_ms = 200\n\
             [[node]]\nname = 'a'\nuri = '{a}'\n[[node]]\nname = 'b'\nuri = '{b}'\n"
        ));
        let mut model: BTreeMap<usize, State> = BTreeMap::new();
        let mut history = Vec::new();
        for op in ops {
            history.push(op.clone());
            let (errno, next) = expect(&model, &op);
            let got = run(&m, &op).err();
            prop_assert_eq!(got, errno, "{:?} after {:?}", op, history);
            if let Some(next) = next {
                let n = match op {
                    Op::Mkdir(n) | Op::Spec(n, _) | Op::Ctl(n, _) | Op::Rmdir(n) => n,
                };
                match next {
                    Some(s) => {
                        model.insert(n, s);
                        // A commit builds in the background; the model moves when it is done.
                        if matches!(op, Op::Spec(..)) {
                            wait_status(&m, NAMES[n], "running");
                        }
                        if matches!(op, Op::Ctl(..)) {
                            wait_status(&m, NAMES[n], status_prefix(s));
                        }
                    }
                    None => {
                        model.remove(&n);
                    }
                }
            }
            check(&m, &model, &history);
        }
        let mut ips: Vec<String> = model
            .iter()
            .filter(|(_, s)| matches!(s, State::Running | State::Shutoff))
            .map(|(n, _)| read(m.path(&format!("instances/{}/ip", NAMES[*n]))))
            .collect();
        let before = ips.len();
        ips.sort();
        ips.dedup();
        prop_assert_eq!(ips.len(), before, "an address shown twice");
    }
}
