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
    println!("{}", join_and_drop(va, vb));
}
