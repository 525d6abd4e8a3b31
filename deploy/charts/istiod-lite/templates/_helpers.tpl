{{/* Labels on every object of the chart. */}}
{{- define "istiod-lite.labels" -}}
app: istiod
istio: pilot
app.kubernetes.io/name: istiod
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ambit
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/* The namespace of mesh-wide policies. */}}
{{- define "istiod-lite.rootNamespace" -}}
{{- .Values.rootNamespace | default .Release.Namespace -}}
{{- end -}}
