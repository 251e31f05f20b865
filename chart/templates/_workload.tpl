{{/*
A hardened Deployment for one stateless component.
(dict "root" $ "component" "collector" "values" .Values.collector "args" (list ...) "env" "<yaml>"
      "portName" "http" "tls" "ca"|"server" "scheme" "HTTP"|"HTTPS")
Every container gets the chart's securityContext, a writable emptyDir at /tmp and its own
credentials (gputel.trustVolumes); the root filesystem stays read-only.
*/}}
{{- define "gputel.deployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $ctx := dict "root" $root "component" .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "gputel.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "gputel.componentLabels" $ctx | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "gputel.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "gputel.componentLabels" $ctx | nindent 8 }}
      {{- /* A checksum of each ConfigMap the container reads only at start (the Kafka client's
           properties), so a change to it rolls the pods. */}}
      {{- $annotations := deepCopy ($root.Values.podAnnotations | default dict) }}
      {{- if and (include "gputel.kafkaClient" $ctx) (not $root.Values.kafka.configSecret.name) }}
      {{- $_ := set $annotations "checksum/kafka-client" (include "gputel.kafkaProperties" $root | sha256sum) }}
      {{- end }}
      {{- with $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "gputel.podCommon" $root | nindent 6 }}
      terminationGracePeriodSeconds: 30
      containers:
        - name: {{ .component }}
          image: {{ include "gputel.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml (concat .args $v.extraArgs) | nindent 12 }}
          env:
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            - name: GPUTEL_COMPONENT
              value: {{ .component | quote }}
          ports:
            - name: {{ .portName }}
              containerPort: {{ $v.port }}
              protocol: TCP
          {{- include "gputel.httpProbes" (dict "port" .portName "scheme" (.scheme | default "HTTP")) | nindent 10 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- include "gputel.trustMounts" (dict "root" $root "component" .component) | nindent 12 }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        {{- include "gputel.trustVolumes" (dict "root" $root "component" .component "tls" (.tls | default "ca")) | nindent 8 }}
{{- end -}}

{{/* A ClusterIP Service for one component's single HTTP port. */}}
{{- define "gputel.service" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "gputel.componentName" $ctx }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "gputel.componentLabels" $ctx | nindent 4 }}
spec:
  type: {{ .type | default "ClusterIP" }}
  selector:
    {{- include "gputel.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: {{ .portName }}
      port: {{ .port }}
      targetPort: {{ .portName }}
      protocol: TCP
{{- end -}}
