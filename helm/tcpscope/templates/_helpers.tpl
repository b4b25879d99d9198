{{/* Names and labels shared by every template. */}}
{{- define "tcpscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tcpscope.fullname" -}}
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

{{- define "tcpscope.agent.fullname" -}}
{{- printf "%s-agent" (include "tcpscope.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tcpscope.collector.fullname" -}}
{{- printf "%s-collector" (include "tcpscope.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tcpscope.labels" -}}
app.kubernetes.io/name: {{ include "tcpscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "tcpscope.extraLabels" . }}
{{- end -}}

{{/* Labels beyond the selector ones (pod templates add these to the selector labels). */}}
{{- define "tcpscope.extraLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tcpscope
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "agent"). */}}
{{- define "tcpscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tcpscope.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tcpscope.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (include "tcpscope.agent.fullname" .) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tcpscope.collector.serviceAccountName" -}}
{{- if .Values.collector.serviceAccount.create -}}
{{- default (include "tcpscope.collector.fullname" .) .Values.collector.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.collector.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tcpscope.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The collector's in-cluster gRPC address. */}}
{{- define "tcpscope.collector.address" -}}
{{- printf "%s.%s.svc:%d" (include "tcpscope.collector.fullname" .) .Release.Namespace (int .Values.collector.port) -}}
{{- end -}}

{{/* The agent's effective stdout mode: json, table or "" (off). */}}
{{- define "tcpscope.agent.stdout" -}}
{{- $m := .Values.agent.stdout -}}
{{- if eq $m "auto" -}}
{{- if .Values.collector.enabled }}{{ else }}json{{ end -}}
{{- else if ne $m "off" -}}
{{- $m -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the connection id key: the user's (agent.connectionKey.existingSecret), else
the chart's own. */}}
{{- define "tcpscope.agent.connectionKeySecret" -}}
{{- .Values.agent.connectionKey.existingSecret | default (printf "%s-connection-key" (include "tcpscope.fullname" .) | trunc 63 | trimSuffix "-") -}}
{{- end -}}

{{/* The chart's connection id key, base64: the one in `existing` (what `lookup` found of the Secret
on the cluster), so an upgrade keeps every agent's key, else a new random one (an install, or an
offline render, which cannot look it up). */}}
{{- define "tcpscope.agent.connectionKeyData" -}}
{{- $data := (.existing | default dict).data | default dict -}}
{{- index $data "key" | default (randAlphaNum 48 | b64enc) -}}
{{- end -}}
