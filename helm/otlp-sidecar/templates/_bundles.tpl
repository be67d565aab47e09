{{/*
Policy bundles (docs/bundles.md). With bundles.localRoots, the policies ConfigMap is one more
bundle beside them: it gets a .manifest with those roots, and its data.json keeps only the
otlp_sidecar.config sections that lie inside them (the bundles own the others).
*/}}
{{- define "otlp-sidecar.localManifest" -}}
{{- dict "revision" (printf "chart-%s" .Chart.Version) "roots" .Values.bundles.localRoots | toJson -}}
{{- end -}}

{{- define "otlp-sidecar.localPolicyData" -}}
{{- $data := include "otlp-sidecar.policyData" . | fromJson -}}
{{- $roots := .Values.bundles.localRoots -}}
{{- $config := dig "otlp_sidecar" "config" dict $data -}}
{{- $kept := dict -}}
{{- range $section, $value := $config -}}
{{- $path := printf "otlp_sidecar/config/%s" $section -}}
{{- range $roots -}}
{{- $root := trimAll "/" . -}}
{{- if or (eq $root "") (eq $path $root) (hasPrefix (printf "%s/" $root) $path) -}}
{{- $_ := set $kept $section $value -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toPrettyJson (dict "otlp_sidecar" (dict "config" $kept)) -}}
{{- end -}}
