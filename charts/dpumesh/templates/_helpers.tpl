{{/* Chart name and common labels. */}}
{{- define "dpumesh.name" -}}dpumesh{{- end -}}

{{- define "dpumesh.fullname" -}}
{{- if contains "dpumesh" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-dpumesh" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dpumesh.labels" -}}
app.kubernetes.io/name: dpumesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dpumesh.selector" -}}
app.kubernetes.io/name: dpumesh
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dpumesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Address (no port) where the host side reaches dataplane and dpu-proxy. */}}
{{- define "dpumesh.mgmtAddr" -}}
{{- if eq .Values.mode "dpu" -}}{{ .Values.dpu.mgmtAddr }}{{- else -}}127.0.0.1{{- end -}}
{{- end -}}

{{- define "dpumesh.checkMode" -}}
{{- if not (has .Values.mode (list "dpu" "host")) -}}
{{- fail (printf "mode must be dpu or host, not %q" .Values.mode) -}}
{{- end -}}
{{- end -}}

{{/* The dataplane and dpu-proxy containers, shared by dpu and host mode. */}}
{{- define "dpumesh.dpuContainers" -}}
- name: dataplane
  image: {{ include "dpumesh.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["dpumesh-dataplane"]
  args:
    - --backend={{ .Values.dataplane.backend }}
    - --uplink={{ .Values.dataplane.uplink }}
    - --bpf-pin-root={{ .Values.dataplane.bpfPinRoot }}
    - --node=$(NODE_NAME)
    - --node-id=$(NODE_NAME)
    - --mgmt-addr={{ include "dpumesh.mgmtAddr" . }}:{{ .Values.dataplane.controlPort }}
    - --admin-addr=0.0.0.0:{{ .Values.dataplane.adminPort }}
    - --log-level={{ .Values.logLevel }}
  env:
    - name: NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
  ports:
    - {name: dp-admin, containerPort: {{ .Values.dataplane.adminPort }}, protocol: TCP}
    - {name: dp-control, containerPort: {{ .Values.dataplane.controlPort }}, protocol: TCP}
  readinessProbe:
    httpGet: {path: /ready, port: {{ .Values.dataplane.adminPort }}}
    periodSeconds: 5
  securityContext:
    privileged: true
  resources: {{- toYaml .Values.dataplane.resources | nindent 4 }}
  volumeMounts:
    - {name: bpffs, mountPath: {{ .Values.dataplane.bpfPinRoot }}, mountPropagation: Bidirectional}
    - {name: run-dpumesh, mountPath: /run/dpumesh}
- name: dpu-proxy
  image: {{ include "dpumesh.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["dpu-proxy"]
  args:
    - --node=$(NODE_NAME)
    - --mgmt-addr={{ include "dpumesh.mgmtAddr" . }}:{{ .Values.proxy.controlPort }}
    - --admin-addr=0.0.0.0:{{ .Values.proxy.adminPort }}
    - --access-log={{ .Values.proxy.accessLog }}
    - --drain-seconds={{ .Values.proxy.drainSeconds }}
    - --log-level={{ .Values.logLevel }}
    - --trust-domain={{ .Values.cluster.trustDomain }}
    - --workload-cert-ttl-seconds={{ .Values.identity.workloadCertTtlSeconds }}
    {{- if eq .Values.identity.ca "istiod" }}
    - --ca-addr={{ .Values.identity.caAddr }}
    - --ca-cluster-id={{ .Values.identity.caClusterId }}
    - --ca-token-file=/var/run/secrets/tokens/istio-token
    - --ca-trust-root-pem=/var/run/secrets/istio/root-cert.pem
    {{- else }}
    - --ca-root-file=/run/dpumesh/ca/root.pem
    {{- end }}
  env:
    - name: NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
  ports:
    - {name: proxy-admin, containerPort: {{ .Values.proxy.adminPort }}, protocol: TCP}
    - {name: proxy-control, containerPort: {{ .Values.proxy.controlPort }}, protocol: TCP}
    - {name: outbound, containerPort: 15001, protocol: TCP}
    - {name: inbound, containerPort: 15006, protocol: TCP}
  readinessProbe:
    httpGet: {path: /ready, port: {{ .Values.proxy.adminPort }}}
    periodSeconds: 5
  securityContext:
    capabilities:
      add: [NET_ADMIN, NET_RAW, NET_BIND_SERVICE]
  resources: {{- toYaml .Values.proxy.resources | nindent 4 }}
  volumeMounts:
    {{- if eq .Values.identity.ca "istiod" }}
    - {name: istio-token, mountPath: /var/run/secrets/tokens, readOnly: true}
    - {name: istio-ca-root, mountPath: /var/run/secrets/istio, readOnly: true}
    {{- else }}
    - {name: run-dpumesh, mountPath: /run/dpumesh}
    {{- end }}
{{- end -}}

{{- define "dpumesh.dpuVolumes" -}}
- name: bpffs
  hostPath: {path: {{ .Values.dataplane.bpfPinRoot }}, type: DirectoryOrCreate}
- name: run-dpumesh
  hostPath: {path: /run/dpumesh, type: DirectoryOrCreate}
{{- if eq .Values.identity.ca "istiod" }}
- name: istio-token
  projected:
    sources:
      - serviceAccountToken:
          path: istio-token
          audience: {{ .Values.identity.tokenAudience }}
          expirationSeconds: {{ .Values.identity.tokenExpirationSeconds }}
- name: istio-ca-root
  configMap: {name: {{ .Values.identity.rootCertConfigMap }}}
{{- end }}
{{- end -}}

{{- define "dpumesh.metricsAnnotations" -}}
{{- if .Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.proxy.adminPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
