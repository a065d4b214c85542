//! Kubernetes strategic merge patches (`application/strategic-merge-patch+json`) applied to a
//! JSON object as the kube-apiserver applies them, with each field's strategy read from the
//! server's OpenAPI v3 document.
//!
//! No maintained Rust crate applies strategic merge patches, so this one is written by hand.
//!
//! A proxy that shows clients its own view of objects cannot forward their strategic patches:
//! it applies them here to the client's view, then writes the result back whole. The
//! clients that send them are many: the kubelet's Node status heartbeat (`status.conditions`
//! merged by `type`), Cluster API's Node patch (labels, annotations, taints, with
//! `metadata.resourceVersion` for optimistic locking), kubectl's cordon, label, drain and
//! `patch`.
//!
//! What a patch does, as the server does it:
//! - Objects merge key by key; `null` deletes a key; any other value replaces. A field the
//!   original lacks takes the patch's value, without its null fields.
//! - `$patch: replace` in an object makes the rest of that object the new value;
//!   `$patch: delete` empties it. A field whose schema says `replace` is replaced whole.
//! - `$retainKeys: [..]` drops the original's fields it does not list; the patch may set no
//!   other.
//! - Lists are replaced whole, unless the schema says `merge`: lists of primitives then take
//!   the union (`$deleteFromPrimitiveList/<field>` removes values), and lists of objects
//!   merge item by item on the merge key, where an item `{"<key>": v, "$patch": "delete"}`
//!   removes the original's items with that key and an item `{"$patch": "replace"}` makes
//!   the other items the whole list.
//! - Merged lists follow the patch's order for the items it names; the original's other
//!   items keep their order, slotted in where they stood relative to the named ones, and a
//!   new item goes as soon as its turn comes in the patch. `$setElementOrder/<field>` orders
//!   the same way by its own list, which must name the patch's items in their order.
//!
//! Deliberate differences, all at the edges of what clients send:
//! - No directive key and no null field is left in the result, where the server sometimes
//!   leaves them for decoding into its typed object to drop.
//! - A field the schema does not know is patched as free-form data (objects merge, lists are
//!   replaced) where the server, which knows every field of its types, refuses to merge a
//!   nested object or list it cannot find in the type.
//! - A patch that both adds values to a list of primitives and deletes some with
//!   `$deleteFromPrimitiveList` is applied additions first, deletions last; the server
//!   takes the two in the random order of a Go map.
//! - Lists of primitives may mix JSON types, where the server refuses. A
//!   `$deleteFromPrimitiveList` that is not a list, or aims at a list of objects, is
//!   refused, where the server would delete, overwrite or merge.
//! - Duplicate values in an original list of primitives do not disturb the order of the
//!   others, where the server's order depends on its memory layout.
//! - Nesting deeper than [`MAX_DEPTH`] is refused.

pub mod error;
mod patch;
pub mod schema;

pub use error::{Error, Result};
pub use patch::{MAX_DEPTH, apply};
pub use schema::{FieldStrategy, ListStrategy, Schema};
