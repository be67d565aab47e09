# METADATA
# title: Smart sampling - keep what matters, sample the rest
# description: |
#   Spans of a trace are kept at `ratio` (10 % by default), consistently by trace
#   id. Spans with an error status, spans of VIP users and orders at or above the
#   threshold are always kept. A service can have its own ratio. Numbers may be given
#   as text (`helm --set` passes strings): they are read with to_number.
#   Tunables: `data.otlp_sidecar.config.sampling`.
package otlp_sidecar.sampling

import rego.v1

import data.otlp_sidecar.lib.request as lib

settings := data.otlp_sidecar.config.sampling

# METADATA
# title: The ratio of the resource's service, else the default
ratio(request) := to_number(settings.service_ratios[lib.service_name(request)]) if {
	settings.service_ratios[lib.service_name(request)]
} else := to_number(settings.ratio)

errors_kept := [{"rule_id": "sampling.errors", "kind": "status_error"} | settings.keep_errors == true]

vip_users_kept := [rule |
	some user in settings.vip_users
	rule := {"rule_id": "sampling.vip_user", "kind": "attr_equals", "key": settings.vip_attribute, "value": user}
]

large_orders_kept := [rule |
	settings.order_attribute != ""
	rule := {
		"rule_id": "sampling.large_order",
		"kind": "attr_at_least",
		"key": settings.order_attribute,
		"value": to_number(settings.order_threshold),
	}
]

keep := array.concat(array.concat(errors_kept, vip_users_kept), large_orders_kept)

# METADATA
# title: The sampling part of the decision for one request (traces only)
decision_for(request) := {"sampling": {"rule_id": "sampling.ratio", "ratio": ratio(request), "keep": keep}} if {
	request.signal == "traces"
}

decision := decision_for(input)
