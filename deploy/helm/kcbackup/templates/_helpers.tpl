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

{{/* The namespaces the operator watches, as a JSON list; empty for all. */}}
{{- define "kcbackup.watchNamespaces" -}}
{{- $seen := list }}
{{- range .Values.watchNamespaces }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) }}
{{- fail (printf "watchNamespaces: %q is not a namespace name" .) }}
{{- end }}
{{- $seen = append $seen . | uniq }}
{{- end }}
{{- toJson $seen }}
{{- end }}

{{/* The operator's permissions (deploy/rbac/role.yaml, generated from the
+kubebuilder:rbac markers); deploy/helm/chart_test.go fails when the two differ. */}}
{{- define "kcbackup.operatorRules" -}}
- apiGroups:
  - ""
  resources:
  - pods
  verbs:
  - create
  - get
  - list
  - watch
- apiGroups:
  - ""
  resources:
  - secrets
  verbs:
  - create
  - delete
  - get
  - update
- apiGroups:
  - apps
  resources:
  - deployments
  - statefulsets
  verbs:
  - get
  - list
  - patch
  - watch
- apiGroups:
  - apps
  resources:
  - deployments/scale
  - statefulsets/scale
  verbs:
  - get
  - update
- apiGroups:
  - ""
  resources:
  - configmaps
  - namespaces
  verbs:
  - get
- apiGroups:
  - apps
  resources:
  - statefulsets
  verbs:
  - create
  - delete
- apiGroups:
  - ""
  resources:
  - persistentvolumeclaims
  - services
  verbs:
  - create
  - delete
  - get
- apiGroups:
  - batch
  resources:
  - jobs
  verbs:
  - create
  - delete
  - get
  - list
  - watch
- apiGroups:
  - events.k8s.io
  resources:
  - events
  verbs:
  - create
  - patch
- apiGroups:
  - k8s.keycloak.org
  resources:
  - keycloaks
  verbs:
  - get
- apiGroups:
  - k8s.keycloak.org
  resources:
  - keycloaks/scale
  verbs:
  - get
  - update
- apiGroups:
  - keycloak.org
  resources:
  - keycloakbackups
  verbs:
  - create
  - delete
  - get
  - list
  - patch
  - watch
- apiGroups:
  - keycloak.org
  resources:
  - keycloakbackups/finalizers
  verbs:
  - update
- apiGroups:
  - keycloak.org
  resources:
  - keycloakbackups/status
  verbs:
  - get
  - patch
{{- end }}
