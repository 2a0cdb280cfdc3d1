//! The CRDT values an entry can hold, their operations and their read views.
//!
//! Every value is a join-semilattice: [`Value::join`] is commutative,
//! associative and idempotent (checked by property tests). Values of
//! different kinds (two nodes created one key concurrently with different
//! types) are ordered by kind rank, so the join picks the higher kind whole:
//! a lexicographic product of a chain and lattices is still a lattice.
//!
//! Registers, counters and sets are the `crdts` crate's. The map is this
//! crate's own [`FieldMap`], a causal observed-remove map: the `crdts` map
//! resets nested values by per-actor clock maxima, which loses a removal
//! when merged states (rather than operations) meet, and its nested
//! counters count in a different dot space than the map (a property test
//! found both).

use std::collections::{BTreeMap, BTreeSet};

use crdts::{CmRDT, CvRDT, Dot, GCounter, LWWReg, Orswot, PNCounter};
use serde::{Deserialize, Serialize};

use crate::types::{Kind, NodeId, Stamp, Version};

/// A last-writer-wins register: the JSON text with its unique stamp.
pub type LwwReg = LWWReg<String, Stamp>;

/// One register value in a map field: the value with the stamp of its write,
/// so concurrent writes resolve to the latest stamp on read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegVal {
    /// Stamp of the write.
    pub stamp: Stamp,
    /// The JSON text written.
    pub value: String,
}

/// A PN-counter step (crdts' own op type has no `PartialEq`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterOp {
    /// The counter's new total for the dot's actor in that direction.
    pub dot: Dot<NodeId>,
    /// `true` to count up, `false` to count down.
    pub up: bool,
}

impl CounterOp {
    fn into_crdt(self) -> crdts::pncounter::Op<NodeId> {
        crdts::pncounter::Op {
            dot: self.dot,
            dir: if self.up {
                crdts::pncounter::Dir::Pos
            } else {
                crdts::pncounter::Dir::Neg
            },
        }
    }

    fn from_crdt(op: crdts::pncounter::Op<NodeId>) -> Self {
        CounterOp {
            dot: op.dot,
            up: matches!(op.dir, crdts::pncounter::Dir::Pos),
        }
    }
}

/// A dot of a [`FieldMap`]: the `counter`-th map change made at `node`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MapDot {
    /// Node that made the change.
    pub node: NodeId,
    /// Its map change counter.
    pub counter: u64,
}

/// The live contents of one field name, by type. Every piece of content is
/// tagged with the dot of the change that wrote it; a change or removal
/// drops exactly the dots its author had observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldStores {
    /// Register writes not yet overwritten (several if concurrent).
    pub reg: BTreeMap<MapDot, RegVal>,
    /// Counter contributions: one dot per node, holding that node's total.
    pub counter: BTreeMap<MapDot, i64>,
    /// Set members and the dots of the adds that are still live.
    pub set: BTreeMap<String, BTreeSet<MapDot>>,
}

impl FieldStores {
    fn is_empty(&self) -> bool {
        self.reg.is_empty() && self.counter.is_empty() && self.set.is_empty()
    }

    /// Type shown for this field: a set, else a counter, else a register
    /// (several only after concurrent writes of different types).
    fn kind(&self) -> Option<FieldKind> {
        if !self.set.is_empty() {
            Some(FieldKind::Set)
        } else if !self.counter.is_empty() {
            Some(FieldKind::Counter)
        } else if !self.reg.is_empty() {
            Some(FieldKind::Reg)
        } else {
            None
        }
    }

    fn all_dots(&self) -> BTreeSet<MapDot> {
        let mut s: BTreeSet<MapDot> = self.reg.keys().cloned().collect();
        s.extend(self.counter.keys().cloned());
        for dots in self.set.values() {
            s.extend(dots.iter().cloned());
        }
        s
    }

    fn view(&self) -> Option<FieldView> {
        Some(match self.kind()? {
            FieldKind::Set => FieldView::Set(self.set.keys().cloned().collect()),
            FieldKind::Counter => {
                FieldView::Counter(self.counter.values().map(|v| i128::from(*v)).sum())
            }
            FieldKind::Reg => FieldView::Reg(self.reg.values().max()?.value.clone()),
        })
    }
}

/// Type of a map field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FieldKind {
    /// Register.
    Reg,
    /// Counter.
    Counter,
    /// Observed-remove set.
    Set,
}

impl FieldKind {
    fn name(self) -> &'static str {
        match self {
            FieldKind::Reg => "register",
            FieldKind::Counter => "counter",
            FieldKind::Set => "set",
        }
    }
}

/// A causal observed-remove map of typed fields (register, counter, set).
///
/// The state is a causal context (`ctx`: every map change seen, a version
/// vector since each node's changes are seen in order) and, per field,
/// content tagged with dots. Join keeps a dot's content if both sides have
/// it or the other side has not seen it (the standard causal dot-store
/// join), so it is a lattice, and an operation is exactly the join with its
/// own small delta state. A field removed concurrently with an update keeps
/// what the update wrote (for a counter, the updating node's whole total).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldMap {
    /// Causal context.
    pub ctx: Version,
    /// Live fields.
    pub fields: BTreeMap<String, FieldStores>,
}

/// What a map change does to its field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapAct {
    /// Write the register (dropping the writes seen).
    Put(RegVal),
    /// Set the author's counter contribution to this total (dropping the
    /// author's contributions seen).
    Count(i64),
    /// Add members (dropping their add dots seen).
    Add(Vec<String>),
    /// Remove members (dropping their add dots seen).
    Remove(Vec<String>),
    /// Remove the field (dropping every dot of it seen).
    RemoveField,
}

/// A change of one map field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapOp {
    /// The change's own dot.
    pub dot: MapDot,
    /// Field changed.
    pub field: String,
    /// Dots of the field's content the author had seen and that this change
    /// replaces or removes.
    pub seen: BTreeSet<MapDot>,
    /// What it does.
    pub act: MapAct,
}

impl FieldMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn has_seen(ctx: &Version, d: &MapDot) -> bool {
        ctx.get(&d.node) >= d.counter
    }

    /// The next dot for `node`.
    fn next_dot(&self, node: &NodeId) -> MapDot {
        MapDot {
            node: node.clone(),
            counter: self.ctx.get(node) + 1,
        }
    }

    /// Apply one change (causally delivered; repeats are ignored).
    pub fn apply(&mut self, op: MapOp) {
        if Self::has_seen(&self.ctx, &op.dot) {
            return;
        }
        let st = self.fields.entry(op.field.clone()).or_default();
        let keep = |d: &MapDot| !op.seen.contains(d);
        match op.act {
            MapAct::Put(v) => {
                st.reg.retain(|d, _| keep(d));
                st.reg.insert(op.dot.clone(), v);
            }
            MapAct::Count(total) => {
                st.counter.retain(|d, _| keep(d));
                st.counter.insert(op.dot.clone(), total);
            }
            MapAct::Add(members) => {
                for m in members {
                    let dots = st.set.entry(m).or_default();
                    dots.retain(keep);
                    dots.insert(op.dot.clone());
                }
            }
            MapAct::Remove(members) => {
                for m in members {
                    if let Some(dots) = st.set.get_mut(&m) {
                        dots.retain(keep);
                        if dots.is_empty() {
                            st.set.remove(&m);
                        }
                    }
                }
            }
            MapAct::RemoveField => {
                st.reg.retain(|d, _| keep(d));
                st.counter.retain(|d, _| keep(d));
                st.set.retain(|_, dots| {
                    dots.retain(keep);
                    !dots.is_empty()
                });
            }
        }
        if st.is_empty() {
            self.fields.remove(&op.field);
        }
        self.ctx.apply(Dot::new(op.dot.node, op.dot.counter));
    }

    /// Join another replica's map.
    pub fn join(&mut self, other: FieldMap) {
        self.join_from(&other);
    }

    /// Join another replica's map, in place: only what is new is cloned,
    /// so joining two large maps that mostly agree allocates little.
    pub fn join_from(&mut self, other: &FieldMap) {
        let FieldMap { ctx: actx, fields } = self;
        let bctx = &other.ctx;
        let mut theirs = other.fields.iter().peekable();
        let mut only_theirs: Vec<(&String, &FieldStores)> = Vec::new();
        let mut emptied = false;
        for (name, a) in fields.iter_mut() {
            while let Some((k, b)) = theirs.peek() {
                if *k < name {
                    only_theirs.push((k, b));
                    theirs.next();
                } else {
                    break;
                }
            }
            match theirs.peek() {
                Some((k, b)) if *k == name => {
                    // Equal content joins to itself (the common case).
                    if a != *b {
                        join_stores(a, b, actx, bctx);
                    }
                    theirs.next();
                }
                _ => forget_seen(a, bctx),
            }
            emptied |= a.is_empty();
        }
        only_theirs.extend(theirs);
        if emptied {
            fields.retain(|_, st| !st.is_empty());
        }
        for (name, b) in only_theirs {
            let mut st = FieldStores::default();
            join_stores(&mut st, b, actx, bctx);
            if !st.is_empty() {
                fields.insert(name.clone(), st);
            }
        }
        actx.merge(bctx.clone());
    }

    /// Type shown for `field`, if present.
    pub fn field_kind(&self, field: &str) -> Option<FieldKind> {
        self.fields.get(field).and_then(FieldStores::kind)
    }

    /// Plain-data read.
    pub fn view(&self) -> BTreeMap<String, FieldView> {
        self.fields
            .iter()
            .filter_map(|(k, f)| f.view().map(|v| (k.clone(), v)))
            .collect()
    }
}

/// Causal join of one field's stores, in place (`actx`: the context of
/// `a`'s map, `bctx`: of `b`'s).
fn join_stores(a: &mut FieldStores, b: &FieldStores, actx: &Version, bctx: &Version) {
    join_fun(&mut a.reg, &b.reg, actx, bctx);
    join_fun(&mut a.counter, &b.counter, actx, bctx);
    for (m, dots) in a.set.iter_mut() {
        match b.set.get(m) {
            Some(theirs) => join_dots(dots, theirs, actx, bctx),
            None => dots.retain(|d| !FieldMap::has_seen(bctx, d)),
        }
    }
    for (m, theirs) in &b.set {
        if !a.set.contains_key(m) {
            let dots: BTreeSet<MapDot> = theirs
                .iter()
                .filter(|d| !FieldMap::has_seen(actx, d))
                .cloned()
                .collect();
            if !dots.is_empty() {
                a.set.insert(m.clone(), dots);
            }
        }
    }
    a.set.retain(|_, dots| !dots.is_empty());
}

/// Join with a side that lacks the field: drop what that side has seen.
fn forget_seen(a: &mut FieldStores, bctx: &Version) {
    a.reg.retain(|d, _| !FieldMap::has_seen(bctx, d));
    a.counter.retain(|d, _| !FieldMap::has_seen(bctx, d));
    a.set.retain(|_, dots| {
        dots.retain(|d| !FieldMap::has_seen(bctx, d));
        !dots.is_empty()
    });
}

/// Causal join of two dot-tagged functions, into `a`.
fn join_fun<V: Clone>(
    a: &mut BTreeMap<MapDot, V>,
    b: &BTreeMap<MapDot, V>,
    actx: &Version,
    bctx: &Version,
) {
    a.retain(|d, _| b.contains_key(d) || !FieldMap::has_seen(bctx, d));
    for (d, v) in b {
        if !FieldMap::has_seen(actx, d) && !a.contains_key(d) {
            a.insert(d.clone(), v.clone());
        }
    }
}

/// Causal join of two dot sets, into `a`.
fn join_dots(a: &mut BTreeSet<MapDot>, b: &BTreeSet<MapDot>, actx: &Version, bctx: &Version) {
    a.retain(|d| b.contains(d) || !FieldMap::has_seen(bctx, d));
    for d in b {
        if !FieldMap::has_seen(actx, d) && !a.contains(d) {
            a.insert(d.clone());
        }
    }
}

/// The value of an entry: one CRDT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// Last-writer-wins register (`None` until the first put).
    Lww(Option<LwwReg>),
    /// Grow-only counter.
    GCounter(GCounter<NodeId>),
    /// Up/down counter.
    PnCounter(PNCounter<NodeId>),
    /// Observed-remove set.
    Set(Orswot<String, NodeId>),
    /// Map of fields.
    Map(FieldMap),
}

/// A change to a value, as carried by a [`crate::Delta`]. Each is applied as
/// an operation under causal delivery (the store guarantees it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueOp {
    /// New register content (merged last-writer-wins).
    Put(LwwReg),
    /// Grow-only counter step: the origin's new total.
    GInc(Dot<NodeId>),
    /// Up/down counter step.
    Pn(CounterOp),
    /// Set add (with its dot) or remove (with the observed clock).
    Set(crdts::orswot::Op<String, NodeId>),
    /// Map field change.
    Map(MapOp),
}

impl ValueOp {
    /// The kind of value the operation applies to.
    pub fn kind(&self) -> Kind {
        match self {
            ValueOp::Put(_) => Kind::Lww,
            ValueOp::GInc(_) => Kind::GCounter,
            ValueOp::Pn(_) => Kind::PnCounter,
            ValueOp::Set(_) => Kind::Set,
            ValueOp::Map(_) => Kind::Map,
        }
    }

    /// Bytes of user payload carried (for the size limit on remote deltas).
    pub(crate) fn payload_len(&self) -> usize {
        let sum = |v: &Vec<String>| v.iter().map(String::len).sum::<usize>();
        match self {
            ValueOp::Put(r) => r.val.len(),
            ValueOp::GInc(_) | ValueOp::Pn(_) => 0,
            ValueOp::Set(crdts::orswot::Op::Add { members, .. })
            | ValueOp::Set(crdts::orswot::Op::Rm { members, .. }) => sum(members),
            ValueOp::Map(op) => {
                op.field.len()
                    + match &op.act {
                        MapAct::Put(v) => v.value.len(),
                        MapAct::Add(m) | MapAct::Remove(m) => sum(m),
                        MapAct::Count(_) | MapAct::RemoveField => 0,
                    }
            }
        }
    }
}

impl Value {
    /// An empty value of `kind`.
    pub fn empty(kind: Kind) -> Self {
        match kind {
            Kind::Lww => Value::Lww(None),
            Kind::GCounter => Value::GCounter(GCounter::new()),
            Kind::PnCounter => Value::PnCounter(PNCounter::new()),
            Kind::Set => Value::Set(Orswot::new()),
            Kind::Map => Value::Map(FieldMap::new()),
        }
    }

    /// The value's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Value::Lww(_) => Kind::Lww,
            Value::GCounter(_) => Kind::GCounter,
            Value::PnCounter(_) => Kind::PnCounter,
            Value::Set(_) => Kind::Set,
            Value::Map(_) => Kind::Map,
        }
    }

    /// Join `other` into `self` (commutative, associative, idempotent).
    pub fn join(&mut self, other: Value) {
        match self.kind().cmp(&other.kind()) {
            std::cmp::Ordering::Less => *self = other,
            std::cmp::Ordering::Greater => {}
            std::cmp::Ordering::Equal => match (self, other) {
                (Value::Lww(a), Value::Lww(b)) => match (a.as_mut(), b) {
                    (Some(a), Some(b)) => a.merge(b),
                    (None, Some(b)) => *a = Some(b),
                    (_, None) => {}
                },
                (Value::GCounter(a), Value::GCounter(b)) => a.merge(b),
                (Value::PnCounter(a), Value::PnCounter(b)) => a.merge(b),
                (Value::Set(a), Value::Set(b)) => a.merge(b),
                (Value::Map(a), Value::Map(b)) => a.join(b),
                _ => {}
            },
        }
    }

    /// Apply an operation (the store delivers them causally). An operation of
    /// a lower kind than the value is a no-op (a concurrent creation of a
    /// higher kind won); of a higher kind, it replaces the value first.
    pub fn apply(&mut self, op: ValueOp) {
        match self.kind().cmp(&op.kind()) {
            std::cmp::Ordering::Greater => return,
            std::cmp::Ordering::Less => *self = Value::empty(op.kind()),
            std::cmp::Ordering::Equal => {}
        }
        match (self, op) {
            (Value::Lww(reg), ValueOp::Put(new)) => match reg {
                Some(r) => r.merge(new),
                None => *reg = Some(new),
            },
            (Value::GCounter(c), ValueOp::GInc(dot)) => c.apply(dot),
            (Value::PnCounter(c), ValueOp::Pn(op)) => c.apply(op.into_crdt()),
            (Value::Set(s), ValueOp::Set(op)) => s.apply(op),
            (Value::Map(m), ValueOp::Map(op)) => m.apply(op),
            _ => {}
        }
    }

    /// Read the value as plain data.
    pub fn view(&self) -> View {
        match self {
            Value::Lww(r) => View::Lww(r.as_ref().map(|r| r.val.clone())),
            Value::GCounter(c) => View::Counter(big_to_i128(&c.read())),
            Value::PnCounter(c) => View::Counter(big_to_i128(&c.read())),
            Value::Set(s) => View::Set(s.read().val.into_iter().collect()),
            Value::Map(m) => View::Map(m.view()),
        }
    }
}

/// Build the operation for a local change (pure; `node` is the actor).
pub(crate) mod make {
    use super::*;

    pub(crate) fn put(value: String, stamp: Stamp) -> ValueOp {
        ValueOp::Put(LWWReg {
            val: value,
            marker: stamp,
        })
    }

    pub(crate) fn g_inc(c: &GCounter<NodeId>, node: &NodeId, by: u64) -> ValueOp {
        ValueOp::GInc(c.inc_many(node.clone(), by))
    }

    pub(crate) fn pn(c: &PNCounter<NodeId>, node: &NodeId, by: u64, up: bool) -> ValueOp {
        let op = if up {
            c.inc_many(node.clone(), by)
        } else {
            c.dec_many(node.clone(), by)
        };
        ValueOp::Pn(CounterOp::from_crdt(op))
    }

    pub(crate) fn set_add(
        s: &Orswot<String, NodeId>,
        node: &NodeId,
        members: Vec<String>,
    ) -> ValueOp {
        let ctx = s.read_ctx().derive_add_ctx(node.clone());
        ValueOp::Set(s.add_all(members, ctx))
    }

    /// The remove carries the clock of every add it observed for those
    /// members, so it removes exactly what the author saw (add wins over a
    /// concurrent add it did not see).
    pub(crate) fn set_rm(s: &Orswot<String, NodeId>, members: Vec<String>) -> ValueOp {
        let mut clock = Version::new();
        for m in &members {
            clock.merge(s.contains(m).rm_clock);
        }
        ValueOp::Set(crdts::orswot::Op::Rm { clock, members })
    }

    fn op(
        m: &FieldMap,
        node: &NodeId,
        field: String,
        seen: BTreeSet<MapDot>,
        act: MapAct,
    ) -> ValueOp {
        ValueOp::Map(MapOp {
            dot: m.next_dot(node),
            field,
            seen,
            act,
        })
    }

    fn stores<'a>(m: &'a FieldMap, field: &str) -> Option<&'a FieldStores> {
        m.fields.get(field)
    }

    pub(crate) fn map_put(
        m: &FieldMap,
        node: &NodeId,
        field: String,
        value: String,
        stamp: Stamp,
    ) -> ValueOp {
        let seen = stores(m, &field)
            .map(|f| f.reg.keys().cloned().collect())
            .unwrap_or_default();
        op(m, node, field, seen, MapAct::Put(RegVal { stamp, value }))
    }

    pub(crate) fn map_count(
        m: &FieldMap,
        node: &NodeId,
        field: String,
        by: u64,
        up: bool,
    ) -> ValueOp {
        let own: BTreeMap<MapDot, i64> = stores(m, &field)
            .map(|f| {
                f.counter
                    .iter()
                    .filter(|(d, _)| d.node == *node)
                    .map(|(d, v)| (d.clone(), *v))
                    .collect()
            })
            .unwrap_or_default();
        let current: i64 = own.values().fold(0i64, |a, v| a.saturating_add(*v));
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        let total = if up {
            current.saturating_add(by)
        } else {
            current.saturating_sub(by)
        };
        op(
            m,
            node,
            field,
            own.into_keys().collect(),
            MapAct::Count(total),
        )
    }

    fn member_dots(m: &FieldMap, field: &str, members: &[String]) -> BTreeSet<MapDot> {
        let mut seen = BTreeSet::new();
        if let Some(f) = stores(m, field) {
            for mem in members {
                if let Some(d) = f.set.get(mem) {
                    seen.extend(d.iter().cloned());
                }
            }
        }
        seen
    }

    pub(crate) fn map_set_add(
        m: &FieldMap,
        node: &NodeId,
        field: String,
        members: Vec<String>,
    ) -> ValueOp {
        let seen = member_dots(m, &field, &members);
        op(m, node, field, seen, MapAct::Add(members))
    }

    pub(crate) fn map_set_rm(
        m: &FieldMap,
        node: &NodeId,
        field: String,
        members: Vec<String>,
    ) -> ValueOp {
        let seen = member_dots(m, &field, &members);
        op(m, node, field, seen, MapAct::Remove(members))
    }

    pub(crate) fn map_rm_field(m: &FieldMap, node: &NodeId, field: String) -> ValueOp {
        let seen = stores(m, &field)
            .map(FieldStores::all_dots)
            .unwrap_or_default();
        op(m, node, field, seen, MapAct::RemoveField)
    }
}

/// The field kind currently shown for a map field, if any.
pub(crate) fn field_kind(m: &FieldMap, field: &str) -> Option<&'static str> {
    m.field_kind(field).map(FieldKind::name)
}

/// Plain-data read of an entry's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum View {
    /// Register text (`None` before the first put).
    Lww(Option<String>),
    /// Counter value.
    Counter(i128),
    /// Set members.
    Set(BTreeSet<String>),
    /// Map fields.
    Map(BTreeMap<String, FieldView>),
}

/// Plain-data read of a map field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldView {
    /// Latest register text.
    Reg(String),
    /// Counter value.
    Counter(i128),
    /// Set members.
    Set(BTreeSet<String>),
}

fn big_to_i128<T: std::fmt::Display>(b: &T) -> i128
where
    for<'a> i128: TryFrom<&'a T>,
{
    i128::try_from(b).unwrap_or_else(|_| {
        if b.to_string().starts_with('-') {
            i128::MIN
        } else {
            i128::MAX
        }
    })
}
