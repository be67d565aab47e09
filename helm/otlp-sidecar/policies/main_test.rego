package otlp_sidecar.main_test

import rego.v1

import data.otlp_sidecar.main

main_request(signal) := {
	"signal": signal,
	"resource": {"service.name": "api"},
	"pod": {
		"name": "api-0", "namespace": "shop", "service_account": "api",
		"tenant": "acme", "labels": {}, "annotations": {},
	},
	"peer": {"address": "", "tls": false, "spiffe_id": ""},
	"transport": "grpc",
}

test_traces_get_every_part if {
	parts := object.keys(main.decisions_for(main_request("traces")))
	{"otlp_sidecar.pci", "otlp_sidecar.tenant", "otlp_sidecar.sampling", "otlp_sidecar.k8s"} - parts == set()
}

test_logs_are_not_sampled if {
	parts := object.keys(main.decisions_for(main_request("logs")))
	{"otlp_sidecar.pci", "otlp_sidecar.tenant", "otlp_sidecar.k8s"} - parts == set()
	not "otlp_sidecar.sampling" in parts
}

test_spoofed_tenant_refuses_the_resource if {
	attribute := data.otlp_sidecar.config.tenant.attribute
	req := object.union(main_request("traces"), {"resource": {attribute: "globex"}})
	decision := main.decisions_for(req) with data.otlp_sidecar.config.tenant.on_conflict as "reject"
	decision["otlp_sidecar.tenant"].allow == false
}

test_exemptions_of_the_data_are_listed if {
	main.exemptions == object.get(data.otlp_sidecar.config, "exemptions", [])
}

test_exemptions_come_from_the_data if {
	exemption := {"rule_id": "qa.cards", "key": "qa.sample_value", "reason": "published test numbers"}
	main.exemptions == [exemption] with data.otlp_sidecar.config.exemptions as [exemption]
}
