{{- define "silica.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "silica.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "silica.labels" -}}
app.kubernetes.io/name: {{ include "silica.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "silica.selector" -}}
app.kubernetes.io/name: {{ include "silica.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The name clients use, and vllm:* series carry as model_name. */}}
{{- define "silica.modelName" -}}
{{- if .Values.model.servedModelName -}}
{{- .Values.model.servedModelName -}}
{{- else if .Values.model.path -}}
{{- base .Values.model.path | trimSuffix ".gguf" -}}
{{- else -}}
{{- .Values.model.preset -}}
{{- end -}}
{{- end -}}

{{- define "silica.neffClaim" -}}
{{- .Values.neffCache.existingClaim | default (printf "%s-neff-cache" (include "silica.fullname" .)) -}}
{{- end -}}
