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

use compact_str::CompactString;
use crdts::{CmRDT, CvRDT, Dot, GCounter, LWWReg, Orswot, PNCounter};
use serde::{Deserialize, Deserializer, Serialize};
use smallvec::SmallVec;

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
///
/// The node name is a [`CompactString`]: names up to 24 bytes sit inline,
/// so a map of 10,000 fields does not hold 10,000 heap copies of the same
/// few node names (joining and freeing large maps is dominated by
/// allocations otherwise).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MapDot {
    /// Node that made the change.
    pub node: CompactString,
    /// Its map change counter.
    pub counter: u64,
}

/// Dot-tagged content of one field, sorted by dot without duplicates.
///
/// Almost always one entry (several only after concurrent writes), so it
/// is kept inline: no allocation per field. Deserialization restores the
/// order, so a peer cannot break the invariant the lookups rely on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct DotFun<V>(SmallVec<[(MapDot, V); 1]>);

impl<V> Default for DotFun<V> {
    fn default() -> Self {
        DotFun(SmallVec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for DotFun<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v = SmallVec::<[(MapDot, V); 1]>::deserialize(d)?;
        if !v.windows(2).all(|w| w[0].0 < w[1].0) {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.dedup_by(|a, b| a.0 == b.0);
        }
        Ok(DotFun(v))
    }
}

impl<V> DotFun<V> {
    fn find(&self, d: &MapDot) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(d))
    }

    /// Whether content tagged `d` is present.
    pub fn contains_key(&self, d: &MapDot) -> bool {
        self.find(d).is_ok()
    }

    /// Tag `v` with `d` (replacing content with the same dot).
    pub fn insert(&mut self, d: MapDot, v: V) {
        match self.find(&d) {
            Ok(i) => self.0[i].1 = v,
            Err(i) => self.0.insert(i, (d, v)),
        }
    }

    /// Keep the entries `f` accepts.
    pub fn retain(&mut self, mut f: impl FnMut(&MapDot, &V) -> bool) {
        self.0.retain(|(d, v)| f(d, v));
    }

    /// Whether there is no content.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in dot order.
    pub fn iter(&self) -> impl Iterator<Item = (&MapDot, &V)> {
        self.0.iter().map(|(d, v)| (d, v))
    }

    /// Dots in order.
    pub fn keys(&self) -> impl Iterator<Item = &MapDot> {
        self.0.iter().map(|(d, _)| d)
    }

    /// Values in dot order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }
}

/// The live contents of one field name, by type. Every piece of content is
/// tagged with the dot of the change that wrote it; a change or removal
/// drops exactly the dots its author had observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldStores {
    /// Register writes not yet overwritten (several if concurrent).
    pub reg: DotFun<RegVal>,
    /// Counter contributions: one dot per node, holding that node's total.
    pub counter: DotFun<i64>,
    /// Set members and the dots of the adds that are still live.
    pub set: BTreeMap<String, DotFun<()>>,
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
            s.extend(dots.keys().cloned());
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
    /// Live fields (names of up to 24 bytes are stored inline).
    pub fields: BTreeMap<CompactString, FieldStores>,
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
        ctx.dots.get(d.node.as_str()).copied().unwrap_or(0) >= d.counter
    }

    /// The next dot for `node`.
    fn next_dot(&self, node: &NodeId) -> MapDot {
        MapDot {
            node: CompactString::from(node.as_str()),
            counter: self.ctx.get(node) + 1,
        }
    }

    /// Apply one change (causally delivered; repeats are ignored).
    pub fn apply(&mut self, op: MapOp) {
        if Self::has_seen(&self.ctx, &op.dot) {
            return;
        }
        let field = CompactString::from(op.field.as_str());
        let st = self.fields.entry(field.clone()).or_default();
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
                    dots.retain(|d, _| keep(d));
                    dots.insert(op.dot.clone(), ());
                }
            }
            MapAct::Remove(members) => {
                for m in members {
                    if let Some(dots) = st.set.get_mut(&m) {
                        dots.retain(|d, _| keep(d));
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
                    dots.retain(|d, _| keep(d));
                    !dots.is_empty()
                });
            }
        }
        if st.is_empty() {
            self.fields.remove(&field);
        }
        self.ctx
            .apply(Dot::new(op.dot.node.to_string(), op.dot.counter));
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
        let mut only_theirs: Vec<(&CompactString, &FieldStores)> = Vec::new();
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
            .filter_map(|(k, f)| f.view().map(|v| (k.to_string(), v)))
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
            Some(theirs) => join_fun(dots, theirs, actx, bctx),
            None => dots.retain(|d, _| !FieldMap::has_seen(bctx, d)),
        }
    }
    for (m, theirs) in &b.set {
        if !a.set.contains_key(m) {
            let mut dots = DotFun::default();
            join_fun(&mut dots, theirs, actx, bctx);
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
        dots.retain(|d, _| !FieldMap::has_seen(bctx, d));
        !dots.is_empty()
    });
}

/// Causal join of two dot-tagged functions (or dot sets, `V = ()`), into `a`.
fn join_fun<V: Clone>(a: &mut DotFun<V>, b: &DotFun<V>, actx: &Version, bctx: &Version) {
    a.retain(|d, _| b.contains_key(d) || !FieldMap::has_seen(bctx, d));
    for (d, v) in b.iter() {
        if !FieldMap::has_seen(actx, d) && !a.contains_key(d) {
            a.insert(d.clone(), v.clone());
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
                    .filter(|(d, _)| d.node == node.as_str())
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
                    seen.extend(d.keys().cloned());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(node: &str, counter: u64) -> MapDot {
        MapDot {
            node: node.into(),
            counter,
        }
    }

    /// A peer's encoding may list dots out of order or twice; lookups rely
    /// on sorted, unique dots, so decoding restores that.
    #[test]
    fn decoded_dot_content_is_sorted_and_unique() {
        let wire: Vec<(MapDot, i64)> = vec![(dot("b", 2), 5), (dot("a", 9), 1), (dot("b", 2), 7)];
        let bytes = plexus_codec::encode(&wire).expect("encode");
        let f: DotFun<i64> = plexus_codec::decode(&bytes).expect("decode");
        let dots: Vec<&MapDot> = f.keys().collect();
        assert_eq!(dots, vec![&dot("a", 9), &dot("b", 2)]);
        assert!(f.contains_key(&dot("b", 2)));
        assert!(!f.contains_key(&dot("b", 3)));
    }

    #[test]
    fn insert_keeps_order_and_replaces_equal_dots() {
        let mut f = DotFun::default();
        f.insert(dot("c", 1), 1);
        f.insert(dot("a", 1), 2);
        f.insert(dot("c", 1), 3);
        let got: Vec<(MapDot, i64)> = f.iter().map(|(d, v)| (d.clone(), *v)).collect();
        assert_eq!(got, vec![(dot("a", 1), 2), (dot("c", 1), 3)]);
    }
}
