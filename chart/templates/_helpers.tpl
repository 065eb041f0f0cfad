{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "nimbus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: "<release>-<chart>", or the release name when it already contains
the chart name. Truncated to 45 so that names with suffixes fit 63 characters (-mta-headless,
and the StatefulSet's controller-revision-hash label, which adds 11 to "<fullname>-mta").
*/}}
{{- define "nimbus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "nimbus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels of every object.
*/}}
{{- define "nimbus.labels" -}}
helm.sh/chart: {{ include "nimbus.chart" . }}
{{ include "nimbus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nimbus
{{- end }}

{{/*
Selector labels (immutable in a StatefulSet/Deployment selector); each workload adds
app.kubernetes.io/component.
*/}}
{{- define "nimbus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nimbus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "nimbus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nimbus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Nimbus image reference.
*/}}
{{- define "nimbus.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Object names of the parts.
*/}}
{{- define "nimbus.mta.fullname" -}}
{{- printf "%s-mta" (include "nimbus.fullname" .) }}
{{- end }}
{{- define "nimbus.tsa.fullname" -}}
{{- printf "%s-tsa" (include "nimbus.fullname" .) }}
{{- end }}
{{- define "nimbus.redis.fullname" -}}
{{- printf "%s-redis" (include "nimbus.fullname" .) }}
{{- end }}
{{- define "nimbus.sink.fullname" -}}
{{- printf "%s-sink" (include "nimbus.fullname" .) }}
{{- end }}
{{- define "nimbus.mta.headless" -}}
{{- printf "%s-headless" (include "nimbus.mta.fullname" .) }}
{{- end }}
{{- define "nimbus.policy.fullname" -}}
{{- printf "%s-policy" (include "nimbus.fullname" .) }}
{{- end }}

{{/*
Secret of the HTTP basic-auth users: the existing one, or the chart's.
*/}}
{{- define "nimbus.auth.secretName" -}}
{{- default (printf "%s-http-auth" (include "nimbus.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/*
Secret of the DKIM keys: the existing one, or the chart's.
*/}}
{{- define "nimbus.dkim.secretName" -}}
{{- default (printf "%s-dkim" (include "nimbus.fullname" .)) .Values.dkim.existingSecret }}
{{- end }}

{{/*
Secret of the cluster secret (key "secret"): the existing one, or the chart's.
*/}}
{{- define "nimbus.cluster.secretName" -}}
{{- default (printf "%s-cluster" (include "nimbus.fullname" .)) .Values.mta.xfer.existingSecret }}
{{- end }}

{{/*
Whether DKIM keys are mounted at all.
*/}}
{{- define "nimbus.dkim.enabled" -}}
{{- if or .Values.dkim.existingSecret .Values.dkim.keys }}true{{ end }}
{{- end }}

{{/*
The policy directory's files: the chart's copy of the bundled policy, overridden and
extended per file by .Values.policy.files. Returns YAML (a name -> content map).
*/}}
{{- define "nimbus.policy.files" -}}
{{- $files := dict }}
{{- range $path, $_ := .Files.Glob "files/policy/*" }}
{{- $_ := set $files (base $path) ($.Files.Get $path) }}
{{- end }}
{{- range $name, $content := .Values.policy.files }}
{{- if $content }}
{{- $_ := set $files $name $content }}
{{- end }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/*
NIMBUS_REDIS_URL as an env entry: the bundled Redis, an existing Secret, or a literal URL.
*/}}
{{- define "nimbus.redisUrlEnv" -}}
- name: NIMBUS_REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s:%d/0" (include "nimbus.redis.fullname" .) (int .Values.redis.port) | quote }}
{{- else if .Values.redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else }}
  value: {{ required "redis.url (or redis.existingSecret) is required when redis.enabled is false" .Values.redis.url | quote }}
{{- end }}
{{- end }}

{{/*
How the MTA StatefulSet is scaled: "off", "hpa" or "keda". An empty mta.autoscaling.mode
follows mta.autoscaling.enabled (true: hpa), the switch before mode existed.
*/}}
{{- define "nimbus.mta.autoscalingMode" -}}
{{- $autoscaling := .Values.mta.autoscaling }}
{{- if $autoscaling.mode }}
{{- $autoscaling.mode }}
{{- else if $autoscaling.enabled }}
{{- "hpa" }}
{{- else }}
{{- "off" }}
{{- end }}
{{- end }}

{{/*
Number of MTA nodes sharing the limits (NIMBUS_CLUSTER_NODES): the most an autoscaler runs.
*/}}
{{- define "nimbus.mta.nodes" -}}
{{- if ne (include "nimbus.mta.autoscalingMode" .) "off" }}
{{- .Values.mta.autoscaling.maxReplicas | int }}
{{- else }}
{{- .Values.mta.replicas | int }}
{{- end }}
{{- end }}
