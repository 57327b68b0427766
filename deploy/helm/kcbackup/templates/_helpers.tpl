{{/* Labels of every object: the operator's name (the ServiceMonitor and the Service select on it) and Helm's. */}}
{{- define "kcbackup.labels" -}}
app.kubernetes.io/name: kcbackup-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "kcbackup.monitoringLabels" -}}
app.kubernetes.io/name: kcbackup
app.kubernetes.io/component: monitoring
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kcbackup.serviceAccountName" -}}
{{- default "kcbackup-operator" .Values.serviceAccount.name }}
{{- end }}

{{- define "kcbackup.operatorImage" -}}
{{- printf "%s:%s" .Values.image.operator.repository (default .Chart.AppVersion .Values.image.operator.tag) }}
{{- end }}

{{- define "kcbackup.sidecarImage" -}}
{{- printf "%s:%s" .Values.image.sidecar.repository (default .Chart.AppVersion .Values.image.sidecar.tag) }}
{{- end }}

{{/* The one namespace the operator watches, or "" for all; more than one is refused. */}}
{{- define "kcbackup.watchNamespace" -}}
{{- if gt (len .Values.watchNamespaces) 1 }}
{{- fail (printf "watchNamespaces lists %d namespaces (%s): the operator watches one namespace or all (an empty list)" (len .Values.watchNamespaces) (join ", " .Values.watchNamespaces)) }}
{{- end }}
{{- first .Values.watchNamespaces | default "" }}
{{- end }}
