{{/* Chart name, truncated to a DNS label. */}}
{{- define "gputel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "gputel.fullname" -}}
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

{{/* Name of one component's objects: (dict "root" $ "component" "broker"). */}}
{{- define "gputel.componentName" -}}
{{- printf "%s-%s" (include "gputel.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gputel.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "gputel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gputel
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "broker"). */}}
{{- define "gputel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gputel.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gputel.componentLabels" -}}
{{ include "gputel.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gputel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gputel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gputel.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* host:port of the broker's gRPC listener (headless Service). */}}
{{- define "gputel.brokerAddress" -}}
{{- printf "%s:%d" (include "gputel.componentName" (dict "root" . "component" "broker")) (int .Values.broker.ports.grpc) -}}
{{- end -}}

{{/* The influxdb2 subchart's fullname, computed as that chart does. */}}
{{- define "gputel.influxdb2.fullname" -}}
{{- $sub := .Values.influxdb2 -}}
{{- if $sub.fullnameOverride -}}
{{- $sub.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "influxdb2" $sub.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* InfluxDB URL: the subchart's Service, or the required external URL. */}}
{{- define "gputel.influxUrl" -}}
{{- if .Values.influxdb2.enabled -}}
{{- $port := 80 -}}
{{- if and .Values.influxdb2.service .Values.influxdb2.service.port -}}{{- $port = .Values.influxdb2.service.port -}}{{- end -}}
{{- printf "http://%s.%s.svc:%d" (include "gputel.influxdb2.fullname" .) .Release.Namespace (int $port) -}}
{{- else -}}
{{- required "influx.url is required when influxdb2.enabled=false (an external InfluxDB 2.x URL)" .Values.influx.url -}}
{{- end -}}
{{- end -}}

{{/* Secret name and key holding the InfluxDB token. */}}
{{- define "gputel.influxTokenSecretName" -}}
{{- if .Values.influx.auth.existingSecret -}}
{{- .Values.influx.auth.existingSecret -}}
{{- else if .Values.influxdb2.enabled -}}
{{- $admin := .Values.influxdb2.adminUser | default dict -}}
{{- default (printf "%s-auth" (include "gputel.influxdb2.fullname" .)) $admin.existingSecret -}}
{{- else -}}
{{- printf "%s-influx-token" (include "gputel.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "gputel.influxTokenSecretKey" -}}
{{- if .Values.influx.auth.existingSecret -}}
{{- .Values.influx.auth.existingSecretKey -}}
{{- else if .Values.influxdb2.enabled -}}
admin-token
{{- else -}}
token
{{- end -}}
{{- end -}}

{{/* Env of collector, gateway and the init Job: where InfluxDB is and the token from its
Secret. Called with (dict "root" $ "role" R): R "writer" (collector) or "reader" (gateway)
takes influx.auth.<R> when it names a Secret, else the token of influx.auth; "" (the init Job)
always that one. */}}
{{- define "gputel.influxEnv" -}}
{{- $root := .root -}}
{{- $scoped := (and .role (get $root.Values.influx.auth .role)) | default dict -}}
- name: GPUTEL_INFLUX_URL
  value: {{ include "gputel.influxUrl" $root | quote }}
- name: GPUTEL_INFLUX_ORG
  value: {{ $root.Values.influx.org | quote }}
- name: GPUTEL_INFLUX_BUCKET
  value: {{ $root.Values.influx.bucket | quote }}
- name: GPUTEL_INFLUX_TOKEN
  valueFrom:
    secretKeyRef:
      {{- if $scoped.existingSecret }}
      name: {{ $scoped.existingSecret }}
      key: {{ $scoped.existingSecretKey | default "token" }}
      {{- else }}
      name: {{ include "gputel.influxTokenSecretName" $root }}
      key: {{ include "gputel.influxTokenSecretKey" $root }}
      {{- end }}
{{- end -}}

{{/* Pod-level settings shared by every pod of the chart. */}}
{{- define "gputel.podCommon" -}}
serviceAccountName: {{ include "gputel.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* HTTP liveness (/healthz) and readiness (/readyz) probes: (dict "port" name "scheme" s). */}}
{{- define "gputel.httpProbes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
    scheme: {{ .scheme }}
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
    scheme: {{ .scheme }}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 3
{{- end -}}

{{/* Checks across values that the JSON schema cannot express. */}}
{{- define "gputel.validate" -}}
{{- if .Values.influxdb2.enabled -}}
{{- $admin := .Values.influxdb2.adminUser | default dict -}}
{{- if ne (toString $admin.organization) (toString .Values.influx.org) -}}
{{- fail "influx.org must equal influxdb2.adminUser.organization when influxdb2.enabled=true" -}}
{{- end -}}
{{- if ne (toString $admin.bucket) (toString .Values.influx.bucket) -}}
{{- fail "influx.bucket must equal influxdb2.adminUser.bucket when influxdb2.enabled=true" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Bytes of a Kubernetes quantity as the schema allows it (a plain number, or with K M G T or
Ki Mi Gi Ti), printed as an integer. */}}
{{- define "gputel.quantityBytes" -}}
{{- $q := toString . -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $units := dict "" 1 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- $unit := trimPrefix $number $q -}}
{{- if or (not $number) (not (hasKey $units $unit)) -}}
{{- fail (printf "cannot read the quantity %q (a number, optionally with K, M, G, T, Ki, Mi, Gi or Ti)" $q) -}}
{{- end -}}
{{- printf "%.0f" (mulf (float64 $number) (index $units $unit)) -}}
{{- end -}}

{{/*
The broker's volume must hold what walbroker needs (walbroker/config.py, walbroker/disk.py):
its LMDB map, max(2 x retention + 64 MiB, 256 MiB), which `walbroker serve` refuses to start
without (the map must fit the file system), plus the free space it keeps (--min-free-bytes,
256 MiB; appends are refused below it), plus 10 % of the volume for the file system's own
metadata and root-reserved blocks, which the broker (UID 10001) cannot use. Reads
--retention-bytes= and --min-free-bytes= from broker.extraArgs too (the last one wins).
*/}}
{{- define "gputel.checkBrokerVolume" -}}
{{- $v := .Values.broker -}}
{{- $MiB := 1048576.0 -}}
{{- $retention := float64 $v.retention.bytes -}}
{{- $minFree := mulf 256 $MiB -}}
{{- range $v.extraArgs -}}
{{- if hasPrefix "--retention-bytes=" . }}{{ $retention = float64 (trimPrefix "--retention-bytes=" .) }}{{ end -}}
{{- if hasPrefix "--min-free-bytes=" . }}{{ $minFree = float64 (trimPrefix "--min-free-bytes=" .) }}{{ end -}}
{{- end -}}
{{- $map := maxf (addf (mulf 2 $retention) (mulf 64 $MiB)) (mulf 256 $MiB) -}}
{{- $size := float64 (include "gputel.quantityBytes" $v.persistence.size) -}}
{{- $need := divf (addf $map $minFree) 0.9 -}}
{{- if lt $size $need -}}
{{- $maxRetention := divf (subf (mulf $size 0.9) (addf $minFree (mulf 64 $MiB))) 2 -}}
{{- fail (printf "broker.persistence.size %s (%.0f bytes) is too small for broker.retention.bytes %.0f: the broker's LMDB map, 2 x retention.bytes + 64 MiB = %.0f bytes, must fit the volume (else walbroker refuses to start), plus the %.0f bytes it keeps free (--min-free-bytes) and 10%% for the file system's overhead: the volume needs at least %.0f bytes (%.1f GiB). Lower broker.retention.bytes to at most %.0f, or install with a larger broker.persistence.size (a StatefulSet's volumeClaimTemplates cannot change on upgrade)." (toString $v.persistence.size) $size $retention $map $minFree $need (divf $need (mulf 1024 $MiB)) (maxf $maxRetention 0)) -}}
{{- end -}}
{{- end -}}

{{/* The pipeline's topic: the first of broker.topics. The streamers publish to it, the collectors
consume it and dead-letter to <topic>.dlq (collector/config.py), which must be listed too. */}}
{{- define "gputel.topic" -}}
{{- $topics := .Values.broker.topics -}}
{{- if not $topics -}}
{{- fail "broker.topics is empty: its first entry is the pipeline's topic (streamers publish to it, collectors consume it)" -}}
{{- end -}}
{{- $name := (first $topics).name -}}
{{- $names := list -}}
{{- range $topics }}{{ $names = append $names .name }}{{ end -}}
{{- if not (has (printf "%s.dlq" $name) $names) -}}
{{- fail (printf "broker.topics must also list %s.dlq, the collectors' dead-letter topic for %s (the first entry, the pipeline's topic)" $name $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}
