//! The messages the decoder knows, as static field tables copied by hand from the
//! upstream `generated.proto` files (field numbers) and `types.go` files (JSON names,
//! pointers and `omitempty`). Fields are listed in Go struct order, the order Go's JSON
//! prints them in.

/// How a field is carried on the wire: one value, repeated values, or a map (repeated
/// entry messages {1 key, 2 value}). Kubernetes repeats only strings and messages, so
/// packed repeated scalars never occur.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Type {
    One(Scalar),
    Many(Scalar),
    Map(MapValue),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Scalar {
    String,
    Bool,
    Int32,
    Int64,
    /// `metav1.Time`: whole seconds, RFC 3339.
    Time,
    /// `metav1.MicroTime`: RFC 3339 with six fractional digits.
    MicroTime,
    /// `metav1.FieldsV1`: raw JSON embedded as a value.
    FieldsV1,
    Message(&'static Message),
}

/// The value type of a `map[string]...`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MapValue {
    String,
    /// `[]byte`, printed in base64.
    Bytes,
}

/// When Go's JSON prints a field, given its Go type and json tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Json {
    /// A value field without `omitempty` (or a struct, where `omitempty` has no effect):
    /// always printed, as its zero value when absent from the wire.
    Always,
    /// A value field with `omitempty`: dropped when empty ("", 0, false, no entries).
    OmitEmpty,
    /// A `metav1.Time` with `omitzero`: dropped when it is the zero time.
    OmitZero,
    /// A pointer with `omitempty`: printed exactly when the wire carries it.
    Pointer,
}

#[derive(Debug)]
pub(crate) struct Field {
    pub(crate) number: u32,
    pub(crate) name: &'static str,
    pub(crate) ty: Type,
    pub(crate) json: Json,
}

#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) name: &'static str,
    pub(crate) fields: &'static [Field],
}

impl Message {
    pub(crate) fn field(&self, number: u64) -> Option<(usize, &'static Field)> {
        self.fields
            .iter()
            .enumerate()
            .find(|(_, field)| u64::from(field.number) == number)
    }
}

const fn f(number: u32, name: &'static str, ty: Type, json: Json) -> Field {
    Field {
        number,
        name,
        ty,
        json,
    }
}

use Json::{Always, OmitEmpty, OmitZero, Pointer};

const STRING: Type = Type::One(Scalar::String);
const BOOL: Type = Type::One(Scalar::Bool);
const INT32: Type = Type::One(Scalar::Int32);
const INT64: Type = Type::One(Scalar::Int64);
const TIME: Type = Type::One(Scalar::Time);
const MICRO_TIME: Type = Type::One(Scalar::MicroTime);
const FIELDS_V1: Type = Type::One(Scalar::FieldsV1);
const STRINGS: Type = Type::Many(Scalar::String);
const STRING_MAP: Type = Type::Map(MapValue::String);
const BYTES_MAP: Type = Type::Map(MapValue::Bytes);

const fn one(message: &'static Message) -> Type {
    Type::One(Scalar::Message(message))
}

const fn many(message: &'static Message) -> Type {
    Type::Many(Scalar::Message(message))
}

// meta/v1

pub(crate) static OBJECT_META: Message = Message {
    name: "ObjectMeta",
    fields: &[
        f(1, "name", STRING, OmitEmpty),
        f(2, "generateName", STRING, OmitEmpty),
        f(3, "namespace", STRING, OmitEmpty),
        f(4, "selfLink", STRING, OmitEmpty),
        f(5, "uid", STRING, OmitEmpty),
        f(6, "resourceVersion", STRING, OmitEmpty),
        f(7, "generation", INT64, OmitEmpty),
        f(8, "creationTimestamp", TIME, OmitZero),
        f(9, "deletionTimestamp", TIME, Pointer),
        f(10, "deletionGracePeriodSeconds", INT64, Pointer),
        f(11, "labels", STRING_MAP, OmitEmpty),
        f(12, "annotations", STRING_MAP, OmitEmpty),
        f(13, "ownerReferences", many(&OWNER_REFERENCE), OmitEmpty),
        f(14, "finalizers", STRINGS, OmitEmpty),
        f(17, "managedFields", many(&MANAGED_FIELDS_ENTRY), OmitEmpty),
    ],
};

static OWNER_REFERENCE: Message = Message {
    name: "OwnerReference",
    fields: &[
        f(5, "apiVersion", STRING, Always),
        f(1, "kind", STRING, Always),
        f(3, "name", STRING, Always),
        f(4, "uid", STRING, Always),
        f(6, "controller", BOOL, Pointer),
        f(7, "blockOwnerDeletion", BOOL, Pointer),
    ],
};

static MANAGED_FIELDS_ENTRY: Message = Message {
    name: "ManagedFieldsEntry",
    fields: &[
        f(1, "manager", STRING, OmitEmpty),
        f(2, "operation", STRING, OmitEmpty),
        f(3, "apiVersion", STRING, OmitEmpty),
        f(4, "time", TIME, Pointer),
        f(6, "fieldsType", STRING, OmitEmpty),
        f(7, "fieldsV1", FIELDS_V1, Pointer),
        f(8, "subresource", STRING, OmitEmpty),
    ],
};

pub(crate) static DELETE_OPTIONS: Message = Message {
    name: "DeleteOptions",
    fields: &[
        f(1, "gracePeriodSeconds", INT64, Pointer),
        f(2, "preconditions", one(&PRECONDITIONS), Pointer),
        f(3, "orphanDependents", BOOL, Pointer),
        f(4, "propagationPolicy", STRING, Pointer),
        f(5, "dryRun", STRINGS, OmitEmpty),
        f(
            6,
            "ignoreStoreReadErrorWithClusterBreakingPotential",
            BOOL,
            Pointer,
        ),
    ],
};

static PRECONDITIONS: Message = Message {
    name: "Preconditions",
    fields: &[
        f(1, "uid", STRING, Pointer),
        f(2, "resourceVersion", STRING, Pointer),
    ],
};

static LABEL_SELECTOR: Message = Message {
    name: "LabelSelector",
    fields: &[
        f(1, "matchLabels", STRING_MAP, OmitEmpty),
        f(
            2,
            "matchExpressions",
            many(&LABEL_SELECTOR_REQUIREMENT),
            OmitEmpty,
        ),
    ],
};

static LABEL_SELECTOR_REQUIREMENT: Message = Message {
    name: "LabelSelectorRequirement",
    fields: &[
        f(1, "key", STRING, Always),
        f(2, "operator", STRING, Always),
        f(3, "values", STRINGS, OmitEmpty),
    ],
};

const METADATA: Field = f(1, "metadata", one(&OBJECT_META), Always);

// core/v1

pub(crate) static SECRET: Message = Message {
    name: "Secret",
    fields: &[
        METADATA,
        f(5, "immutable", BOOL, Pointer),
        f(2, "data", BYTES_MAP, OmitEmpty),
        f(4, "stringData", STRING_MAP, OmitEmpty),
        f(3, "type", STRING, OmitEmpty),
    ],
};

pub(crate) static CONFIG_MAP: Message = Message {
    name: "ConfigMap",
    fields: &[
        METADATA,
        f(4, "immutable", BOOL, Pointer),
        f(2, "data", STRING_MAP, OmitEmpty),
        f(3, "binaryData", BYTES_MAP, OmitEmpty),
    ],
};

pub(crate) static NAMESPACE: Message = Message {
    name: "Namespace",
    fields: &[
        METADATA,
        f(2, "spec", one(&NAMESPACE_SPEC), Always),
        f(3, "status", one(&NAMESPACE_STATUS), Always),
    ],
};

static NAMESPACE_SPEC: Message = Message {
    name: "NamespaceSpec",
    fields: &[f(1, "finalizers", STRINGS, OmitEmpty)],
};

static NAMESPACE_STATUS: Message = Message {
    name: "NamespaceStatus",
    fields: &[
        f(1, "phase", STRING, OmitEmpty),
        f(2, "conditions", many(&NAMESPACE_CONDITION), OmitEmpty),
    ],
};

static NAMESPACE_CONDITION: Message = Message {
    name: "NamespaceCondition",
    fields: &[
        f(1, "type", STRING, Always),
        f(2, "status", STRING, Always),
        f(4, "lastTransitionTime", TIME, Always),
        f(5, "reason", STRING, OmitEmpty),
        f(6, "message", STRING, OmitEmpty),
    ],
};

// rbac.authorization.k8s.io/v1

pub(crate) static CLUSTER_ROLE: Message = Message {
    name: "ClusterRole",
    fields: &[
        METADATA,
        f(2, "rules", many(&POLICY_RULE), Always),
        f(3, "aggregationRule", one(&AGGREGATION_RULE), Pointer),
    ],
};

pub(crate) static ROLE: Message = Message {
    name: "Role",
    fields: &[METADATA, f(2, "rules", many(&POLICY_RULE), Always)],
};

pub(crate) static CLUSTER_ROLE_BINDING: Message = Message {
    name: "ClusterRoleBinding",
    fields: &[
        METADATA,
        f(2, "subjects", many(&SUBJECT), OmitEmpty),
        f(3, "roleRef", one(&ROLE_REF), Always),
    ],
};

pub(crate) static ROLE_BINDING: Message = Message {
    name: "RoleBinding",
    fields: CLUSTER_ROLE_BINDING.fields,
};

static POLICY_RULE: Message = Message {
    name: "PolicyRule",
    fields: &[
        f(1, "verbs", STRINGS, Always),
        f(2, "apiGroups", STRINGS, OmitEmpty),
        f(3, "resources", STRINGS, OmitEmpty),
        f(4, "resourceNames", STRINGS, OmitEmpty),
        f(5, "nonResourceURLs", STRINGS, OmitEmpty),
    ],
};

static AGGREGATION_RULE: Message = Message {
    name: "AggregationRule",
    fields: &[f(
        1,
        "clusterRoleSelectors",
        many(&LABEL_SELECTOR),
        OmitEmpty,
    )],
};

static SUBJECT: Message = Message {
    name: "Subject",
    fields: &[
        f(1, "kind", STRING, Always),
        f(2, "apiGroup", STRING, OmitEmpty),
        f(3, "name", STRING, Always),
        f(4, "namespace", STRING, OmitEmpty),
    ],
};

static ROLE_REF: Message = Message {
    name: "RoleRef",
    fields: &[
        f(1, "apiGroup", STRING, Always),
        f(2, "kind", STRING, Always),
        f(3, "name", STRING, Always),
    ],
};

// policy/v1

pub(crate) static EVICTION: Message = Message {
    name: "Eviction",
    fields: &[
        METADATA,
        f(2, "deleteOptions", one(&DELETE_OPTIONS), Pointer),
    ],
};

// coordination.k8s.io/v1

pub(crate) static LEASE: Message = Message {
    name: "Lease",
    fields: &[METADATA, f(2, "spec", one(&LEASE_SPEC), Always)],
};

static LEASE_SPEC: Message = Message {
    name: "LeaseSpec",
    fields: &[
        f(1, "holderIdentity", STRING, Pointer),
        f(2, "leaseDurationSeconds", INT32, Pointer),
        f(3, "acquireTime", MICRO_TIME, Pointer),
        f(4, "renewTime", MICRO_TIME, Pointer),
        f(5, "leaseTransitions", INT32, Pointer),
        f(6, "strategy", STRING, Pointer),
        f(7, "preferredHolder", STRING, Pointer),
    ],
};

/// The kinds whose bodies are decoded, by envelope (apiVersion, kind). DeleteOptions is
/// looked up by kind alone: the API server takes it under any apiVersion.
pub(crate) static KINDS: &[(&str, &str, &Message)] = &[
    ("v1", "Secret", &SECRET),
    ("v1", "ConfigMap", &CONFIG_MAP),
    ("v1", "Namespace", &NAMESPACE),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", &CLUSTER_ROLE),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        &CLUSTER_ROLE_BINDING,
    ),
    ("rbac.authorization.k8s.io/v1", "Role", &ROLE),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", &ROLE_BINDING),
    ("policy/v1", "Eviction", &EVICTION),
    ("coordination.k8s.io/v1", "Lease", &LEASE),
    ("meta.k8s.io/v1", "DeleteOptions", &DELETE_OPTIONS),
];
