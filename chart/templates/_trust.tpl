{{/*
Trust wiring (docs/security.md): token Secrets, the TLS Secret, and what each pod mounts.
Each component mounts only its own credential: the broker the token file (hashes only), the
streamer and the collector their token, the gateway its token file; every client the CA only.
*/}}

{{/* Name of a generated token Secret: (dict "root" $ "component" "streamer"). */}}
{{- define "gputel.tokenSecretName" -}}
{{- printf "%s-%s-token" (include "gputel.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret and key holding a component's credential: (dict "root" $ "component" c). */}}
{{- define "gputel.credentialRef" -}}
{{- $auth := .root.Values.auth -}}
{{- $files := dict "broker" "broker-tokens" "gateway" "gateway-tokens" -}}
{{- if $auth.existingSecret -}}
name: {{ $auth.existingSecret }}
key: {{ index $files .component | default (printf "%s.token" (trimSuffix "-client" .component)) }}
{{- else if eq .component "gateway-client" -}}
name: {{ include "gputel.tokenSecretName" (dict "root" .root "component" "gateway") }}
key: token
{{- else if hasKey $files .component -}}
name: {{ printf "%s-%s-auth" (include "gputel.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
key: tokens
{{- else -}}
name: {{ include "gputel.tokenSecretName" . }}
key: token
{{- end -}}
{{- end -}}

{{- define "gputel.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "gputel.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/* DNS names the server certificate carries: broker and gateway Services, and broker pods. */}}
{{- define "gputel.serverNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list -}}
{{- range $c := list "broker" "gateway" -}}
{{- $svc := include "gputel.componentName" (dict "root" $ "component" $c) -}}
{{- $names = concat $names (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns)) -}}
{{- end -}}
{{- $broker := include "gputel.componentName" (dict "root" $ "component" "broker") -}}
{{- $names = append $names (printf "*.%s.%s.svc.cluster.local" $broker $ns) -}}
{{- toYaml $names -}}
{{- end -}}

{{/* Volumes of a component's credentials: (dict "root" $ "component" c "tls" "ca"|"server").
With transport=kafka the broker clients mount the Kafka client's files instead of a walbroker
token and CA (_kafka.tpl); the gateway keeps its own token file and certificate. */}}
{{- define "gputel.trustVolumes" -}}
{{- $root := .root -}}
{{- $walbroker := not (include "gputel.kafka" $root) -}}
{{- if include "gputel.kafkaClient" . }}
{{- include "gputel.kafkaVolumes" $root }}
{{- end }}
{{- if and $root.Values.auth.enabled (or $walbroker (eq .component "gateway")) }}
- name: credential
  secret:
    {{- $ref := fromYaml (include "gputel.credentialRef" .) }}
    secretName: {{ $ref.name }}
    defaultMode: 0400
    items:
      - key: {{ $ref.key }}
        path: {{ ternary "tokens" "token" (or (eq .component "broker") (eq .component "gateway")) }}
{{- end }}
{{- if and $root.Values.auth.enabled (eq .component "gateway") $walbroker }}
- name: broker-credential
  secret:
    {{- $ref := fromYaml (include "gputel.credentialRef" (dict "root" $root "component" "gateway-client")) }}
    secretName: {{ $ref.name }}
    defaultMode: 0400
    items:
      - key: {{ $ref.key }}
        path: token
{{- end }}
{{- if and $root.Values.tls.enabled (or $walbroker (eq .tls "server")) }}
- name: tls
  secret:
    secretName: {{ include "gputel.tlsSecretName" $root }}
    defaultMode: 0400
    items:
      {{- if eq .tls "server" }}
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      {{- end }}
      {{- if or (ne .tls "server") (eq .component "gateway") }}
      - {key: ca.crt, path: ca.crt}
      {{- end }}
{{- end }}
{{- end -}}

{{/* Mounts of those volumes (no subPath: kubelet updates renewed files in place):
(dict "root" $ "component" c). */}}
{{- define "gputel.trustMounts" -}}
{{- $walbroker := not (include "gputel.kafka" .root) -}}
{{- if include "gputel.kafkaClient" . }}
{{- include "gputel.kafkaMounts" .root }}
{{- end }}
{{- if and .root.Values.auth.enabled (or $walbroker (eq .component "gateway")) }}
- name: credential
  mountPath: /var/run/gputel/auth
  readOnly: true
{{- if and (eq .component "gateway") $walbroker }}
- name: broker-credential
  mountPath: /var/run/gputel/broker-auth
  readOnly: true
{{- end }}
{{- end }}
{{- if and .root.Values.tls.enabled (or $walbroker (eq .component "gateway")) }}
- name: tls
  mountPath: /var/run/gputel/tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Environment of a broker client (streamer, collector, admin Job; the gateway's token is
under broker-auth/, its own auth/ holding its token file). */}}
{{- define "gputel.brokerClientEnv" -}}
{{- if not (include "gputel.kafka" .root) }}
{{- if .root.Values.auth.enabled }}
- name: GPUTEL_BROKER_TOKEN_FILE
  value: /var/run/gputel/{{ ternary "broker-auth" "auth" (eq .component "gateway") }}/token
{{- end }}
{{- if .root.Values.tls.enabled }}
- name: GPUTEL_BROKER_TLS_CA
  value: /var/run/gputel/tls/ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{/* Flags of a server (broker or gateway) for its token file and TLS; --insecure without both. */}}
{{- define "gputel.serverTrustArgs" -}}
{{- $args := list -}}
{{- if .Values.auth.enabled -}}
{{- $args = append $args "--auth-tokens=/var/run/gputel/auth/tokens" -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- $args = concat $args (list "--tls-cert=/var/run/gputel/tls/tls.crt" "--tls-key=/var/run/gputel/tls/tls.key") -}}
{{- end -}}
{{- if not (and .Values.auth.enabled .Values.tls.enabled) -}}
{{- $args = append $args "--insecure" -}}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}
