# METADATA
# title: Kubernetes resource attributes - from the pod's identity, never from the app
# description: |
#   Every resource is stamped with the pod the sidecar serves, as the downward API and
#   the chart tell it: `k8s.namespace.name`, `k8s.pod.name`, `k8s.pod.uid`,
#   `k8s.node.name`, the workload's name (`k8s.deployment.name`, `k8s.statefulset.name`,
#   ... by its kind) and `k8s.cluster.name`. What the app claims for these keys is
#   overwritten: the values cannot be spoofed. Attributes the pod does not know are left
#   alone. Tunables: `data.otlp_sidecar.config.k8s` (`stamp`: false turns it off).
package otlp_sidecar.k8s

import rego.v1

settings := data.otlp_sidecar.config.k8s

# METADATA
# title: The semantic-convention attribute of each workload kind
workload_attribute := {
	"Deployment": "k8s.deployment.name",
	"StatefulSet": "k8s.statefulset.name",
	"DaemonSet": "k8s.daemonset.name",
	"ReplicaSet": "k8s.replicaset.name",
	"Job": "k8s.job.name",
	"CronJob": "k8s.cronjob.name",
}

# METADATA
# title: The pod's attributes, by key ("" when unknown)
pod_attributes(pod) := {
	"k8s.namespace.name": object.get(pod, "namespace", ""),
	"k8s.pod.name": object.get(pod, "name", ""),
	"k8s.pod.uid": object.get(pod, "uid", ""),
	"k8s.node.name": object.get(pod, "node_name", ""),
	"k8s.cluster.name": object.get(pod, "cluster_name", ""),
}

workload(pod) := {workload_attribute[kind]: name} if {
	kind := object.get(pod, "workload_kind", "")
	name := object.get(pod, "workload_name", "")
	workload_attribute[kind]
	name != ""
} else := {}

known(pod) := object.union(pod_attributes(pod), workload(pod))

stamps(request) := [stamp |
	settings.stamp == true
	attributes := known(request.pod)
	some key
	value := attributes[key]
	value != ""
	stamp := {"rule_id": "k8s.stamp", "key": key, "value": value, "on_conflict": "overwrite"}
]

# METADATA
# title: The Kubernetes part of the decision for one request (every signal)
decision_for(request) := {"stamps": stamps(request)}

decision := decision_for(input)
