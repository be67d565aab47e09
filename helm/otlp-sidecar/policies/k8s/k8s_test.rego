package otlp_sidecar.k8s_test

import rego.v1

import data.otlp_sidecar.k8s

# The policies are functions of the request: regopy cannot run `with input as`
# on rules that refer to other rules, so the tests call decision_for directly.
full_pod := {
	"name": "api-7d9f-x2", "namespace": "shop", "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
	"node_name": "node-3", "cluster_name": "prod-eu", "workload_kind": "Deployment",
	"workload_name": "api", "service_account": "api", "tenant": "", "labels": {}, "annotations": {},
}

k8s_request(pod) := {"signal": "logs", "resource": {"k8s.pod.name": "spoofed"}, "pod": pod}

stamped(decision) := {stamp.key: stamp.value | some stamp in decision.stamps}

test_every_known_attribute_is_stamped_over_the_app if {
	decision := k8s.decision_for(k8s_request(full_pod)) with data.otlp_sidecar.config.k8s.stamp as true
	stamped(decision) == {
		"k8s.namespace.name": "shop", "k8s.pod.name": "api-7d9f-x2",
		"k8s.pod.uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001", "k8s.node.name": "node-3",
		"k8s.cluster.name": "prod-eu", "k8s.deployment.name": "api",
	}
	every stamp in decision.stamps {
		stamp.on_conflict == "overwrite"
		stamp.rule_id == "k8s.stamp"
	}
}

test_workload_attribute_follows_the_kind if {
	pod := object.union(full_pod, {"workload_kind": "StatefulSet", "workload_name": "db"})
	decision := k8s.decision_for(k8s_request(pod)) with data.otlp_sidecar.config.k8s.stamp as true
	stamped(decision)["k8s.statefulset.name"] == "db"
	not stamped(decision)["k8s.deployment.name"]
}

test_unknown_values_are_not_stamped if {
	pod := {"name": "solo", "namespace": "shop", "labels": {}, "annotations": {}}
	decision := k8s.decision_for(k8s_request(pod)) with data.otlp_sidecar.config.k8s.stamp as true
	stamped(decision) == {"k8s.namespace.name": "shop", "k8s.pod.name": "solo"}
}

test_unknown_workload_kind_is_not_stamped if {
	pod := object.union(full_pod, {"workload_kind": "Rollout", "workload_name": "api"})
	decision := k8s.decision_for(k8s_request(pod)) with data.otlp_sidecar.config.k8s.stamp as true
	object.keys(stamped(decision)) == {
		"k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.node.name", "k8s.cluster.name",
	}
}

test_stamping_can_be_turned_off if {
	decision := k8s.decision_for(k8s_request(full_pod)) with data.otlp_sidecar.config.k8s.stamp as false
	decision.stamps == []
}

test_data_setting_is_a_boolean if {
	is_boolean(data.otlp_sidecar.config.k8s.stamp)
}
