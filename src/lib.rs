//! metal3-fakenode: fake kubelets for Metal3 / Cluster API scale tests.

pub mod envtest;
