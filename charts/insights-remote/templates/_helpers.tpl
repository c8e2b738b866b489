{{- define "insights-remote.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "insights-remote.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "insights-remote.selectorLabels" -}}
app.kubernetes.io/name: {{ include "insights-remote.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "insights-remote.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "insights-remote.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "insights-remote.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "insights-remote.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* lagoon-remote's rule: the global value when set, else ours. */}}
{{- define "insights-remote.rabbitMQHostname" -}}
{{- coalesce .Values.global.rabbitMQHostname .Values.rabbitMQHostname }}
{{- end }}

{{- define "insights-remote.tlsEnabled" -}}
{{- if or .Values.global.broker.tls.enabled .Values.broker.tls.enabled }}true{{ end }}
{{- end }}

{{- define "insights-remote.caEnabled" -}}
{{- if or .Values.global.broker.tlsCA.enabled .Values.broker.tlsCA.enabled }}true{{ end }}
{{- end }}

{{- define "insights-remote.caSecretName" -}}
{{- coalesce .Values.global.broker.tlsCA.secretName .Values.broker.tlsCA.secretName }}
{{- end }}

{{/* "false" only when both say false, as lagoon-remote renders it. */}}
{{- define "insights-remote.verifyPeer" -}}
{{- if or .Values.global.broker.tls.verifyPeer .Values.broker.tls.verifyPeer }}true{{ else }}false{{ end }}
{{- end }}

{{/* A Role or ClusterRole from files/ (config/ is the source) under this release's name. */}}
{{- define "insights-remote.fromFile" -}}
{{- $obj := .root.Files.Get .file | fromYaml }}
{{- $_ := set $obj "metadata" (dict "name" .name "labels" (include "insights-remote.labels" .root | fromYaml)) }}
{{- if .namespace }}{{ $_ := set $obj.metadata "namespace" .namespace }}{{ end }}
{{- toYaml $obj }}
{{- end }}

{{- define "insights-remote.extraEnvList" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}{{ $pairs = append $pairs (printf "%s=%s" $k $v) }}{{ end }}
{{- join "," $pairs }}
{{- end }}
