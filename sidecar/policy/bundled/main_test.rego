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
	{"otlp_sidecar.pci", "otlp_sidecar.tenant", "otlp_sidecar.sampling"} - parts == set()
}

test_logs_are_not_sampled if {
	parts := object.keys(main.decisions_for(main_request("logs")))
	{"otlp_sidecar.pci", "otlp_sidecar.tenant"} - parts == set()
	not "otlp_sidecar.sampling" in parts
}

test_spoofed_tenant_refuses_the_resource if {
	req := object.union(main_request("traces"), {"resource": {"tenant.id": "globex"}})
	main.decisions_for(req)["otlp_sidecar.tenant"].allow == false
}
