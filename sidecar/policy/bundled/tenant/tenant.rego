# METADATA
# title: Tenant isolation - the tenant comes from identity, never from the app
# description: |
#   The tenant is the verified mTLS identity of the sender (a SPIFFE ID mapped in
#   policy data), else the pod's identity set by the injector (`pod.tenant`, from
#   the namespace, a label or an annotation), else the pod label or annotation
#   named in policy data. The resource's tenant attribute (`tenant.id`) is stamped
#   with it; a resource that claims another tenant is rejected, or overwritten when
#   `on_conflict` is `overwrite`. Rate limits and the egress header
#   (`X-Scope-OrgID`) per tenant come from policy data.
#   Tunables: `data.otlp_sidecar.config.tenant`.
package otlp_sidecar.tenant

import rego.v1

import data.otlp_sidecar.lib.request as lib

settings := data.otlp_sidecar.config.tenant

default on_conflict := "reject"

on_conflict := settings.on_conflict if settings.on_conflict in {"reject", "overwrite"}

# METADATA
# title: The tenant of a verified mTLS client, by its SPIFFE ID
mtls_tenant(request) := settings.spiffe_tenants[request.peer.spiffe_id] if lib.verified_peer(request)

# METADATA
# title: The tenant, from the strongest identity available
tenant_of(request) := mtls_tenant(request) if {
	mtls_tenant(request) != ""
} else := request.pod.tenant if {
	request.pod.tenant != ""
} else := request.pod.labels[settings.label] if {
	request.pod.labels[settings.label] != ""
} else := request.pod.annotations[settings.annotation] if {
	request.pod.annotations[settings.annotation] != ""
} else := ""

refusals(request) := array.concat(spoofed(request), missing(request))

spoofed(request) := [refusal |
	tenant := tenant_of(request)
	tenant != ""
	claimed := request.resource[settings.attribute]
	claimed != tenant
	on_conflict == "reject"
	refusal := {
		"rule_id": "tenant.spoofed",
		"reason": sprintf("the resource claims tenant %v, the pod's tenant is %v", [claimed, tenant]),
	}
]

missing(request) := [refusal |
	tenant_of(request) == ""
	settings.require_tenant == true
	refusal := {"rule_id": "tenant.missing", "reason": "no tenant identity for this pod or peer"}
]

stamps(request) := [stamp |
	tenant := tenant_of(request)
	tenant != ""
	stamp := {"rule_id": "tenant.stamp", "key": settings.attribute, "value": tenant, "on_conflict": on_conflict}
]

# METADATA
# title: The tenant part of the decision for one request (every signal)
decision_for(request) := {"stamps": stamps(request)} if {
	count(refusals(request)) == 0
}

decision_for(request) := {
	"allow": false,
	"rule_id": first.rule_id,
	"reason": first.reason,
	"stamps": stamps(request),
} if {
	found := refusals(request)
	count(found) > 0
	first := found[0]
}

export_headers(request) := {settings.egress_header: tenant |
	tenant := tenant_of(request)
	tenant != ""
	settings.egress_header != ""
}

rate_limit(request) := settings.rate_limits[tenant_of(request)] if {
	tenant_of(request) != ""
} else := object.get(settings, "default_rate_limit", null)

# METADATA
# title: Settings for the whole pod - egress headers and the rate limit of its tenant
pod_settings_for(request) := {
	"tenant": tenant_of(request),
	"export_headers": export_headers(request),
	"rate_limit": rate_limit(request),
}

decision := decision_for(input)

pod_settings := pod_settings_for(input)
