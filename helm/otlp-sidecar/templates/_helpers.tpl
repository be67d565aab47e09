{{/* Names, labels and shared fragments of the otlp-sidecar chart. */}}

{{- define "otlp-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "otlp-sidecar.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The webhook's objects: <fullname>-webhook (at most 63 characters). */}}
{{- define "otlp-sidecar.webhookName" -}}
{{- printf "%s-webhook" (include "otlp-sidecar.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{- define "otlp-sidecar.policiesName" -}}
{{- printf "%s-policies" (include "otlp-sidecar.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{/* The hash key Secret the chart makes when hashKey.secretName is empty. */}}
{{- define "otlp-sidecar.generatedHashKeyName" -}}
{{- printf "%s-hash-key" (include "otlp-sidecar.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{/* The hash key Secret the sidecars mount: the user's, or the one the chart makes. */}}
{{- define "otlp-sidecar.hashKeyName" -}}
{{- default (include "otlp-sidecar.generatedHashKeyName" .) .Values.hashKey.secretName -}}
{{- end -}}

{{/* Namespaces that get the policies ConfigMap and the generated hash key Secret. */}}
{{- define "otlp-sidecar.injectedNamespaces" -}}
{{- toJson (concat (list .Release.Namespace) .Values.policies.namespaces | uniq) -}}
{{- end -}}

{{/* The policy set a pod gets without the otlp-sidecar.io/policy annotation ("" for none). */}}
{{- define "otlp-sidecar.defaultSet" -}}
{{- if .Values.policies.defaultSet -}}
{{- .Values.policies.defaultSet -}}
{{- else if .Values.policies.enabled -}}
default
{{- end -}}
{{- end -}}

{{- define "otlp-sidecar.tlsSecretName" -}}
{{- printf "%s-tls" (include "otlp-sidecar.webhookName" . | trunc 59 | trimSuffix "-") -}}
{{- end -}}

{{- define "otlp-sidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "otlp-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "otlp-sidecar.webhookSelectorLabels" -}}
app.kubernetes.io/name: {{ include "otlp-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "otlp-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "otlp-sidecar.sidecarImage" -}}
{{- default (include "otlp-sidecar.image" .) .Values.sidecar.image -}}
{{- end -}}

{{/* A TOML inline table of strings from a map (keys sorted, JSON-quoted). */}}
{{- define "otlp-sidecar.tomlTable" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s = %s" (toJson (toString $key)) (toJson (toString $value))) -}}
{{- end -}}
{{- printf "{ %s }" (join ", " $pairs) -}}
{{- end -}}

{{/* The policy files shipped in the chart: ConfigMap key -> relative path. */}}
{{- define "otlp-sidecar.policyItems" -}}
{{- $items := dict -}}
{{- range $path, $_ := .Files.Glob "policies/**" -}}
{{- $relative := trimPrefix "policies/" $path -}}
{{- $_ := set $items (replace "/" "__" $relative) $relative -}}
{{- end -}}
{{- if .Values.bundles.localRoots -}}
{{- $_ := set $items ".manifest" ".manifest" -}}
{{- end -}}
{{- toJson $items -}}
{{- end -}}

{{/* data.json with the chart's values (sampling ratio, tenant label) written in. */}}
{{- define "otlp-sidecar.policyData" -}}
{{- $data := .Files.Get "policies/data.json" | fromJson -}}
{{- $config := dig "otlp_sidecar" "config" dict $data -}}
{{- if hasKey $config "sampling" -}}
{{- $_ := set $config.sampling "ratio" (float64 .Values.sampling.ratio) -}}
{{- end -}}
{{- if hasKey $config "tenant" -}}
{{- $_ := set $config.tenant "label" .Values.tenant.label -}}
{{- $_ := set $config.tenant "annotation" .Values.tenant.annotation -}}
{{- end -}}
{{- toPrettyJson $data -}}
{{- end -}}

{{/*
The existing webhook TLS Secret's data, or an empty dict. `lookup` reads the cluster at
install/upgrade time (and is empty under `helm template`), so an upgrade reuses the CA.
*/}}
{{- define "otlp-sidecar.existingTLS" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "otlp-sidecar.tlsSecretName" .) -}}
{{- toJson (dig "data" dict ($secret | default dict)) -}}
{{- end -}}
