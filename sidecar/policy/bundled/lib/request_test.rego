package otlp_sidecar.lib.request_test

import rego.v1

import data.otlp_sidecar.lib.request

test_service_name_of_the_resource if {
	request.service_name({"resource": {"service.name": "checkout"}}) == "checkout"
}

test_no_service_name if {
	request.service_name({"resource": {}}) == ""
}

test_verified_peer_needs_tls if {
	request.verified_peer({"peer": {"tls": true}})
	not request.verified_peer({"peer": {"tls": false}})
}
