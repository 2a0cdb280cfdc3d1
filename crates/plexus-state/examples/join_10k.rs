//! Join two replicas of a 10,000-field map once, for instruction counting
//! under callgrind (the machine is too busy for wall-clock numbers):
//! `valgrind --tool=callgrind --toggle-collect='*join_and_drop*' target/release/examples/join_10k`
use plexus_state::{Access, Kind, LocalOp, Store, StoreConfig, Value};

const NOW: u64 = 1_700_000_000_000;

#[inline(never)]
fn join_and_drop(mut x: Value, y: Value) -> usize {
    x.join(y);
    std::mem::size_of_val(&x)
}

fn main() {
    let mut m = Store::new("node-a", StoreConfig::default());
    m.create("p", "map", Kind::Map, Access::Public, None, NOW)
        .expect("create");
    for i in 0..10_000 {
        let op = LocalOp::MapIncr {
            field: format!("f{i}"),
            by: 1,
        };
        m.apply_local("p", "map", op, NOW).expect("map");
    }
    let mut ma = m.clone();
    let mut mb = Store::new("node-b", StoreConfig::default());
    let st = m.state("map").cloned().expect("held");
    mb.merge_state("node-a", "map", st, NOW).expect("merge");
    for i in 0..100 {
        let op = LocalOp::MapIncr {
            field: format!("f{i}"),
            by: 1,
        };
        ma.apply_local("p", "map", op, NOW).expect("map");
        let op = LocalOp::MapPut {
            field: format!("g{i}"),
            value: "1".into(),
        };
        mb.apply_local("p", "map", op, NOW).expect("map");
    }
    let va = ma
        .state("map")
        .and_then(|s| s.value().cloned())
        .expect("value");
    let vb = mb
        .state("map")
        .and_then(|s| s.value().cloned())
        .expect("value");
    // `--time N`: wall-clock minimum and median of N joins (the minimum is
    // the least disturbed by other load on the machine).
    let runs: usize = match std::env::args().skip_while(|a| a != "--time").nth(1) {
        Some(n) => n.parse().expect("--time takes a number"),
        None => {
            println!("{}", join_and_drop(va, vb));
            return;
        }
    };
    let mut in_place = Vec::with_capacity(runs);
    let mut consuming = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (Value::Map(mut x), Value::Map(y)) = (va.clone(), vb.clone()) else {
            unreachable!("map values")
        };
        let t = std::time::Instant::now();
        x.join_from(&y);
        in_place.push(t.elapsed());
        drop(x);
        let (mut x, y) = (va.clone(), vb.clone());
        let t = std::time::Instant::now();
        x.join(y);
        consuming.push(t.elapsed());
        drop(x);
    }
    for (name, mut v) in [
        ("in place", in_place),
        ("consuming (frees the received map)", consuming),
    ] {
        v.sort();
        println!("{name}: min {:?} median {:?}", v[0], v[v.len() / 2]);
    }
}
