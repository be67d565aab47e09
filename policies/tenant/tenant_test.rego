package otlp_sidecar.tenant_test

import rego.v1

import data.otlp_sidecar.tenant

# The policies are functions of the request: regopy cannot run `with input as`
# on rules that refer to other rules, so the tests call the functions directly.
# They hold for any valid data.json (the chart writes its values there): the
# attribute, label and annotation come from the data; behaviour that depends on a
# setting pins it with `with`.
settings := data.otlp_sidecar.config.tenant

tenant_request(resource, pod_tenant) := {
	"signal": "traces",
	"resource": resource,
	"pod": {
		"name": "api-0", "namespace": "shop", "service_account": "api",
		"tenant": pod_tenant, "labels": {}, "annotations": {},
	},
	"peer": {"address": "127.0.0.1:5000", "tls": false, "spiffe_id": ""},
	"transport": "http",
}

claiming(tenant_id) := {settings.attribute: tenant_id}

with_peer(req, tls, spiffe_id) := object.union(req, {"peer": {"address": "10.0.0.7:5000", "tls": tls, "spiffe_id": spiffe_id}})

gateway := "spiffe://cluster.local/ns/pay/sa/gw"

test_tenant_is_stamped_from_the_pod if {
	decision := tenant.decision_for(tenant_request({"service.name": "api"}, "acme"))
		with data.otlp_sidecar.config.tenant.require_tenant as false
	decision.stamps == [{"rule_id": "tenant.stamp", "key": settings.attribute, "value": "acme", "on_conflict": tenant.on_conflict}]
	object.get(decision, "allow", true) == true
}

test_matching_claim_is_accepted if {
	decision := tenant.decision_for(tenant_request(claiming("acme"), "acme"))
	object.get(decision, "allow", true) == true
}

test_spoofed_tenant_is_rejected if {
	decision := tenant.decision_for(tenant_request(claiming("globex"), "acme"))
		with data.otlp_sidecar.config.tenant.on_conflict as "reject"
	decision.allow == false
	decision.rule_id == "tenant.spoofed"
	contains(decision.reason, "globex")
}

test_spoofed_tenant_is_overwritten_when_configured if {
	decision := tenant.decision_for(tenant_request(claiming("globex"), "acme"))
		with data.otlp_sidecar.config.tenant.on_conflict as "overwrite"
	object.get(decision, "allow", true) == true
	decision.stamps == [{"rule_id": "tenant.stamp", "key": settings.attribute, "value": "acme", "on_conflict": "overwrite"}]
}

test_mtls_identity_wins_over_the_pod if {
	req := with_peer(tenant_request({}, "acme"), true, gateway)
	tenant.tenant_of(req) == "payments" with data.otlp_sidecar.config.tenant.spiffe_tenants as {gateway: "payments"}
}

test_unverified_peer_identity_is_ignored if {
	req := with_peer(tenant_request({}, "acme"), false, gateway)
	tenant.tenant_of(req) == "acme" with data.otlp_sidecar.config.tenant.spiffe_tenants as {gateway: "payments"}
}

test_tenant_from_the_pod_label_of_the_data if {
	req := object.union(tenant_request({}, ""), {"pod": {"labels": {settings.label: "initech"}}})
	tenant.tenant_of(req) == "initech"
}

test_tenant_from_the_pod_annotation_of_the_data if {
	req := object.union(tenant_request({}, ""), {"pod": {"annotations": {settings.annotation: "hooli"}}})
	tenant.tenant_of(req) == "hooli"
}

test_any_label_name_is_read if {
	req := object.union(tenant_request({}, ""), {"pod": {"labels": {"example.com/team": "initech"}}})
	tenant.tenant_of(req) == "initech" with data.otlp_sidecar.config.tenant.label as "example.com/team"
}

test_no_tenant_no_stamp if {
	decision := tenant.decision_for(tenant_request(claiming("globex"), ""))
		with data.otlp_sidecar.config.tenant.require_tenant as false
	count(decision.stamps) == 0
	object.get(decision, "allow", true) == true
}

test_missing_tenant_is_refused_when_required if {
	decision := tenant.decision_for(tenant_request({}, "")) with data.otlp_sidecar.config.tenant.require_tenant as true
	decision.allow == false
	decision.rule_id == "tenant.missing"
}

test_egress_header_and_no_rate_limit_by_default if {
	settings := tenant.pod_settings_for(tenant_request({}, "acme")) with data.otlp_sidecar.config.tenant.rate_limits as {}
		with data.otlp_sidecar.config.tenant.default_rate_limit as null
		with data.otlp_sidecar.config.tenant.egress_header as "X-Scope-OrgID"
	settings.export_headers == {"X-Scope-OrgID": "acme"}
	settings.rate_limit == null
}

test_egress_header_named_in_the_data if {
	headers := tenant.pod_settings_for(tenant_request({}, "acme")).export_headers
	headers == {name: "acme" | name := settings.egress_header; name != ""}
}

test_default_rate_limit_from_data if {
	limit := {"spans_per_second": 20000, "burst": 40000}
	settings := tenant.pod_settings_for(tenant_request({}, "acme")) with data.otlp_sidecar.config.tenant.rate_limits as {}
		with data.otlp_sidecar.config.tenant.default_rate_limit as limit
	settings.rate_limit == limit
}

test_rate_limit_per_tenant if {
	limits := {"acme": {"spans_per_second": 10, "burst": 20}}
	settings := tenant.pod_settings_for(tenant_request({}, "acme")) with data.otlp_sidecar.config.tenant.rate_limits as limits
	settings.rate_limit == {"spans_per_second": 10, "burst": 20}
}

test_no_egress_header_without_a_tenant if {
	tenant.pod_settings_for(tenant_request({}, "")).export_headers == {}
}
