//! Plexus replicated state core (placeholder docs, expanded below).

pub mod audit;
pub mod delta;
pub mod digest;
pub mod entry;
pub mod store;
pub mod types;
pub mod value;

pub use audit::{AuditLog, AuditQuery, AuditRecord, Outcome, Source};
pub use delta::{ChangeKind, Delta, DeltaOp, StateEvent};
pub use digest::{bucket_of, Digest, KeyDigest, KeySummary, SyncItem, BUCKETS};
pub use entry::{Body, Creation, EntryInfo, EntryState, Live, Meta};
pub use store::{Change, DeltaStatus, LocalOp, RemoteOutcome, Store, StoreConfig};
pub use types::{Access, Gen, Kind, NodeId, PluginId, Stamp, StateError, Version};
pub use value::{Field, FieldOp, FieldView, Value, ValueOp, View};
