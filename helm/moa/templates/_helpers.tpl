{{/* Names and labels shared by every template. */}}
{{- define "moa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "moa.fullname" -}}
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

{{- define "moa.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "moa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "moa.hostSelector" -}}
app.kubernetes.io/name: {{ include "moa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: host
{{- end -}}

{{- define "moa.modelSelector" -}}
app.kubernetes.io/name: {{ include "moa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: model-runtime
{{- end -}}

{{- define "moa.serviceAccountName" -}}
{{- if .Values.host.serviceAccount.create -}}
{{- default (include "moa.fullname" .) .Values.host.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.host.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "moa.hostImage" -}}
{{- printf "%s:%s" .Values.host.image.repository (default .Chart.AppVersion .Values.host.image.tag) -}}
{{- end -}}

{{- define "moa.modelImage" -}}
{{- printf "%s:%s" .Values.modelRuntime.image.repository (default .Chart.AppVersion .Values.modelRuntime.image.tag) -}}
{{- end -}}

{{/* The model runtime's gRPC address, for the host's runtime config. */}}
{{- define "moa.modelEndpoint" -}}
{{- printf "dns:///%s-model-runtime-headless:50051" (include "moa.fullname" .) -}}
{{- end -}}

{{/* The host pod template (a Rollout's or a Deployment's). */}}
{{- define "moa.hostPodTemplate" -}}
metadata:
  labels:
    {{- include "moa.labels" . | nindent 4 }}
    app.kubernetes.io/component: host
  annotations:
    checksum/runtime-config: {{ include (print $.Template.BasePath "/host-configmap.yaml") . | sha256sum }}
spec:
  serviceAccountName: {{ include "moa.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.host.serviceAccount.create }}
  terminationGracePeriodSeconds: {{ .Values.host.terminationGracePeriodSeconds }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    fsGroup: 10001
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: moa
      image: {{ include "moa.hostImage" . }}
      imagePullPolicy: {{ .Values.host.image.pullPolicy }}
      args:
        - up
        - --from-registry
        - {{ required "app.reference is required: the app pushed with `moa registry push`" .Values.app.reference | quote }}
        - --runtime-config-file
        - /etc/moa/runtime-config.toml
        - --drain-timeout
        - {{ .Values.host.drainTimeoutSeconds | quote }}
      env:
        - name: MOA_LISTEN
          value: 0.0.0.0:3000
        - name: MOA_ADMIN_LISTEN
          value: 0.0.0.0:9090
        - name: MOA_STATE_DIR
          value: /var/lib/moa/state
        - name: MOA_REGISTRY_CACHE
          value: /var/lib/moa/registry
        - name: MOA_CACHE_DIR
          value: /var/lib/moa/components
        {{- if .Values.app.insecureRegistry }}
        - name: MOA_REGISTRY_INSECURE
          value: "true"
        {{- end }}
        {{- with .Values.app.registryCredentialsSecret }}
        - name: MOA_REGISTRY_USERNAME
          valueFrom:
            secretKeyRef: {name: {{ . }}, key: username}
        - name: MOA_REGISTRY_PASSWORD
          valueFrom:
            secretKeyRef: {name: {{ . }}, key: password}
        {{- end }}
        {{- range .Values.host.secretEnv }}
        - name: {{ .name }}
          valueFrom:
            secretKeyRef: {name: {{ .secretName }}, key: {{ .key }}}
        {{- end }}
        {{- range .Values.host.env }}
        - name: {{ .name }}
          value: {{ .value | quote }}
        {{- end }}
      ports:
        - {name: http, containerPort: 3000, protocol: TCP}
        - {name: admin, containerPort: 9090, protocol: TCP}
      startupProbe:
        httpGet: {path: /healthz, port: admin}
        periodSeconds: 2
        failureThreshold: 90
      livenessProbe:
        httpGet: {path: /healthz, port: admin}
        periodSeconds: 10
        failureThreshold: 3
      readinessProbe:
        httpGet: {path: /readyz, port: admin}
        periodSeconds: 5
        failureThreshold: 2
      resources:
        {{- toYaml .Values.host.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: [ALL]
      volumeMounts:
        - {name: runtime-config, mountPath: /etc/moa, readOnly: true}
        - {name: scratch, mountPath: /var/lib/moa}
  volumes:
    - name: runtime-config
      configMap:
        name: {{ include "moa.fullname" . }}-runtime-config
    - name: scratch
      emptyDir:
        sizeLimit: {{ .Values.host.scratchSizeLimit }}
  {{- with .Values.host.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.host.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.host.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "moa.hostSelector" . | nindent 10 }}
{{- end -}}
