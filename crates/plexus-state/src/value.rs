//! The CRDT values an entry can hold, their operations and their read views.
//!
//! Every value is a join-semilattice: [`Value::join`] is commutative,
//! associative and idempotent (checked by property tests). Values of
//! different kinds (two nodes created one key concurrently with different
//! types) are ordered by kind rank, so the join picks the higher kind whole:
//! a lexicographic product of a chain and lattices is still a lattice.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use crdts::ctx::AddCtx;
use crdts::{CmRDT, CvRDT, Dot, GCounter, LWWReg, MVReg, Map, Orswot, PNCounter, ResetRemove};
use serde::{Deserialize, Serialize};

use crate::types::{Kind, NodeId, Stamp, Version};

/// A last-writer-wins register: the JSON text with its unique stamp.
pub type LwwReg = LWWReg<String, Stamp>;
/// A map of fields keyed by field name.
pub type FieldMap = Map<String, Field, NodeId>;

/// One register value in a map field: the value with the stamp of its write,
/// so concurrent writes resolve to the latest stamp on read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegVal {
    /// Stamp of the write.
    pub stamp: Stamp,
    /// The JSON text written.
    pub value: String,
}

/// A field of a [`Kind::Map`] entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    /// Not yet written (the crdts map's default value).
    #[default]
    Empty,
    /// Multi-value register, read as last-writer-wins by stamp.
    Reg(MVReg<RegVal, NodeId>),
    /// Counter that goes up and down.
    Counter(PNCounter<NodeId>),
    /// Observed-remove set of strings.
    Set(Orswot<String, NodeId>),
}

/// An operation on one map field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldOp {
    /// Write a register value.
    Reg(crdts::mvreg::Op<RegVal, NodeId>),
    /// Count up or down.
    Counter(CounterOp),
    /// Add to or remove from a set.
    Set(crdts::orswot::Op<String, NodeId>),
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

impl Field {
    fn rank(&self) -> u8 {
        match self {
            Field::Empty => 0,
            Field::Reg(_) => 1,
            Field::Counter(_) => 2,
            Field::Set(_) => 3,
        }
    }

    fn op_rank(op: &FieldOp) -> u8 {
        match op {
            FieldOp::Reg(_) => 1,
            FieldOp::Counter(_) => 2,
            FieldOp::Set(_) => 3,
        }
    }

    /// Read the field as plain data.
    pub fn view(&self) -> Option<FieldView> {
        match self {
            Field::Empty => None,
            Field::Reg(r) => r
                .read()
                .val
                .into_iter()
                .max()
                .map(|v| FieldView::Reg(v.value)),
            Field::Counter(c) => Some(FieldView::Counter(big_to_i128(&c.read()))),
            Field::Set(s) => Some(FieldView::Set(s.read().val.into_iter().collect())),
        }
    }
}

impl CvRDT for Field {
    type Validation = Infallible;

    fn validate_merge(&self, _other: &Self) -> Result<(), Infallible> {
        Ok(())
    }

    fn merge(&mut self, other: Self) {
        match (self.rank()).cmp(&other.rank()) {
            std::cmp::Ordering::Less => *self = other,
            std::cmp::Ordering::Greater => {}
            std::cmp::Ordering::Equal => match (self, other) {
                (Field::Reg(a), Field::Reg(b)) => a.merge(b),
                (Field::Counter(a), Field::Counter(b)) => a.merge(b),
                (Field::Set(a), Field::Set(b)) => a.merge(b),
                _ => {}
            },
        }
    }
}

impl CmRDT for Field {
    type Op = FieldOp;
    type Validation = Infallible;

    fn validate_op(&self, _op: &FieldOp) -> Result<(), Infallible> {
        Ok(())
    }

    fn apply(&mut self, op: FieldOp) {
        let op_rank = Field::op_rank(&op);
        if op_rank < self.rank() {
            // A concurrent write of a higher-ranked field type won.
            return;
        }
        if op_rank > self.rank() {
            *self = match op {
                FieldOp::Reg(_) => Field::Reg(MVReg::new()),
                FieldOp::Counter(_) => Field::Counter(PNCounter::new()),
                FieldOp::Set(_) => Field::Set(Orswot::new()),
            };
        }
        match (self, op) {
            (Field::Reg(r), FieldOp::Reg(op)) => r.apply(op),
            (Field::Counter(c), FieldOp::Counter(op)) => c.apply(op.into_crdt()),
            (Field::Set(s), FieldOp::Set(op)) => s.apply(op),
            _ => {}
        }
    }
}

impl ResetRemove<NodeId> for Field {
    fn reset_remove(&mut self, clock: &Version) {
        match self {
            Field::Empty => {}
            Field::Reg(r) => r.reset_remove(clock),
            // A counter's dots count increments, not map changes: resetting
            // it by the map's clock would mix two dot spaces. A counter field
            // removed concurrently with an increment survives whole.
            Field::Counter(_) => {}
            Field::Set(s) => s.reset_remove(clock),
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
/// a crdts operation under causal delivery (the store guarantees it).
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
    /// Map field update or field removal.
    Map(crdts::map::Op<String, Field, NodeId>),
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
        match self {
            ValueOp::Put(r) => r.val.len(),
            ValueOp::GInc(_) | ValueOp::Pn(_) => 0,
            ValueOp::Set(crdts::orswot::Op::Add { members, .. })
            | ValueOp::Set(crdts::orswot::Op::Rm { members, .. }) => {
                members.iter().map(|m| m.len()).sum()
            }
            ValueOp::Map(crdts::map::Op::Up { key, op, .. }) => {
                key.len()
                    + match op {
                        FieldOp::Reg(crdts::mvreg::Op::Put { val, .. }) => val.value.len(),
                        FieldOp::Counter(_) => 0,
                        FieldOp::Set(crdts::orswot::Op::Add { members, .. })
                        | FieldOp::Set(crdts::orswot::Op::Rm { members, .. }) => {
                            members.iter().map(|m| m.len()).sum()
                        }
                    }
            }
            ValueOp::Map(crdts::map::Op::Rm { keyset, .. }) => keyset.iter().map(|k| k.len()).sum(),
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
            Kind::Map => Value::Map(Map::new()),
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
                (Value::Map(a), Value::Map(b)) => a.merge(b),
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
            Value::Map(m) => View::Map(
                m.iter()
                    .filter_map(|e| {
                        let (k, v) = e.val;
                        v.view().map(|v| (k.clone(), v))
                    })
                    .collect(),
            ),
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
        ValueOp::Set(set_rm_op(s, members))
    }

    fn set_rm_op(
        s: &Orswot<String, NodeId>,
        members: Vec<String>,
    ) -> crdts::orswot::Op<String, NodeId> {
        let mut clock = Version::new();
        for m in &members {
            clock.merge(s.contains(m).rm_clock);
        }
        crdts::orswot::Op::Rm { clock, members }
    }

    fn map_ctx(m: &FieldMap, node: &NodeId) -> AddCtx<NodeId> {
        m.read_ctx().derive_add_ctx(node.clone())
    }

    pub(crate) fn map_put(
        m: &FieldMap,
        node: &NodeId,
        field: String,
        value: String,
        stamp: Stamp,
    ) -> ValueOp {
        let ctx = map_ctx(m, node);
        ValueOp::Map(m.update(field, ctx, |_, ctx| {
            FieldOp::Reg(crdts::mvreg::Op::Put {
                clock: ctx.clock,
                val: RegVal { stamp, value },
            })
        }))
    }

    pub(crate) fn map_count(
        m: &FieldMap,
        node: &NodeId,
        field: String,
        by: u64,
        up: bool,
    ) -> ValueOp {
        let ctx = map_ctx(m, node);
        ValueOp::Map(m.update(field, ctx, |f, _| {
            let counter = match f {
                Field::Counter(c) => c.clone(),
                _ => PNCounter::new(),
            };
            let op = if up {
                counter.inc_many(node.clone(), by)
            } else {
                counter.dec_many(node.clone(), by)
            };
            FieldOp::Counter(CounterOp::from_crdt(op))
        }))
    }

    pub(crate) fn map_set_add(
        m: &FieldMap,
        node: &NodeId,
        field: String,
        members: Vec<String>,
    ) -> ValueOp {
        let ctx = map_ctx(m, node);
        ValueOp::Map(m.update(field, ctx, |f, ctx| {
            let set = match f {
                Field::Set(s) => s.clone(),
                _ => Orswot::new(),
            };
            FieldOp::Set(set.add_all(members, ctx))
        }))
    }

    pub(crate) fn map_set_rm(
        m: &FieldMap,
        node: &NodeId,
        field: String,
        members: Vec<String>,
    ) -> ValueOp {
        let ctx = map_ctx(m, node);
        ValueOp::Map(m.update(field, ctx, |f, _| {
            let set = match f {
                Field::Set(s) => s.clone(),
                _ => Orswot::new(),
            };
            FieldOp::Set(set_rm_op(&set, members))
        }))
    }

    pub(crate) fn map_rm_field(m: &FieldMap, field: String) -> ValueOp {
        let ctx = m.get(&field).derive_rm_ctx();
        ValueOp::Map(m.rm(field, ctx))
    }
}

/// The field kind currently held by a map field, if any.
pub(crate) fn field_kind(m: &FieldMap, field: &str) -> Option<&'static str> {
    m.get(&field.to_string()).val.and_then(|f| match f {
        Field::Empty => None,
        Field::Reg(_) => Some("register"),
        Field::Counter(_) => Some("counter"),
        Field::Set(_) => Some("set"),
    })
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
