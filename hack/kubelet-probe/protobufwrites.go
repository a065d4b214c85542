package main

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// protobufWritesResult is what the writes left, read back with the same client.
type protobufWritesResult struct {
	Secret             *corev1.Secret             `json:"secret"`
	ConfigMap          *corev1.ConfigMap          `json:"configMap"`
	ClusterRole        *rbacv1.ClusterRole        `json:"clusterRole"`
	ClusterRoleBinding *rbacv1.ClusterRoleBinding `json:"clusterRoleBinding"`
	Role               *rbacv1.Role               `json:"role"`
	RoleBinding        *rbacv1.RoleBinding        `json:"roleBinding"`
	// The Node created and then deleted with a UID precondition.
	NodeDeleted bool `json:"nodeDeleted"`
}

// runProtobufWrites writes what Cluster API's controllers write into a workload cluster,
// with request bodies in Kubernetes protobuf, as controller-runtime sends them for
// built-in kinds (its client sets ContentType to protobuf when its scheme knows the
// kind): CABPK's bootstrap-token Secret, KCP's kubeadm-config ConfigMap (created, then
// updated with a PUT), KCP's RBAC for an upgrade, and CAPI deleting a Node (created in
// JSON, as a kubelet would) with DeleteOptions.
func runProtobufWrites(ctx context.Context, t *target, args []string) (any, error) {
	if len(args) != 0 {
		return nil, fmt.Errorf("unexpected arguments %q", args)
	}
	config, err := clientcmd.BuildConfigFromFlags("", t.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	// The Node is created in JSON, as metal3-fakenode's kubelets do (client-go's clientset
	// would default to protobuf); Cluster API only patches and deletes Nodes.
	config.ContentType = runtime.ContentTypeJSON
	jsonClient, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	config.ContentType = runtime.ContentTypeProtobuf
	config.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	c, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	const ns = "kube-system"
	create := metav1.CreateOptions{}
	out := &protobufWritesResult{}

	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: "bootstrap-token-abcdef", Namespace: ns,
			Labels: map[string]string{"probe": "protobuf"},
		},
		Type: corev1.SecretTypeBootstrapToken,
		Data: map[string][]byte{
			"token-id":                       []byte("abcdef"),
			"token-secret":                   []byte("0123456789abcdef"),
			"usage-bootstrap-authentication": []byte("true"),
			"expiration":                     []byte("2030-01-01T00:00:00Z"),
		},
	}
	if out.Secret, err = c.CoreV1().Secrets(ns).Create(ctx, secret, create); err != nil {
		return nil, fmt.Errorf("creating the bootstrap-token Secret: %w", err)
	}

	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm-config", Namespace: ns},
		Data:       map[string]string{"ClusterConfiguration": "kubernetesVersion: v1.35.0\n"},
	}
	created, err := c.CoreV1().ConfigMaps(ns).Create(ctx, cm, create)
	if err != nil {
		return nil, fmt.Errorf("creating kubeadm-config: %w", err)
	}
	created.Data["ClusterConfiguration"] = "kubernetesVersion: v1.36.0\n"
	if out.ConfigMap, err = c.CoreV1().ConfigMaps(ns).Update(ctx, created, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("updating kubeadm-config: %w", err)
	}

	rules := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}}}
	if out.ClusterRole, err = c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:get-nodes"},
		Rules:      rules,
	}, create); err != nil {
		return nil, fmt.Errorf("creating a ClusterRole: %w", err)
	}
	if out.ClusterRoleBinding, err = c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:cluster-admins"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "kubeadm:cluster-admins"}},
	}, create); err != nil {
		return nil, fmt.Errorf("creating a ClusterRoleBinding: %w", err)
	}
	if out.Role, err = c.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:kubelet-config", Namespace: ns},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"configmaps"},
			ResourceNames: []string{"kubelet-config"}, Verbs: []string{"get"},
		}},
	}, create); err != nil {
		return nil, fmt.Errorf("creating a Role: %w", err)
	}
	if out.RoleBinding, err = c.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubeadm:kubelet-config", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "kubeadm:kubelet-config"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: "system:nodes"}},
	}, create); err != nil {
		return nil, fmt.Errorf("creating a RoleBinding: %w", err)
	}

	node, err := jsonClient.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "probe-node", Labels: map[string]string{"probe": "protobuf"}},
	}, create)
	if err != nil {
		return nil, fmt.Errorf("creating a Node: %w", err)
	}
	background := metav1.DeletePropagationBackground
	if err := c.CoreV1().Nodes().Delete(ctx, node.Name, metav1.DeleteOptions{
		Preconditions:     metav1.NewUIDPreconditions(string(node.UID)),
		PropagationPolicy: &background,
	}); err != nil {
		return nil, fmt.Errorf("deleting the Node: %w", err)
	}
	out.NodeDeleted = true
	return out, nil
}
